"""The pool's semantics, each against the real server: sizes, timeouts, dead connections, clean reuse, fork, threads."""

from __future__ import annotations

import gc
import os
import secrets
import threading
import time

import pytest
from helpers import backend_pid, observes_server_sessions, scalar, wait_until
from peewee import ProgrammingError

from kit.db import PooledDatabase, PoolExhausted, PoolTooLarge, database


def server_connections(monitor, pool) -> int:
    return scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (pool.app_name,))



def hold_connections(pool, count):
    """Check out `count` connections on separate threads; returns (release_event, threads)."""
    ready = threading.Barrier(count + 1)
    release = threading.Event()

    def hold():
        with pool.connection_context():
            pool.execute_sql("SELECT 1")
            ready.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for t in threads:
        t.start()
    ready.wait()
    return release, threads


@observes_server_sessions
def test_min_connections_open_at_first_use_and_stay(make_pool, monitor):
    pool = make_pool(min_size=3, max_size=5, max_idle=0.2)
    assert server_connections(monitor, pool) == 0, "a pool must not connect before its first query"
    with pool.connection_context():
        pool.execute_sql("SELECT 1")
    assert server_connections(monitor, pool) == 3
    time.sleep(0.6)  # well past max_idle: the min connections stay
    assert server_connections(monitor, pool) == 3
    assert pool.pool_stats()["idle"] == 3


@observes_server_sessions
def test_idle_connections_above_min_close_after_idle_timeout(make_pool, monitor):
    pool = make_pool(min_size=1, max_size=6, max_idle=0.4)
    release, threads = hold_connections(pool, 5)
    assert server_connections(monitor, pool) == 5
    release.set()
    for t in threads:
        t.join()
    assert pool.pool_stats() | {"in_use": 0, "idle": 5} == pool.pool_stats()
    time.sleep(0.1)
    assert server_connections(monitor, pool) == 5, "closed before the idle timeout"
    assert wait_until(lambda: server_connections(monitor, pool) == 1, timeout=3)
    assert pool.pool_stats()["idle"] == 1


def test_caller_past_max_waits_then_gets_pool_exhausted(make_pool):
    pool = make_pool(min_size=0, max_size=2, timeout=0.3)
    release, threads = hold_connections(pool, 2)
    try:
        started = time.monotonic()
        with pytest.raises(PoolExhausted) as caught:
            pool.connect()
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0
        assert "all 2 connections" in str(caught.value)
        assert "DATABASE_POOL" not in str(caught.value)  # the class knows no environment variables
        stats = pool.pool_stats()
        assert stats["in_use"] == 2 and stats["timeouts"] == 1 and stats["waits"] == 1
    finally:
        release.set()
        for t in threads:
            t.join()


def test_waiting_caller_gets_the_connection_released_to_it(make_pool):
    pool = make_pool(min_size=0, max_size=1, timeout=5)
    release, threads = hold_connections(pool, 1)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    with pool.connection_context():
        assert pool.execute_sql("SELECT 41 + 1").fetchone()[0] == 42
    assert 0.15 < time.monotonic() - started < 3
    assert pool.pool_stats()["waits"] == 1
    threads[0].join()


def test_connection_of_an_ended_thread_is_reclaimed(make_pool):
    pool = make_pool(min_size=0, max_size=1, timeout=3)
    worker = threading.Thread(target=lambda: pool.execute_sql("SELECT 1"))  # autoconnect, never closed
    worker.start()
    worker.join()
    started = time.monotonic()
    with pool.connection_context():
        pool.execute_sql("SELECT 1")
    assert time.monotonic() - started < 1.0


@observes_server_sessions
def test_killed_idle_connections_never_fail_a_caller(make_pool, monitor):
    pool = make_pool(min_size=3, max_size=5)
    with pool.connection_context():
        old = backend_pid(pool)
    killed = scalar(
        monitor,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (pool.app_name,),
    )
    assert killed == 3
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (pool.app_name,)) == 0)  # every one of them has ended
    for _ in range(5):  # each checkout gets a live connection, with no retry by the caller
        with pool.connection_context():
            assert backend_pid(pool) != old
    assert pool.pool_stats()["checks"] >= 1
    assert wait_until(lambda: server_connections(monitor, pool) == 3)


@observes_server_sessions
def test_killed_connection_kept_by_a_thread_is_replaced_before_the_next_statement(make_pool, monitor):
    pool = make_pool(min_size=1, max_size=2)
    old = backend_pid(pool)  # autoconnect: this thread keeps the connection
    scalar(monitor, "SELECT pg_terminate_backend(%s)", (old,))
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (old,)) == 0)
    assert backend_pid(pool) != old
    pool.close()
    assert pool.pool_stats()["in_use"] == 0


