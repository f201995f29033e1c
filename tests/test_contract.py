"""One statement contract, both engines: the same test body, run on the sync pool and on the asyncio database.

Each test is written once as a function of a database and parametrized over the two engines (the
asyncio one runs the body inside its `run()`, where the models are its own), never as two copies:
the tenant rule, the door, time limits, one statement per string, what survives killed backends,
`SessionLost`, re-sends, read-your-writes and span names must read the same on both.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from urllib.parse import urlsplit

import peewee
import pytest
from helpers import admin_execute
from test_tenancy import MODELS, attacked  # noqa: F401 - the seeded database of the attacker suite

from kit import ArgumentError, SessionLost, StatementTimeout, all_tenants, tenant
from kit.config import load_settings
from kit.db import Database
from kit.models import Member

LIMIT_MS = 700


class Engine:
    """One engine over the attacker suite's database: `call(body)` runs `body(database)` on it."""

    def __init__(self, kind: str, db: Database, **settings) -> None:
        self.kind = kind
        self.settings = replace(load_settings(), statement_timeout_ms=LIMIT_MS, **settings)
        self.sync = Database()
        self.sync.configure(db.url, settings=self.settings, door_url=db._door_url)
        self.database = self.sync
        self.loop = None
        if kind == "asyncio":
            from kit.aio import AsyncDatabase

            self.database = AsyncDatabase(db.url, self.settings, stands_for=self.sync, door_url=db._door_url)
            self.loop = asyncio.new_event_loop()

    def call(self, body, *args):
        """`body(database, *args)` on this engine (inside `run()` on asyncio), the models bound to it."""
        with self.sync.bind_ctx(MODELS):
            if self.loop is None:
                return body(self.database, *args)
            return self.loop.run_until_complete(self.database.run(body, self.database, *args))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.database.close_pool())
            self.loop.close()
        self.sync.close_all()


@pytest.fixture(params=["sync", "asyncio"])
def engine(request, attacked):  # noqa: F811
    made = Engine(request.param, attacked[0])
    yield made
    made.close()


def count_members(d) -> int:
    return d.execute_sql("SELECT count(*) FROM members").fetchone()[0]


def test_after_a_nested_block_a_statement_with_no_tenant_sees_no_tenant_s_rows(engine, attacked):  # noqa: F811
    _, _, victim = attacked

    def body(d):
        with d.atomic():
            with tenant(victim):
                with d.atomic():  # a savepoint inside the tenant's block
                    inside = count_members(d)
                assert count_members(d) == inside
            return inside, count_members(d)  # the same transaction, the block left: no tenant

    inside, after = engine.call(body)
    assert inside > 0 and after == 0


def test_a_rolled_back_savepoint_takes_its_tenant_with_it(engine, attacked):  # noqa: F811
    _, attacker, victim = attacked

    def body(d):
        with d.atomic(), tenant(attacker):
            try:
                with d.atomic(), tenant(victim, switch=True):
                    count_members(d)
                    raise RuntimeError
            except RuntimeError:
                pass
            return d.execute_sql("SELECT count(*) FROM members WHERE organization_id = %s", (victim,)).fetchone()[0]

    assert engine.call(body) == 0


def test_a_statement_that_fails_inside_a_savepoint_is_rolled_back_to_it_and_the_transaction_goes_on(
        engine, attacked):  # noqa: F811
    """ROLLBACK TO SAVEPOINT in a transaction the failure aborted carries nothing that would fail there too."""
    _, _, victim = attacked

    def body(d):
        with tenant(victim), d.atomic():
            before = count_members(d)
            with pytest.raises(peewee.DataError), d.atomic():
                d.execute_sql("SELECT 1 / 0")
            return before, count_members(d)

    before, after = engine.call(body)
    assert before == after > 0


def test_the_door_crosses_tenants_as_kit_door_on_both_engines(engine):
    def body(d):
        with all_tenants():
            who = d.execute_sql("SELECT current_user").fetchone()[0]
            organizations = d.execute_sql("SELECT count(DISTINCT organization_id) FROM members").fetchone()[0]
            models = Member.select().count()
            with d.atomic():
                in_transaction = count_members(d)
        return who, organizations, models, in_transaction, count_members(d)

    who, organizations, models, in_transaction, outside = engine.call(body)
    assert who == "kit_door" and organizations > 1 and models == in_transaction > 0 and outside == 0


def test_a_statement_past_its_limit_is_the_same_sentence_on_both_engines(engine):
    with pytest.raises(StatementTimeout, match=f"ran past its time limit \\({LIMIT_MS} ms, DATABASE_STATEMENT_TIMEOUT"):
        engine.call(lambda d: d.execute_sql("SELECT pg_sleep(3)"))
    assert engine.call(lambda d: d.execute_sql("SELECT 1").fetchone()[0]) == 1  # the connection goes on


@pytest.mark.parametrize("text", ["SET LOCAL statement_timeout = 0; SELECT pg_sleep(2)",
                                  "select 1 ; SELECT pg_sleep(2)", "SELECT 1; /* c */ SELECT pg_sleep(2)"])
