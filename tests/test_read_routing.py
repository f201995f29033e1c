"""Reads on streaming replicas, proven on a real one (`kit db replica`): routing, read-your-writes, lag, failover."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from urllib.parse import urlsplit

import peewee
import pytest
from helpers import as_admin, kit_replica, owner_query, query, wait_until, with_dbname

from kit.config import ConfigError, load_settings
from kit.db import Database
from kit.routing import CHECK_EVERY

needs_embedded = pytest.mark.skipif(bool(load_settings().database_url),
                                    reason="`kit db replica` makes a replica of the embedded server only")


class Note(peewee.Model):
    body = peewee.TextField()

    class Meta:
        table_name = "routed_notes"


@pytest.fixture(scope="module")
def replica_url(test_db_url):
    started = kit_replica("start")
    assert started.returncode == 0, started.stderr
    url = with_dbname(started.stdout.strip().splitlines()[-1], urlsplit(test_db_url).path.lstrip("/"))
    owner_query(test_db_url, "CREATE TABLE IF NOT EXISTS routed_notes (id serial PRIMARY KEY, body text NOT NULL); "
                             "GRANT SELECT, INSERT, UPDATE, DELETE ON routed_notes TO kit_app; "
                             "GRANT USAGE ON SEQUENCE routed_notes_id_seq TO kit_app")
    assert wait_until(lambda: _has_table(url), timeout=20)
    yield url
    kit_replica("stop")
    owner_query(test_db_url, "DROP TABLE IF EXISTS routed_notes")


def _has_table(url: str) -> bool:
    try:
        return query(url, "SELECT to_regclass('routed_notes') IS NOT NULL")[0][0]
    except Exception:
        return False


@pytest.fixture
def routed(test_db_url, replica_url):
    """A kit Database on the test database, reading from the replica; routed_notes empty and replayed."""
    query(as_admin(replica_url), "SELECT pg_wal_replay_resume()")
    owner_query(test_db_url, "TRUNCATE routed_notes RESTART IDENTITY")
    assert wait_until(lambda: count_on(replica_url) == 0, timeout=20)
    db = Database()
    db.configure(test_db_url, replicas=[replica_url])
    try:
        with db.bind_ctx([Note]):
            yield db
    finally:
        query(as_admin(replica_url), "SELECT pg_wal_replay_resume()")
        db.close_all()


def count_on(url: str, body: str | None = None) -> int:
    if body is None:
        return query(url, "SELECT count(*) FROM routed_notes")[0][0]
    return query(url, "SELECT count(*) FROM routed_notes WHERE body = %s", (body,))[0][0]


def replica_stats(db: Database) -> dict:
    return db.pool_stats()["servers"][1]


def in_thread(fn):
    """Run `fn` in a new thread, outside any request scope, and return what it returned."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(30)
    return out[0]


def in_request(fn):
    """Run `fn` in a new thread inside a request scope of its own (a request that wrote nothing)."""
    from kit.db.scope import request_scope

    def scoped():
        with request_scope():
            return fn()

    return in_thread(scoped)


