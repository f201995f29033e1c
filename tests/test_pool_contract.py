"""peewee's pooled-database contract, kept by the kit's PooledDatabase, each point against the real server.

The points are those of playhouse's `PooledPostgresqlExtDatabase` and its test suite (`tests/pool.py`):
the constructor arguments and their meanings, `init()` changing them, the closing methods, `dispose()`
after fork, the subclass hooks and the order in which idle connections are reused.
"""

from __future__ import annotations

import math
import os
import threading
import time

import pytest
from helpers import backend_pid, observes_server_sessions, scalar, wait_until
from playhouse.pool import MaxConnectionsExceeded

from kit.db import PooledDatabase, PoolExhausted, PoolSettingError


@pytest.fixture
def pooled(make_pool):
    """peewee's name for the pool factory (see conftest.make_pool)."""
    return make_pool


def on_server(monitor, db) -> int:
    return scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (db.app_name,))



def in_thread(fn):
    """Run `fn` on a new thread; return its result or raise what it raised."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Holder:
    """A thread that checks a connection out of `db` and keeps it until `release()`."""

    def __init__(self, db):
        self.db, self.ready, self.done = db, threading.Event(), threading.Event()
        self.pid = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        with self.db.connection_context():
            self.pid = backend_pid(self.db)
            self.ready.set()
            self.done.wait(30)

    def release(self):
        self.done.set()
        self.thread.join(10)


def test_max_connections_is_a_hard_limit_and_timeout_none_fails_at_once(pooled):
    db = pooled(max_connections=1)  # peewee's defaults otherwise: timeout None
    holder = Holder(db)
    started = time.monotonic()
    with pytest.raises(PoolExhausted) as caught:
        in_thread(db.connect)
    assert time.monotonic() - started < 1.0
    assert isinstance(caught.value, MaxConnectionsExceeded)  # what peewee code catches
    assert db.pool_stats()["in_use"] == 1
    holder.release()
    assert in_thread(lambda: backend_pid(db)) == holder.pid  # free again: the same connection


def test_max_size_one_never_lets_two_out_whatever_the_default_min(pooled):
    db = pooled(max_size=1, timeout=0.2)
    holder = Holder(db)
    with pytest.raises(PoolExhausted):
        in_thread(db.connect)
    assert db.pool_stats()["in_use"] == 1
    holder.release()


@observes_server_sessions
@pytest.mark.parametrize("unlimited", [0, None])
def test_max_connections_zero_or_none_means_no_limit(pooled, monitor, unlimited):
    db = pooled(max_connections=unlimited)
    holders = [Holder(db) for _ in range(12)]
    assert db.pool_stats()["in_use"] == 12 == on_server(monitor, db)
    for holder in holders:
        holder.release()


def test_timeout_zero_waits_as_long_as_it_takes(pooled):
    db = pooled(max_connections=1, timeout=0)
    assert db._wait_timeout == math.inf
    holder = Holder(db)
    threading.Timer(0.6, holder.release).start()
    started = time.monotonic()
    assert in_thread(lambda: backend_pid(db)) == holder.pid
    assert time.monotonic() - started >= 0.5


def test_timeout_in_seconds_waits_then_fails(pooled):
    db = pooled(max_connections=1, timeout=0.3)
    holder = Holder(db)
    started = time.monotonic()
    with pytest.raises(PoolExhausted):
        in_thread(db.connect)
    assert 0.25 <= time.monotonic() - started < 2.0
    holder.release()


@observes_server_sessions
def test_stale_timeout_retires_connections_by_age(pooled, monitor):
    db = pooled(stale_timeout=0.3)
    with db.connection_context():
        first = backend_pid(db)
    with db.connection_context():
        assert backend_pid(db) == first  # young: reused
    time.sleep(0.4)
    with db.connection_context():  # too old at checkout: closed, a new one opened
        second = backend_pid(db)
    assert second != first
    time.sleep(0.4)
    db.close()  # nothing open; now check one in that is too old on return
    with db.connection_context():
        third = backend_pid(db)
        time.sleep(0.4)
    assert third != second
    assert wait_until(lambda: on_server(monitor, db) == 0)  # closed on check-in, not kept


def test_init_updates_pool_parameters(pooled):
    db = pooled(max_connections=5, stale_timeout=10, timeout=2)
    assert (db._max_connections, db._stale_timeout, db._wait_timeout) == (5, 10, 2)
    db.init(db.database, max_connections=1, stale_timeout=100, timeout=0.1, **db.connect_params)
    assert (db._max_connections, db._stale_timeout, db._wait_timeout) == (1, 100, 0.1)
    holder = Holder(db)
    with pytest.raises(PoolExhausted):  # the new limit holds
        in_thread(db.connect)
    holder.release()
    db.init(db.database, timeout=0, **db.connect_params)
    assert db._wait_timeout == math.inf
    db.init(db.database, min_size=1, max_size=3, **db.connect_params)
    assert (db.min_size, db.max_connections) == (1, 3)


@observes_server_sessions
def test_init_with_another_target_closes_what_the_pool_holds(pooled, monitor, test_db_url):
    db = pooled()
    with db.connection_context():
        first = backend_pid(db)
    assert on_server(monitor, db) == 1
    db.init(test_db_url, application_name=db.app_name + "-b")
    assert wait_until(lambda: on_server(monitor, db) == 0)
    with db.connection_context():
        assert backend_pid(db) != first


@observes_server_sessions
def test_close_idle_closes_only_idle_connections(pooled, monitor):
    db = pooled()
    holder = Holder(db)
    for _ in range(2):
        Holder(db).release()  # two more, returned to the pool
    assert db.pool_stats()["idle"] >= 1
    closed = db.close_idle()
    assert closed == db.pool_stats()["closed"] >= 1
    assert db.pool_stats()["idle"] == 0 and db.pool_stats()["in_use"] == 1
    # the server sees a close asynchronously: its backends exit a moment after the client hangs up
    assert wait_until(lambda: on_server(monitor, db) == 1), on_server(monitor, db)
    holder.release()


@observes_server_sessions
def test_close_stale_closes_long_checked_out_connections(pooled, monitor):
    db = pooled()
    old = Holder(db)
    time.sleep(0.3)
    young = Holder(db)
    assert db.close_stale(age=0.2) == 1
    assert db.pool_stats()["in_use"] == 1
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (old.pid,)) == 0)
    old.release()  # returning a connection close_stale took is harmless
    young.release()
    assert db.pool_stats()["idle"] == 1


@observes_server_sessions  # behind PgBouncer the server connections stay in its pool after the clients close
def test_close_all_closes_everything_and_wakes_waiters(pooled, monitor):
    db = pooled(max_connections=1, timeout=5)
    db.connect()
    got = []
    waiter = threading.Thread(target=lambda: got.append(in_thread(lambda: backend_pid(db))))
    waiter.start()
    assert wait_until(lambda: db.pool_stats()["waiting"] == 1)  # it waits for the one connection
    db.close_all()
    waiter.join(5)
    assert got and db.is_closed()
    db.close_all()
    assert wait_until(lambda: on_server(monitor, db) == 0), on_server(monitor, db)


@observes_server_sessions
def test_manual_close_closes_for_good(pooled, monitor):
    db = pooled()
    assert db.manual_close() is False  # nothing open
    first = backend_pid(db)
    assert db.manual_close() is True
    assert db.is_closed() and db.pool_stats() | {"in_use": 0, "idle": 0} == db.pool_stats()
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,)) == 0)
    assert backend_pid(db) != first


@observes_server_sessions
def test_dispose_after_fork_frees_every_place_in_the_child(pooled, monitor):
    db = pooled(max_connections=2)
    parent_pid = backend_pid(db)  # the parent keeps this one checked out across the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            db.dispose()  # peewee's documented call after fork (the kit also does it by itself)
            pids = [in_thread(lambda: Holder(db).pid) for _ in range(2)]
            code = 0 if len(set(pids) | {parent_pid}) == 3 and db.pool_stats()["in_use"] == 2 else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.waitpid(child, 0)
    assert result == b"\x00"
    assert backend_pid(db) == parent_pid  # the parent's session was never touched


@observes_server_sessions
def test_is_closed_hook_is_asked_on_checkout(pooled):
    refused = set()

    class Refusing(PooledDatabase):
        def _is_closed(self, conn):
            return id(conn) in refused or super()._is_closed(conn)

    db = pooled(cls=Refusing)
    with db.connection_context():
        first = backend_pid(db)
        refused.add(id(db.connection()))
    with db.connection_context():
        assert backend_pid(db) != first


@observes_server_sessions
def test_can_reuse_hook_is_asked_on_check_in(pooled, monitor):
    class NeverReused(PooledDatabase):
        def _can_reuse(self, conn):
            return False

    db = pooled(cls=NeverReused)
    pids = []
    for _ in range(3):
        with db.connection_context():
            pids.append(backend_pid(db))
    assert len(set(pids)) == 3
    assert wait_until(lambda: on_server(monitor, db) == 0) and db.pool_stats()["closed"] == 3


def test_idle_connections_are_reused_oldest_first(pooled):
    db = pooled()
    holders = []
    for _ in range(3):  # opened one after another: holders[0] is the oldest
        holders.append(Holder(db))
        time.sleep(0.01)
    for holder in reversed(holders):  # returned newest first, so the newest was idle longest
        holder.release()
    assert in_thread(lambda: backend_pid(db)) == holders[0].pid


def test_a_transaction_left_open_by_raw_sql_is_rolled_back_on_check_in(pooled, monitor):
    db = pooled()
    monitor.cursor().execute("CREATE TABLE IF NOT EXISTS contract_checkin (v int); "
                             "GRANT SELECT, INSERT ON contract_checkin TO kit_app")
    db.execute_sql("BEGIN")
    db.execute_sql("INSERT INTO contract_checkin VALUES (1)")
    db.close()
    with db.connection_context():
        assert db.execute_sql("SELECT count(*) FROM contract_checkin").fetchone()[0] == 0
    monitor.cursor().execute("DROP TABLE contract_checkin")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_connections": -1}, "max_size must not be negative, got -1"),
        ({"max_connections": 2, "min_size": 3}, "min_size (3) must not be greater than max_size (2)"),
        ({"max_size": 1, "min_size": 2}, "min_size (2) must not be greater than max_size (1)"),
        ({"timeout": "soon"}, "timeout must be a number, got 'soon'"),
        ({"timeout": -1}, "timeout must not be negative, got -1"),
        ({"stale_timeout": -5}, "stale_timeout must not be negative, got -5"),
        ({"max_idle": float("nan")}, "max_idle must be a number, got nan"),
        ({"min_size": 1.5}, "min_size must be a whole number, got 1.5"),
        ({"check_after": None}, "check_after must be a number, got None"),
        ({"max_connections": 5, "max_size": 6}, "max_connections (5) and max_size (6) disagree; give one"),
    ],
)
def test_every_argument_is_checked_in_one_sentence(test_db_url, kwargs, message):
    with pytest.raises(PoolSettingError) as caught:
        PooledDatabase(test_db_url, **kwargs)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_numbers_given_as_strings_are_accepted_as_peewee_does(pooled):
    db = pooled(max_connections="3", stale_timeout="60", timeout="1.5")
    assert (db._max_connections, db._stale_timeout, db._wait_timeout) == (3, 60, 1.5)


def test_connections_and_in_use_read_as_peewee_s_pool_names_them(pooled):
    """Third-party code and peewee's own tests read `_connections` (the idle heap) and `_in_use` (key -> PoolConnection)."""
    db = pooled(max_connections=3)
    assert db._connections == [] and db._in_use == {}
    db.connect()
    conn = db.connection()
    (entry,) = db._in_use.values()
    assert entry.connection is conn and entry.checked_out > 0 and db._connections == []
    db.close()
    assert db._in_use == {} and [c for _, _, c in db._connections] == [conn]
    db._connections.clear()  # a copy to read: clearing it changes nothing in the pool
    assert len(db._connections) == 1
    db.close_all()
