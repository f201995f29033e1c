"""The asyncio database (`kit.aio`) against the same contract as the sync pool, with real faults.

Each test drives its own event loop (`asyncio.run`), as a script or a worker would, on a database
of its own configured from the suite's settings (behind PgBouncer in the through-PgBouncer run).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from helpers import observes_server_sessions, scalar, wait_until
from peewee import IntegrityError

import kit
from kit import DatabaseUnavailable, SessionLost, StatementTimeout, TenantRequired
from kit.aio import AsyncDatabase
from kit.config import load_settings
from kit.db import database
from kit.errors import SessionStateRefused
from kit.models import DocumentChunk, DocumentSource, Member, Organization, OrgCredit
from kit.models.auth import User

KILLS = 200


@pytest.fixture
def adb(test_db_url):
    """An asyncio database on the test database as the run-time role, standing in for `kit.db.database`."""
    db = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=1, pool_max=4, pool_timeout_ms=2000))
    yield db
    if db._pool is not None and db._loop is not None and not db._loop.is_closed():
        db._pool.terminate()


GONE = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s"  # a terminated backend has exited


def run(coro):
    """Run one coroutine on a new event loop, as `asyncio.run` does for a script."""
    return asyncio.run(coro)


async def closing(db: AsyncDatabase, coro):
    """Await `coro`, then close `db`'s pool on this loop."""
    try:
        return await coro
    finally:
        await db.close_pool()


def new_org(name: str = "Async") -> Organization:
    return Organization.create(name=name, slug=f"aio-{secrets.token_hex(4)}")


def pid_sql() -> str:
    return "SELECT pg_backend_pid()"


def test_models_run_on_it_unbound_and_the_sync_database_is_untouched(adb):
    org = new_org()
    OrgCredit.grant(org, 10)

    async def main():
        got = await adb.get(Organization.select().where(Organization.id == org.id))
        balance = await adb.run(OrgCredit.consume, org, 3)
        with kit.tenant(org):
            return got, balance, *await renames()

    async def renames():
        async with adb.atomic():
            assert adb.in_transaction()
            assert Organization._meta.database is database  # outside run(), still the sync one
            renamed = await adb.run(lambda: Organization.update(name="Renamed").where(
                Organization.id == org.id).execute())
        with pytest.raises(RuntimeError):
            async with adb.atomic():
                await adb.run(lambda: Organization.update(name="Rolled back").where(
                    Organization.id == org.id).execute())
                raise RuntimeError("roll it back")
        inside = await adb.run(lambda: Organization._meta.database)
        return renamed, inside, adb.pool_stats()

    got, balance, renamed, inside, stats = run(closing(adb, main()))
    assert got.id == org.id and balance == 7 and renamed == 1
    assert inside is adb
    assert Organization.get_by_id(org.id).name == "Renamed"  # committed, and the rolled-back one not
    assert OrgCredit.balance_of(org) == 7
    assert stats["in_use"] == 0  # nothing held once the statements and the transaction ended


def test_numpy_vectors_go_in_and_come_out_in_binary_bit_for_bit(adb):
    org = new_org()
    vectors = np.random.default_rng(7).standard_normal((3, 1536)).astype(np.float32)

    async def main():
        with kit.tenant(org):
            async with adb.atomic():
                source = await adb.run(DocumentSource.create, organization=org, title="aio", kind="text")
                for i, vector in enumerate(vectors):
                    await adb.run(DocumentChunk.create, source=source, organization=org, position=i,
                                  content=f"chunk {i}", embedding=vector)
            rows = await adb.list(DocumentChunk.select().where(DocumentChunk.source == source)
                                  .order_by(DocumentChunk.position))
            found = await adb.run(DocumentChunk.search, vectors[1], org, k=1)
            raw = await adb.run(lambda: adb.execute_sql(
                "SELECT embedding FROM document_chunks WHERE source_id = %s ORDER BY position", (source.id,)
            ).fetchall())
        return rows, found, raw

    rows, found, raw = run(closing(adb, main()))
    for row, vector in zip(rows, vectors, strict=True):
        assert isinstance(row.embedding, np.ndarray) and np.array_equal(row.embedding, vector)
    assert found[0].position == 1 and found[0].distance < 1e-6
    assert isinstance(raw[0][0], np.ndarray) and np.array_equal(raw[0][0], vectors[0])  # the binary codec