def paused(replica_url: str) -> None:
    query(as_admin(replica_url), "SELECT pg_wal_replay_pause()")
    assert wait_until(lambda: query(replica_url, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused")


@needs_embedded
def test_reads_go_to_the_replica_writes_transactions_and_raw_sql_to_the_primary(routed, replica_url, test_db_url):
    db = routed
    paused(replica_url)
    query(test_db_url, "INSERT INTO routed_notes (body) VALUES ('from elsewhere')")  # the replica lacks it
    assert Note.select().count() == 0  # a read: on the replica
    assert Note.get_or_none(Note.body == "from elsewhere") is None
    reads = replica_stats(db)["reads"]
    assert reads >= 2 and replica_stats(db)["state"] == "up"
    with db.atomic():
        assert Note.select().count() == 1  # in a transaction: the primary
    assert len(list(Note.select().for_update())) == 1  # FOR UPDATE: the primary
    assert db.execute_sql("SELECT count(*) FROM routed_notes").fetchone()[0] == 1  # raw SQL: the primary
    with db.on_primary():
        assert Note.select().count() == 1
    with db.on_replica():  # raw SQL too, forced; a write is refused as the standby refuses it, not re-sent
        assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is True
        with pytest.raises(peewee.DatabaseError, match="read-only transaction"):
            db.execute_sql("INSERT INTO routed_notes (body) VALUES ('forced')")
    assert db.execute_sql("SELECT count(*) FROM routed_notes WHERE body = 'forced'").fetchone()[0] == 0
    assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
    # raw SQL that only reads is routed as a SELECT: here the raw SQL above may have written, so the
    # primary; in a context that wrote nothing, the replica
    assert db.read_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
    assert in_request(lambda: db.read_sql("SELECT pg_is_in_recovery()").fetchone()[0]) is True
    # outside a request scope the process's writes are every thread's: conservative, never stale
    assert in_thread(lambda: db.read_sql("SELECT pg_is_in_recovery()").fetchone()[0]) is False
    db.execute_sql("SET application_name = 'kit-routing-test'")  # session state on the primary connection
    assert Note.select().count() == 1  # ... keeps this thread's reads there
    db.close()
    assert in_request(lambda: Note.select().count()) == 0
    assert replica_stats(db)["reads"] > reads


@needs_embedded
def test_a_context_reads_its_own_writes_while_replay_is_paused_and_from_the_replica_once_replayed(
        routed, replica_url):
    db = routed
    paused(replica_url)
    Note.create(body="mine")
    assert Note.select().where(Note.body == "mine").count() == 1  # never missing to the one who wrote it
    assert count_on(replica_url, "mine") == 0  # ... though the replica does not have it
    assert in_request(lambda: Note.select().where(Note.body == "mine").count()) == 0  # other requests: the replica
    assert in_thread(lambda: Note.select().where(Note.body == "mine").count()) == 1  # outside a scope: never stale
    position = db.write_position()
    assert position and "/" in position

    def elsewhere() -> int:  # another process would carry the position in a session or a message
        with db.reads_after(position):
            return Note.select().where(Note.body == "mine").count()

    assert in_thread(elsewhere) == 1
    query(as_admin(replica_url), "SELECT pg_wal_replay_resume()")
    assert wait_until(lambda: count_on(replica_url, "mine") == 1, timeout=20)
    before = replica_stats(db)["reads"]
    assert Note.select().where(Note.body == "mine").count() == 1
    assert replica_stats(db)["reads"] == before + 1  # replayed past the write: the replica again


@needs_embedded
def test_concurrent_writers_always_read_their_own_writes(routed):
    db = routed
    missing: list[str] = []

    def writer(n: int) -> None:
        for i in range(40):
            body = f"w{n}-{i}"
            if i % 2:
                with db.atomic():
                    Note.create(body=body)
            else:
                Note.create(body=body)
            if Note.select().where(Note.body == body).count() != 1:
                missing.append(body)
        db.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert missing == []
    with db.on_primary():
        assert Note.select().count() == 240
    assert Note.select().count() <= 240  # this context wrote nothing: it may read a replica still replaying
    assert replica_stats(db)["reads"] > 0  # some reads were served by the replica (after replay caught up)


@needs_embedded
def test_writes_in_child_tasks_and_worker_threads_are_read_by_the_request_that_started_them(routed, replica_url):
    import asyncio
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from kit.db.scope import request_scope

    db = routed
    paused(replica_url)

    def write(body: str) -> None:
        Note.create(body=body)
        db.close()

    def mine(body: str) -> int:
        return Note.select().where(Note.body == body).count()

    async def request(n: int) -> list[int]:
        with request_scope():
            assert mine("nothing yet") == 0  # a read before any write: the replica may serve it
            await asyncio.gather(asyncio.to_thread(write, f"thread-{n}"))  # a worker thread (context copied)
            await asyncio.gather(asyncio.create_task(asyncio.to_thread(write, f"task-{n}")))  # a child task's
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(1) as pool:  # run_in_executor carries no context unless it is given one
                await loop.run_in_executor(pool, contextvars.copy_context().run, write, f"executor-{n}")
            return [mine(f"thread-{n}"), mine(f"task-{n}"), mine(f"executor-{n}")]

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(request(n) for n in range(4)))

    assert asyncio.run(main()) == [[1, 1, 1]] * 4  # every request read what its children wrote
    assert count_on(replica_url, "thread-0") == 0  # ... which the paused replica does not have
    assert in_request(lambda: mine("thread-0")) == 0  # another request, which wrote nothing: the replica


def test_a_replica_promoted_since_it_was_last_asked_is_never_read_as_the_primarys(test_db_url, caplog):
    import logging
    import time

    from kit import KitError
    from kit.routing import PROMOTED, UP

    db = Database()
    db.configure(test_db_url, replicas=[test_db_url])  # a "replica" that is not in recovery: promoted
    try:
        replica = db._router.replicas[0]
        replica.state, replica.checked = UP, time.monotonic()  # as a probe a moment before the promotion left it
        with caplog.at_level(logging.WARNING, logger="kit.routing"):
            assert in_thread(lambda: db.read_sql("SELECT 42").fetchone()[0]) == 42  # served, by the primary
        assert replica.state == PROMOTED and replica.reads == 0
        replica.state = UP
        with db.on_replica():  # forced raw SQL, which may write: ran there, so it is an error, never sent again
            with pytest.raises(KitError, match="was promoted"):
                db.execute_sql("SELECT 43")
        assert db.pool_stats()["servers"][1]["last_error"].startswith("promoted")
        assert any("was promoted" in r.getMessage() for r in caplog.records)
    finally:
        db.close_all()


@needs_embedded
def test_the_asyncio_database_reads_replicas_and_its_requests_own_writes_across_child_tasks(
        routed, replica_url, test_db_url):
    import asyncio

    from kit.aio import AsyncDatabase
    from kit.db.scope import request_scope

    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=4), replicas=[replica_url])
    paused(replica_url)

    def mine(body: str):
        return Note.select().where(Note.body == body)

    async def request(n: int) -> list[int]:
        with request_scope():
            before = await adb.count(mine(f"a-{n}"))  # nothing written yet: the replica may serve it
            await asyncio.gather(adb.run(lambda: Note.insert(body=f"a-{n}").execute(adb)))  # in a child task
            return [before, await adb.count(mine(f"a-{n}"))]

    async def main():
        try:
            results = await asyncio.gather(*(request(n) for n in range(4)))
            elsewhere = await adb.count(mine("a-0"))  # this context wrote nothing: the paused replica
            in_transaction = await adb.run(lambda: adb.atomic()(lambda: mine("a-0").bind(adb).count())())
            return results, elsewhere, in_transaction, adb.pool_stats()
        finally:
            await adb.close_pool()

    results, elsewhere, in_transaction, stats = asyncio.run(main())
    assert results == [[0, 1]] * 4 and elsewhere == 0 and in_transaction == 1
    assert stats["servers"][1]["reads"] >= 1 and count_on(replica_url, "a-0") == 0  # the replica served reads