def test_recently_used_connections_cost_no_round_trip_on_checkout(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    for _ in range(200):
        with pool.connection_context():
            pool.execute_sql("SELECT 1")
    assert pool.pool_stats()["checks"] == 0
    assert pool.pool_stats()["opened"] == 1


def test_connection_idle_past_check_after_is_pinged(make_pool):
    pool = make_pool(min_size=1, max_size=1, check_after=0.1)
    with pool.connection_context():
        pool.execute_sql("SELECT 1")
    time.sleep(0.2)
    with pool.connection_context():
        pool.execute_sql("SELECT 1")
    assert pool.pool_stats()["checks"] == 1


def test_open_and_failed_transactions_are_rolled_back_before_reuse(make_pool, monitor):
    table = f"pool_txn_{secrets.token_hex(3)}"
    monitor.cursor().execute(f"CREATE TABLE {table} (n int); GRANT SELECT, INSERT ON {table} TO kit_app")
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection_context():
        first = backend_pid(pool)
        pool.execute_sql("BEGIN")
        pool.execute_sql(f"INSERT INTO {table} VALUES (1)")
    with pool.connection_context():
        assert backend_pid(pool) == first
        assert pool.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        pool.execute_sql("BEGIN")
        with pytest.raises(ProgrammingError):
            pool.execute_sql("SELECT * FROM no_such_table")
    with pool.connection_context():  # the failed transaction is gone: statements work again
        assert backend_pid(pool) == first
        assert pool.execute_sql("SELECT 1").fetchone()[0] == 1
    assert scalar(monitor, f"SELECT count(*) FROM {table}") == 0
    monitor.cursor().execute(f"DROP TABLE {table}")


@observes_server_sessions
@pytest.mark.parametrize(
    "change, probe, default",
    [
        ("SET statement_timeout = 1234", "SHOW statement_timeout", "0"),
        ("SET SESSION work_mem = '77MB'", "SHOW work_mem", None),
        ("SELECT set_config('application_name', 'hijacked', false)", "SHOW application_name", None),
        ("CREATE TEMP TABLE scratch (n int)", "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'", 0),
        ("SELECT pg_advisory_lock(4242)", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", 0),
    ],
)
def test_session_state_does_not_leak_to_the_next_borrower(make_pool, change, probe, default):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection_context():
        first = backend_pid(pool)
        before = pool.execute_sql(probe).fetchone()[0]
        pool.execute_sql(change)
        assert pool.execute_sql(probe).fetchone()[0] != before  # the change took effect, or the test proves nothing
    with pool.connection_context():
        assert backend_pid(pool) == first, "the same server connection must be reused"
        after = pool.execute_sql(probe).fetchone()[0]
    assert after == (before if default is None else default)


def test_settings_changed_through_the_raw_driver_connection_do_not_leak(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection_context():
        with pool.connection().cursor() as cur:
            cur.execute("SET search_path TO nowhere")
    with pool.connection_context():
        assert pool.execute_sql("SHOW search_path").fetchone()[0] == '"$user", public'


def test_set_local_needs_no_reset(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection_context():
        with pool.atomic():
            pool.execute_sql("SET LOCAL statement_timeout = 500")
    assert pool.pool_stats()["resets"] == 0


@observes_server_sessions
def test_forked_child_never_reuses_the_parents_socket(make_pool, monitor):
    pool = make_pool(min_size=2, max_size=4)
    parent_pid = backend_pid(pool)  # held by this thread across the fork
    raw = pool.connection()  # a driver connection the caller keeps a reference to
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            pid = backend_pid(pool)
            os.write(write_end, str(pid).encode())
            pool.close_all()
            raw.close()  # would end the parent's session if the child still shared its socket
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    child_backend = int(os.read(read_end, 64).decode())
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend != parent_pid
    time.sleep(0.1)
    # The parent's session survived the child's exit, and so did its idle connections.
    assert backend_pid(pool) == parent_pid
    alive = scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (parent_pid,))
    assert alive == 1
    pool.close()
    for _ in range(3):
        with pool.connection_context():
            pool.execute_sql("SELECT 1")
    assert pool.pool_stats()["closed"] == 0


def test_fifty_threads_never_hold_more_than_max_server_connections(make_pool, monitor):
    pool = make_pool(min_size=2, max_size=10, timeout=30)
    peak = 0
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server_connections(monitor, pool))
            time.sleep(0.005)

    errors: list[BaseException] = []
    results = []

    def work(n):
        try:
            total = 0
            for i in range(200):
                with pool.connection_context():
                    total += pool.execute_sql("SELECT %s", (i,)).fetchone()[0]
            results.append(total)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    watcher.join()
    assert not errors, errors[:3]
    assert results == [sum(range(200))] * 50
    assert 2 <= peak <= 10
    stats = pool.pool_stats()
    assert stats["in_use"] == 0 and stats["idle"] <= 10 and stats["opened"] <= 10


def test_pool_stats_reports_use(make_pool):
    pool = make_pool(min_size=1, max_size=3)
    with pool.connection_context():
        stats = pool.pool_stats()
        assert stats["in_use"] == 1 and stats["max"] == 3 and stats["min"] == 1
        assert {"idle", "waits", "timeouts", "opened", "closed", "checks", "resets"} <= stats.keys()
    assert pool.pool_stats()["in_use"] == 0 and pool.pool_stats()["idle"] == 1


def test_kit_database_is_the_pooled_jsonb_capable_class(test_db_url):
    from playhouse.postgres_ext import PostgresqlExtDatabase

    assert isinstance(database, PooledDatabase) and isinstance(database, PostgresqlExtDatabase)
    assert database.url == test_db_url
    assert database.execute_sql("SELECT '{\"a\": 1}'::jsonb ->> 'a'").fetchone()[0] == "1"


@observes_server_sessions
def test_a_min_size_above_what_the_server_allows_is_one_sentence_not_an_outage(make_pool, monitor, test_db_url):
    most = int(scalar(monitor, "SHOW max_connections"))
    pool = make_pool(min_size=most + 50, max_size=most + 60)
    with pytest.raises(PoolTooLarge, match=rf"min_size {most + 50} is more connections than the server allows "
                                           rf"role \w+ \(\d+: max_connections {most} minus \d+ reserved\)"):
        pool.connect()
    # nothing was left open, nobody else was crowded out (a closed connection's backend exits a moment later)
    assert wait_until(lambda: server_connections(monitor, pool) == 0), server_connections(monitor, pool)
    role = f"kit_limited_{secrets.token_hex(3)}"
    monitor.cursor().execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 3; "
                             f"GRANT CONNECT ON DATABASE {monitor.info.dbname} TO {role}")
    try:
        limited = PooledDatabase(test_db_url.replace("kit_app@", f"{role}@"), min_size=4, max_size=5,
                                 application_name="kit-limited")
        with pytest.raises(PoolTooLarge, match=r"\(3: the role's CONNECTION LIMIT 3\)"):
            limited.connect()
        limited.init(test_db_url.replace("kit_app@", f"{role}@"), min_size=2)  # within the limit: fine
        limited.connect()
        assert limited.execute_sql("SELECT current_user").fetchone()[0] == role
        limited.close_all()
    finally:
        monitor.cursor().execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@observes_server_sessions
def test_the_environment_names_the_variable(monkeypatch, test_db_url):
    from kit.config import ConfigError, load_settings
    from kit.db import Database

    monkeypatch.setenv("DATABASE_POOL_MIN", "5000")
    monkeypatch.setenv("DATABASE_POOL_MAX", "5000")
    db = Database()
    db.configure(test_db_url, load_settings())
    with pytest.raises(ConfigError, match=r"DATABASE_POOL_MIN=5000 is too large: min_size 5000 is more"):
        db.connect()
    db.close_all()


def test_zero_in_the_environment_means_wait_without_end_and_keep_idle_connections(monkeypatch, test_db_url):
    from kit.config import load_settings
    from kit.db import Database

    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "0")
    monkeypatch.setenv("DATABASE_POOL_IDLE_TIMEOUT", "0")
    monkeypatch.setenv("DATABASE_POOL_MAX", "1")
    monkeypatch.setenv("DATABASE_POOL_MIN", "0")
    db = Database()
    db.configure(test_db_url, load_settings())
    assert db._wait_timeout == float("inf") and db._pool.max_idle is None
    try:
        db.connect()
        got = []
        waiter = threading.Thread(target=lambda: (db.connect(), got.append(True), db.close()))
        waiter.start()
        time.sleep(0.5)  # far past any finite default the pool could have used
        assert got == [] and waiter.is_alive()
        db.close()  # the waiter gets it now
        waiter.join(5)
        assert got == [True]
    finally:
        db.close_all()


def test_a_connection_being_reset_on_its_way_back_still_counts_against_max_size(make_pool, monitor):
    """A check-in's reset is a round trip: a caller arriving meanwhile waits for it rather than opening one more."""
    resetting = threading.Event()

    class SlowReset(PooledDatabase):
        def _reset_session(self, conn):
            resetting.set()
            time.sleep(0.5)
            return super()._reset_session(conn)

    pool = make_pool(max_size=1, timeout=10, cls=SlowReset)

    def first():
        with pool.connection_context():
            pool.execute_sql("SET SESSION work_mem = '9MB'")  # session state: a reset on check-in

    thread = threading.Thread(target=first)
    thread.start()
    assert resetting.wait(10)
    with pool.connection_context():
        assert pool.execute_sql("SHOW work_mem").fetchone()[0] != "9MB"
        assert pool.pool_stats()["opened"] == 1  # it waited for the one being reset
        if not os.environ.get("DATABASE_POOLER"):  # behind PgBouncer the server's sessions are PgBouncer's
            assert server_connections(monitor, pool) == 1
    thread.join()
    stats = pool.pool_stats()
    assert stats["opened"] == 1 and stats["resets"] == 1 and stats["waits"] == 1