def test_settings_come_from_the_environment_and_stats_are_honest_before_first_use(test_db_url, monkeypatch):
    monkeypatch.setenv("DATABASE_POOL_MIN", "2")
    monkeypatch.setenv("DATABASE_POOL_MAX", "3")
    db = AsyncDatabase(test_db_url)
    assert db.pool_stats()["min"] == 2 and db.pool_stats()["max"] == 3 and db.pool_stats()["in_use"] == 0

    async def main():
        async def hold():
            async with db.atomic():
                await db.run(lambda: db.execute_sql("SELECT pg_sleep(0.3)"))

        await asyncio.gather(*(hold() for _ in range(3)))
        return db.pool_stats()

    stats = run(closing(db, main()))
    assert stats["idle"] <= 3


def test_a_statement_to_a_session_already_ended_is_resent_and_never_fails(adb, monitor):
    table = f"aio_kills_{secrets.token_hex(3)}"
    with monitor.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (trial int NOT NULL)")
        cur.execute(f"GRANT SELECT, INSERT ON {table} TO kit_app")
    errors = []

    async def main():
        for trial in range(KILLS):
            victim = (await adb.run(lambda: adb.execute_sql(pid_sql()).fetchone()))[0]
            assert scalar(monitor, "SELECT pg_terminate_backend(%s)", (victim,))
            try:
                if trial % 2:
                    await adb.run(lambda t=trial: adb.execute_sql(f"INSERT INTO {table} VALUES (%s)", (t,)))
                else:
                    assert (await adb.run(lambda: adb.execute_sql("SELECT 1").fetchone()))[0] == 1
            except Exception as exc:  # collected: the count of failures is what the assertion shows
                errors.append(f"trial {trial}: {type(exc).__name__}: {exc}")

    try:
        run(closing(adb, main()))
        assert errors == []
        assert scalar(monitor, f"SELECT count(*) FROM {table}") == KILLS // 2
        assert scalar(monitor, f"SELECT count(DISTINCT trial) FROM {table}") == KILLS // 2  # none twice
    finally:
        with monitor.cursor() as cur:
            cur.execute(f"DROP TABLE {table}")


def test_a_statement_the_server_was_running_is_never_resent(adb, monitor):
    async def main():
        victim = (await adb.run(lambda: adb.execute_sql(pid_sql()).fetchone()))[0]
        threading.Timer(0.3, scalar, (monitor, "SELECT pg_terminate_backend(%s)", (victim,))).start()
        started = time.monotonic()
        with pytest.raises(SessionLost) as caught:
            await adb.run(lambda: adb.execute_sql("SELECT pg_sleep(3), pg_backend_pid()"))
        return caught.value, time.monotonic() - started

    error, seconds = run(closing(adb, main()))
    assert error.outcome_unknown and isinstance(error, DatabaseUnavailable)
    assert seconds < 2.5 and adb.pool_stats()["resent"] == 0


@observes_server_sessions
def test_session_state_lost_with_its_connection_is_session_lost_naming_it(adb, monitor):
    async def main():
        def lock_and_pid():
            adb.execute_sql("SELECT pg_advisory_lock(4747)")
            return adb.execute_sql(pid_sql()).fetchone()[0]

        victim = await adb.run(lock_and_pid)
        scalar(monitor, "SELECT pg_terminate_backend(%s)", (victim,))
        assert wait_until(lambda: scalar(monitor, GONE, (victim,)))
        with pytest.raises(SessionLost) as caught:
            await adb.run(lambda: adb.execute_sql("SELECT 1"))
        after = (await adb.run(lambda: adb.execute_sql(pid_sql()).fetchone()))[0]
        return caught.value, victim, after

    error, victim, after = run(closing(adb, main()))
    assert "advisory locks" in str(error) and "nothing was re-sent" in str(error)
    assert after != victim