def test_the_asyncio_database_never_reads_a_promoted_replica_as_the_primarys(test_db_url):
    import asyncio
    import time

    from kit.aio import AsyncDatabase
    from kit.routing import PROMOTED, UP

    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0), replicas=[test_db_url])

    async def main():
        try:
            adb.pool_stats()  # configured: the router is made
            replica = adb._router.replicas[0]
            # as a probe a moment before the promotion found it: up, and replayed past any write this
            # context may carry from earlier tests (else the primary serves the read, as it should)
            replica.state, replica.checked, replica.replayed = UP, time.monotonic(), 2**62
            value = await adb.run(lambda: adb.read_sql("SELECT 42").fetchone()[0])
            return value, replica
        finally:
            await adb.close_pool()

    value, replica = asyncio.run(main())
    assert value == 42 and replica.state == PROMOTED and replica.reads == 0


@needs_embedded
def test_a_replica_lagging_past_the_limit_is_skipped_until_it_catches_up(replica_url, test_db_url, routed):
    db = Database()
    db.configure(test_db_url, settings=replace(load_settings(), replica_max_lag_ms=300), replicas=[replica_url])
    try:
        with db.bind_ctx([Note]):
            paused(replica_url)
            query(test_db_url, "INSERT INTO routed_notes (body) VALUES ('lagged')")
            assert wait_until(lambda: db.check_replicas()[0]["state"] == "lagging", timeout=10)
            assert Note.select().count() == 1  # from the primary: the replica is past the limit
            query(as_admin(replica_url), "SELECT pg_wal_replay_resume()")
            assert wait_until(lambda: db.check_replicas()[0]["state"] == "up", timeout=20)
            before = replica_stats(db)["reads"]
            assert Note.select().count() == 1 and replica_stats(db)["reads"] == before + 1
    finally:
        db.close_all()


@needs_embedded
def test_reads_fail_over_to_the_primary_when_the_replica_stops_and_come_back_when_it_returns(routed, replica_url):
    db = routed
    Note.create(body="kept")
    assert wait_until(lambda: count_on(replica_url) == 1, timeout=20)
    db.close()
    assert in_thread(lambda: Note.select().count()) == 1
    assert Note.select().count() == 1 and replica_stats(db)["reads"] >= 1  # this thread holds a replica connection
    stopped = kit_replica("stop")
    assert stopped.returncode == 0, stopped.stderr
    known_for = time.monotonic() - db._router.replicas[0].checked  # how old the replica's known state is now
    try:
        for _ in range(20):  # the held connection is dead, then the replica refuses: never an error
            assert Note.select().count() == 1
        stats = replica_stats(db)
        assert stats["state"] == "down" and stats["last_error"]
        # The first read tries the dead connection and falls back to the primary (counted), unless the stop
        # took longer than CHECK_EVERY: then a probe before that read found the replica down first.
        assert db.pool_stats().get("replica_fallbacks", 0) >= 1 or known_for >= CHECK_EVERY
    finally:
        started = kit_replica("start")
        assert started.returncode == 0, started.stderr
    assert db.check_replicas()[0]["state"] == "up"
    before = replica_stats(db)["reads"]
    assert Note.select().count() == 1
    assert replica_stats(db)["reads"] == before + 1


