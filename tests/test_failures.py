"""One outage, one family: every "the database went away" is a `DatabaseUnavailable`; and whole transactions run again.

Real faults: backends killed mid-statement and mid-transaction, new connections refused while a
statement was to be re-sent, two transactions deadlocked on each other. The ledger (rows counted
from outside the pool) shows nothing lost and nothing doubled by `retry_transaction`.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from helpers import backend_pid, observes_server_sessions, scalar
from peewee import IntegrityError

from kit import DatabaseUnavailable, KitError, SessionLost, retry_transaction
from kit.db import PooledDatabase
from kit.errors import ArgumentError


@pytest.fixture
def pool(test_db_url):
    """A PooledDatabase on the test database, with its own application_name."""
    db = PooledDatabase(test_db_url, max_connections=4, application_name=f"kit-fail-{secrets.token_hex(4)}")
    yield db
    db.close_all()


@pytest.fixture
def table(monitor):
    """A table with a unique key and a counter, two rows to deadlock on; dropped afterwards."""
    name = f"ledger_{secrets.token_hex(4)}"
    with monitor.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (k int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        cur.execute(f"INSERT INTO {name} (k) VALUES (1), (2)")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO kit_app")
    yield name
    with monitor.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")


def terminate(monitor, pid: int) -> None:
    assert scalar(monitor, "SELECT pg_terminate_backend(%s)", (pid,)) is True


def test_a_statement_killed_while_it_ran_is_session_lost_with_its_outcome_unknown(pool, monitor):
    victim = backend_pid(pool)
    threading.Timer(0.3, terminate, (monitor, victim)).start()
    with pytest.raises(SessionLost) as caught:
        pool.execute_sql("SELECT pg_sleep(3)")
    assert isinstance(caught.value, DatabaseUnavailable) and isinstance(caught.value, KitError)
    assert caught.value.outcome_unknown and "may have taken effect" in str(caught.value)
    assert backend_pid(pool) != victim


def test_a_kill_inside_a_transaction_is_session_lost_and_nothing_was_committed(pool, monitor, table):
    with pytest.raises(SessionLost) as caught:
        with pool.atomic():
            pool.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
            terminate(monitor, backend_pid(pool))
            time.sleep(0.05)
            pool.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = 2")
    assert not caught.value.outcome_unknown and "nothing of it was committed" in str(caught.value)
    assert scalar(monitor, f"SELECT sum(n) FROM {table}") == 0


@observes_server_sessions
def test_a_resend_that_cannot_connect_is_database_unavailable_never_a_raw_driver_error(pool, monitor):
    victim = backend_pid(pool)
    with monitor.cursor() as cur:
        cur.execute("ALTER ROLE kit_app CONNECTION LIMIT 0")  # every new connection of the role is refused
    try:
        terminate(monitor, victim)
        time.sleep(0.05)
        with pytest.raises(DatabaseUnavailable) as caught:
            pool.execute_sql("SELECT 1")  # the dead one is found, and its replacement refused
        assert "nothing was re-sent" in str(caught.value)
    finally:
        with monitor.cursor() as cur:
            cur.execute("ALTER ROLE kit_app CONNECTION LIMIT -1")
    assert pool.execute_sql("SELECT 1").fetchone()[0] == 1  # and the next statement connects again


def test_a_transaction_killed_before_commit_is_run_again_whole_and_applied_once(pool, monitor, table):
    runs = []

    def add_one():
        runs.append(1)
        pool.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
        if len(runs) == 1:  # the first run loses its connection before COMMIT
            terminate(monitor, backend_pid(pool))
            time.sleep(0.05)
            pool.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = 2")
        return len(runs)

    assert retry_transaction(add_one, database=pool) == 2
    assert scalar(monitor, f"SELECT n FROM {table} WHERE k = 1") == 1  # once, not twice, not lost
    assert scalar(monitor, f"SELECT n FROM {table} WHERE k = 2") == 0


def test_two_deadlocked_transactions_both_complete_each_once(test_db_url, monitor, table):
    pools = [PooledDatabase(test_db_url, max_connections=2) for _ in range(2)]
    barrier = threading.Barrier(2)
    runs = [0, 0]
    errors = []

    def swap(which: int) -> None:
        db = pools[which]
        first, second = (1, 2) if which == 0 else (2, 1)

        def work():
            runs[which] += 1
            db.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = %s", (first,))
            if runs[which] == 1:
                barrier.wait(timeout=5)  # both hold their first row: each now waits for the other's
            db.execute_sql(f"UPDATE {table} SET n = n + 1 WHERE k = %s", (second,))

        try:
            retry_transaction(work, database=db)
        except Exception as exc:  # collected, so the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for db in pools:
        db.close_all()
    assert errors == []
    assert sum(runs) == 3  # the server chose one victim; it ran again
    assert scalar(monitor, f"SELECT sum(n) FROM {table}") == 4  # each transaction's two updates, once


def test_what_may_have_committed_or_is_the_callers_own_failure_is_never_run_again(pool, table):
    runs = []

    def duplicate():
        runs.append(1)
        pool.execute_sql(f"INSERT INTO {table} (k) VALUES (1)")

    with pytest.raises(IntegrityError):
        retry_transaction(duplicate, database=pool)
    assert len(runs) == 1

    def unknown():
        runs.append(1)
        raise SessionLost("lost during COMMIT", outcome_unknown=True)

    with pytest.raises(SessionLost):
        retry_transaction(unknown, database=pool)
    assert len(runs) == 2


def test_the_tries_are_bounded(pool):
    runs = []

    def always_lost():
        runs.append(1)
        raise SessionLost("lost before COMMIT")

    with pytest.raises(SessionLost):
        retry_transaction(always_lost, database=pool, tries=3)
    assert len(runs) == 3


def test_inside_an_open_transaction_it_refuses_and_runs_nothing(pool):
    ran = []
    with pool.atomic():
        with pytest.raises(ArgumentError, match="only the outermost"):
            retry_transaction(lambda: ran.append(1), database=pool)
    assert ran == []


def test_a_database_never_initialized_is_a_plain_error_not_an_outage():
    from peewee import InterfaceError

    db = PooledDatabase(None)
    with pytest.raises(InterfaceError, match="must be initialized") as raised:
        db.execute_sql("SELECT 1")
    assert not isinstance(raised.value, DatabaseUnavailable)  # not SessionLost's "it may have taken effect"