def test_a_kill_inside_a_transaction_is_session_lost_and_retry_transaction_runs_it_again_once(adb, monitor):
    org = new_org()
    OrgCredit.grant(org, 100)
    runs = []

    def spend():
        runs.append(1)
        balance = OrgCredit.consume(org, 5)
        if len(runs) == 1:  # the first run loses its connection before COMMIT, seen at its next statement
            pid = adb.execute_sql(pid_sql()).fetchone()[0]
            scalar(monitor, "SELECT pg_terminate_backend(%s)", (pid,))
            assert wait_until(lambda: scalar(monitor, GONE, (pid,)))
            # (were COMMIT the first to meet the loss, through PgBouncer it could not tell a crash before
            # it from one during it: outcome unknown, rightly not run again; tests/test_failures.py alike)
            OrgCredit.balance_of(org)
        return balance

    async def main():
        with pytest.raises(SessionLost) as caught:
            async with adb.atomic():
                await adb.run(OrgCredit.consume, org, 1)
                pid = (await adb.run(lambda: adb.execute_sql(pid_sql()).fetchone()))[0]
                scalar(monitor, "SELECT pg_terminate_backend(%s)", (pid,))
                assert wait_until(lambda: scalar(monitor, GONE, (pid,)))
                await adb.run(OrgCredit.consume, org, 1)
        assert not caught.value.outcome_unknown
        return await adb.retry_transaction(spend)

    assert run(closing(adb, main())) == 95
    assert len(runs) == 2 and OrgCredit.balance_of(org) == 95  # the lost run took nothing; the second once


def test_a_statement_past_its_time_limit_is_statement_timeout(test_db_url):
    db = AsyncDatabase(test_db_url, replace(load_settings(), statement_timeout_ms=300, pool_min=0))

    async def main():
        started = time.monotonic()
        with pytest.raises(StatementTimeout) as caught:
            await db.run(lambda: db.execute_sql("SELECT pg_sleep(5)"))
        assert (await db.run(lambda: db.execute_sql("SELECT 1").fetchone()))[0] == 1  # the connection goes on
        return caught.value, time.monotonic() - started

    error, seconds = run(closing(db, main()))
    assert error.limit_ms == 300 and "DATABASE_STATEMENT_TIMEOUT" in str(error) and seconds < 2.5


def test_tenant_context_confines_every_statement_and_a_write_without_one_is_refused(adb):
    mine, other = new_org("Mine"), new_org("Other")
    user = User.create(name="Aio", email=f"aio-{secrets.token_hex(4)}@example.com")
    with kit.tenant(other):
        Member.create(organization=other, user=user, role="member")

    async def main():
        with kit.tenant(mine):
            async with adb.atomic():
                await adb.run(Member.create, organization=mine, user=user, role="owner")
                seen = await adb.list(Member.select())
            alone = await adb.count(Member.select())
        with kit.tenant(other):
            theirs = await adb.count(Member.select())
        nobody = await adb.count(Member.select())
        with pytest.raises(TenantRequired):
            await adb.run(Member.create, organization=mine, user=user, role="admin")
        return seen, alone, theirs, nobody

    seen, alone, theirs, nobody = run(closing(adb, main()))
    assert [m.organization_id for m in seen] == [mine.id] and alone == 1 and theirs == 1 and nobody == 0


def test_driver_errors_are_peewees_classes_and_the_connection_goes_on(adb):
    org = new_org()

    async def main():
        with pytest.raises(IntegrityError):
            await adb.run(Organization.create, name="Again", slug=org.slug)
        return await adb.count(Organization.select().where(Organization.slug == org.slug))

    assert run(closing(adb, main())) == 1


def test_concurrent_tasks_share_the_pool_and_give_every_connection_back(adb):
    org = new_org()
    OrgCredit.grant(org, 1000)

    async def main():
        await asyncio.gather(*(adb.run(OrgCredit.consume, org, 1) for _ in range(100)))
        return adb.pool_stats()

    stats = run(closing(adb, main()))
    assert OrgCredit.balance_of(org) == 900 and stats["in_use"] == 0 and stats["max"] == 4