def test_an_unreachable_replica_means_the_primary_serves_every_read(test_db_url):
    db = Database()
    db.configure(test_db_url, replicas=["postgresql://kit:secret-pw@127.0.0.1:1/nowhere"])
    try:
        for _ in range(5):
            assert db.execute_sql("SELECT 1").fetchone()[0] == 1
            with db.on_replica():
                assert db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0] is False
        [primary, replica] = db.pool_stats()["servers"]
        assert primary["server"] == "primary"
        assert replica["state"] == "down" and "secret-pw" not in str(replica)
    finally:
        db.close_all()


def test_replica_settings_are_checked_in_one_sentence_without_secrets():
    with pytest.raises(ConfigError) as bad:
        load_settings({"DATABASE_REPLICA_URLS": "postgresql://a/b, mysql://u:secret@h/d"})
    assert "DATABASE_REPLICA_URLS (URL 2)" in str(bad.value) and "secret" not in str(bad.value)
    with pytest.raises(ConfigError, match="DATABASE_REPLICA_MAX_LAG"):
        load_settings({"DATABASE_REPLICA_MAX_LAG": "soon"})
    settings = load_settings({"DATABASE_REPLICA_URLS": "postgresql://a/b,,postgres://c/d "})
    assert settings.replica_urls == ("postgresql://a/b", "postgresql://c/d")


def test_a_read_position_is_checked_and_never_past_the_primarys(test_db_url):
    from kit import ArgumentError
    from kit.routing import lsn_int

    db = Database()
    db.configure(test_db_url)
    try:
        for bad in ("garbage", "1/2/3", "FFFFFFFFF/0", "", 42):
            if bad == "":
                with db.reads_after(bad):  # none: nothing to wait for
                    assert db._floor.get() == 0
                continue
            with pytest.raises(ArgumentError, match="read position: expected a WAL position"), db.reads_after(bad):
                pass
        with db.reads_after("FFFFFFFF/FFFFFFFF"):  # from the future: capped to where the primary is
            capped = db._floor.get()
            now = lsn_int(db.execute_sql("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        assert 0 < capped <= now
        with db.reads_after("0/1"):
            assert db._floor.get() == 1  # a position from the past is kept as it is
    finally:
        db.close_all()


@needs_embedded
def test_kit_maintain_against_a_replica_is_refused_in_one_sentence(replica_url):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env.update(DATABASE_URL=replica_url, DATABASE_OWNER_URL=replica_url.replace("kit_app@", "kit_owner@", 1))
    refused = subprocess.run([sys.executable, "-m", "kit.cli", "maintain"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "is a read-only replica: kit maintain changes the schema, so run it against the primary" in refused.stderr


@needs_embedded
@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_outside_a_scope_a_write_anywhere_in_the_process_is_waited_for_by_later_reads(routed, replica_url,
                                                                                    test_db_url, kind):
    """The first write of a process, and a write in an executor thread or child task before the parent's
    first statement: with replay paused, every later read outside a request scope sees it (both engines)."""
    from concurrent.futures import ThreadPoolExecutor

    paused(replica_url)
    if kind == "sync":
        with ThreadPoolExecutor(1) as pool:  # no context carried: a thread of its own, before ours ran anything
            pool.submit(lambda: (Note.create(body="from-executor"), routed.close())).result()
        assert Note.select().where(Note.body == "from-executor").count() == 1
        assert in_thread(lambda: Note.select().where(Note.body == "from-executor").count()) == 1
        return
    from kit.aio import AsyncDatabase

    adb = AsyncDatabase(test_db_url, load_settings(), stands_for=routed, replicas=[replica_url])

    async def main() -> list[int]:
        await adb.run(lambda: Note.create(body="aio-first"))  # the first statement of this database: a write
        child = asyncio.create_task(adb.run(lambda: Note.create(body="aio-child")))
        await child
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:  # a write on the sync pool from an executor thread, no context
            await loop.run_in_executor(pool, lambda: (Note.create(body="aio-executor"), routed.close()))
        seen = [await adb.run(lambda b=b: Note.select().where(Note.body == b).count())
                for b in ("aio-first", "aio-child", "aio-executor")]
        await adb.close_pool()
        return seen

    assert asyncio.run(main()) == [1, 1, 1]
    assert count_on(replica_url, "aio-first") == 0  # ... which the paused replica does not have