def test_several_statements_in_one_string_outside_a_transaction_are_refused(engine, text):
    with pytest.raises(ArgumentError, match="statements in one string outside a transaction run as one implicit"):
        engine.call(lambda d: d.execute_sql(text))

    def inside(d):
        with d.atomic():  # inside a transaction the caller's SET LOCAL decides, as documented
            d.execute_sql("SET LOCAL statement_timeout = 5000")
            return d.execute_sql("SELECT 1").fetchone()[0]

    assert engine.call(inside) == 1


def kill_idle(admin_url: str, database: str) -> None:
    admin_execute(admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                             f"'{database}' AND usename = 'kit_app' AND state = 'idle'")


def test_two_hundred_rounds_of_killed_idle_connections_fail_no_statement(engine, attacked, test_admin_url):  # noqa: F811
    """A statement on a connection killed while idle never ran: it is re-sent, never reported lost."""
    from helpers import with_dbname

    db = attacked[0]
    name = urlsplit(db.url).path.lstrip("/")
    admin = with_dbname(test_admin_url, name)
    failures = []

    def body(d):
        for _ in range(200):
            try:
                d.execute_sql("SELECT count(*) FROM organizations").fetchone()
                if engine.kind == "sync":
                    d.close()  # back to the pool, idle
                kill_idle(admin, name)
                d.execute_sql("SELECT count(*) FROM organizations").fetchone()
                if engine.kind == "sync":
                    d.close()
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(f"{type(exc).__name__}: {exc}")
        return failures

    if db.pooler:
        pytest.skip("behind PgBouncer the server sessions killed are PgBouncer's, which it replaces itself")
    assert engine.call(body) == []


def test_session_state_lost_with_its_connection_is_session_lost_once(engine, attacked, test_admin_url):  # noqa: F811
    from helpers import with_dbname

    db = attacked[0]
    if db.pooler:
        pytest.skip("behind PgBouncer session state is refused before it is sent")
    name = urlsplit(db.url).path.lstrip("/")

    def body(d):
        with d.connection_context() if engine.kind == "sync" else _nothing():
            pid = d.execute_sql("SELECT pg_backend_pid(), pg_advisory_lock(77)").fetchone()[0]
            admin_execute(with_dbname(test_admin_url, name), f"SELECT pg_terminate_backend({pid})")
            threading.Event().wait(0.3)
            with pytest.raises(SessionLost, match="advisory locks") as caught:
                d.execute_sql("SELECT 1")
            assert "advisory locks" in caught.value.lost
            return d.execute_sql("SELECT 1").fetchone()[0]  # the next statement, on a new connection

    assert engine.call(body) == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_write_refused_by_the_policies_is_the_same_tenant_error(engine, attacked):  # noqa: F811
    from kit import TenantError

    _, attacker, victim = attacked

    def body(d):
        with tenant(attacker), d.atomic():
            d.execute_sql("INSERT INTO attack_notes (id, organization_id, body, created_at, updated_at) "
                          "VALUES (gen_random_uuid(), %s, 'x', now(), now())", (victim,))

    with pytest.raises(TenantError, match=f"attack_notes: the row does not belong to the tenant context's "
                                          f"organization \\(kit.tenant\\({attacker}\\)\\); nothing was written"):
        engine.call(body)


def test_a_driver_error_is_peewee_s_class_on_both_engines(engine):
    with pytest.raises(peewee.ProgrammingError):
        engine.call(lambda d: d.execute_sql("SELECT * FROM no_such_table_here"))


def test_a_refused_connection_is_database_unavailable_and_retry_transaction_runs_again(
        engine, attacked, test_admin_url):  # noqa: F811
    """No connection to be had (the server refusing the role for a moment): nothing was sent, on both engines."""
    from kit import DatabaseUnavailable

    db = attacked[0]
    if db.pooler:
        pytest.skip("behind PgBouncer its own server connections stay open: no new one is refused")
    def fresh():  # every connection closed, so the next statement must open one
        if engine.loop is not None:
            engine.loop.run_until_complete(engine.database.close_pool())
        engine.sync.close_all()

    fresh()
    admin_execute(test_admin_url, "ALTER ROLE kit_app NOLOGIN")
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            engine.call(lambda d: d.execute_sql("SELECT 1"))
        assert not getattr(caught.value, "outcome_unknown", False)  # refused: never "may have taken effect"
    finally:
        timer = threading.Timer(0.4, admin_execute, (test_admin_url, "ALTER ROLE kit_app LOGIN"))
        timer.start()
    fresh()
    try:
        if engine.kind == "sync":
            from kit.db.retry import retry_transaction

            ran = retry_transaction(lambda: count_members(engine.sync), tries=12, database=engine.sync)
        else:
            ran = engine.loop.run_until_complete(
                engine.database.retry_transaction(lambda: count_members(engine.database), tries=12))
        assert ran == 0  # run again until the role could log in, and then once
    finally:
        timer.join()
        admin_execute(test_admin_url, "ALTER ROLE kit_app LOGIN")