def test_behind_pgbouncer_session_state_is_refused_before_it_is_sent(test_db_url):
    db = AsyncDatabase(test_db_url, replace(load_settings(), pooler="pgbouncer", pool_min=0))

    async def main():
        with pytest.raises(SessionStateRefused):
            await db.run(lambda: db.execute_sql("SET work_mem = '64MB'"))

    run(closing(db, main()))


def test_a_server_that_cannot_be_reached_is_one_sentence(monkeypatch):
    db = AsyncDatabase("postgresql://kit_app@127.0.0.1:1/nowhere", replace(load_settings(), pool_min=0))

    async def main():
        with pytest.raises(DatabaseUnavailable) as caught:
            await db.run(lambda: db.execute_sql("SELECT 1"))
        return caught.value

    error = run(main())
    assert "could not connect to the database at postgresql://kit_app@127.0.0.1:1/nowhere" in str(error)


def test_a_full_pool_waits_database_pool_timeout_then_is_pool_exhausted_in_the_settings_words(test_db_url):
    from kit import PoolExhausted

    db = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=1, pool_timeout_ms=300))

    async def main():
        async def hold():
            async with db.atomic():
                await db.run(lambda: db.execute_sql("SELECT pg_sleep(1)"))

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(PoolExhausted) as caught:
            await db.run(lambda: db.execute_sql("SELECT 1"))
        waited = time.monotonic() - started
        await holder
        return caught.value, waited, db.pool_stats()

    error, waited, stats = run(closing(db, main()))
    assert 0.25 <= waited < 1.0 and stats["timeouts"] == 1
    assert "DATABASE_POOL_MAX=1" in str(error) and "DATABASE_POOL_TIMEOUT=300 ms" in str(error)


def test_idle_connections_close_after_database_pool_idle_timeout(test_db_url, monitor):
    db = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=2, pool_idle_timeout_ms=300))

    async def main():
        pids = await asyncio.gather(*(db.run(lambda: db.execute_sql(
            "SELECT pg_backend_pid() FROM pg_sleep(0.1)").fetchone()[0]) for _ in range(2)))
        opened = db.pool_stats()["idle"]
        await asyncio.sleep(1.0)
        return opened, db.pool_stats(), scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                               (list(pids),))

    opened, stats, left = run(closing(db, main()))
    assert opened == 2 and stats["idle"] == stats["in_use"] == 0  # closed by the pool once idle past the limit
    if not load_settings().pooler:  # behind PgBouncer the server sessions are PgBouncer's to keep
        assert left == 0


def test_the_bulk_paths_run_on_a_worker_thread_in_the_tasks_tenant_and_give_the_connection_back(adb):
    from kit.db import database as sync

    org = new_org()
    vectors = np.random.default_rng(3).standard_normal((50, 1536)).astype(np.float32)

    async def main():
        with kit.tenant(org):
            source = await adb.run(DocumentSource.create, organization=org, title="bulk", kind="text")
            copied = await adb.copy_rows(DocumentChunk, [
                {"source": source.id, "organization": org.id, "position": i, "content": f"c{i}", "embedding": v}
                for i, v in enumerate(vectors)])
            keys, matrix = await adb.fetch_matrix(DocumentChunk.select(DocumentChunk.position, DocumentChunk.embedding)
                                                  .where(DocumentChunk.source == source)
                                                  .order_by(DocumentChunk.position))
        return copied, keys, matrix

    before = sync.pool_stats()["in_use"]
    copied, keys, matrix = run(closing(adb, main()))
    assert copied == 50 and list(keys) == list(range(50)) and np.array_equal(matrix, vectors)
    assert sync.pool_stats()["in_use"] == before  # the worker thread gave its connection back
    from kit.vector import fetch_matrix

    with kit.tenant(org):  # the sync path too: the tenant reaches the COPY (row-level security shows the rows)
        assert len(fetch_matrix(DocumentChunk.select(DocumentChunk.position, DocumentChunk.embedding)
                                .where(DocumentChunk.organization == org))[0]) == 50
