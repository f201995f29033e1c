"""The pool under real faults: backends killed with pg_terminate_backend at the worst moment.

- Liveness at checkout: a statement sent to a session the server had already ended is re-sent, so the
  caller never sees the failure; 200 trials, with plain SELECTs and with INSERTs that would show a
  statement run twice.
- A statement the server may have run (it answered with a FATAL, or it was inside a transaction) is
  never re-sent.
- A connection holding session state that dies raises SessionLost naming the state, once; it is never
  replaced under the caller.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from helpers import backend_pid, observes_server_sessions, scalar, wait_until
from peewee import OperationalError

from kit.db import PooledDatabase, SessionLost

TRIALS = 200


@pytest.fixture
def pool(test_db_url):
    """A PooledDatabase on the test database, with its own application_name."""
    name = f"kit-fault-{secrets.token_hex(4)}"
    db = PooledDatabase(test_db_url, max_connections=4, min_size=1, application_name=name)
    db.app_name = name
    yield db
    db.close_all()


@pytest.fixture
def table(monitor):
    """A table of the test database, dropped afterwards."""
    name = f"fault_{secrets.token_hex(4)}"
    with monitor.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (trial int NOT NULL)")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO kit_app")  # the pools run as kit_app
    yield name
    with monitor.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")


def terminate(monitor, pid: int) -> None:
    assert scalar(monitor, "SELECT pg_terminate_backend(%s)", (pid,)) is True



@observes_server_sessions
def test_a_checkout_right_after_the_server_ended_the_session_never_fails(pool, monitor, table):
    errors = []
    for trial in range(TRIALS):
        with pool.connection_context():
            victim = backend_pid(pool)
        terminate(monitor, victim)
        try:
            with pool.connection_context():  # at once: the backend may still be on its way out
                if trial % 2:
                    pool.execute_sql(f"INSERT INTO {table} VALUES (%s)", (trial,))
                else:
                    assert pool.execute_sql("SELECT 1").fetchone()[0] == 1
                assert backend_pid(pool) != victim
        except Exception as exc:  # collected, so the count of failures is what the assertion shows
            errors.append(f"trial {trial}: {type(exc).__name__}: {exc}")
    assert errors == []
    with monitor.cursor() as cur:
        cur.execute(f"SELECT trial, count(*) FROM {table} GROUP BY trial HAVING count(*) > 1")
        assert cur.fetchall() == [], "a statement was run twice"
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == TRIALS // 2
    stats = pool.pool_stats()
    assert stats["closed"] >= TRIALS  # every killed connection was dropped, found at checkout or on use


@observes_server_sessions
def test_a_kept_connection_without_session_state_survives_a_kill_just_before_its_statement(pool, monitor, caplog):
    backend_pid(pool)  # autoconnect: this thread keeps its connection
    caplog.set_level("INFO", logger="kit.db")
    for _ in range(50):
        victim = backend_pid(pool)
        terminate(monitor, victim)
        assert backend_pid(pool) != victim  # at once, no sleep, no error
    pool.close()
    resent = [r for r in caplog.records if r.name == "kit.db" and r.getMessage().startswith("statement re-sent")]
    assert len(resent) == pool.pool_stats()["resent"] > 0  # each re-send is one log line an operator can see


def test_a_statement_the_server_was_running_is_not_resent(pool, monitor):
    pool.execute_sql("SELECT 1")
    victim = backend_pid(pool)
    threading.Timer(0.4, terminate, (monitor, victim)).start()
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        pool.execute_sql("SELECT pg_sleep(3)")
    assert time.monotonic() - started < 2.5  # not run a second time
    assert "server closed the connection" in str(caught.value)
    assert pool.pool_stats()["resent"] == 0
    assert backend_pid(pool) != victim  # the dead connection is replaced at the next statement
    pool.close()


def test_nothing_inside_a_transaction_is_resent(pool, monitor, table):
    with pytest.raises(OperationalError):
        with pool.atomic():
            pool.execute_sql(f"INSERT INTO {table} VALUES (1)")
            terminate(monitor, backend_pid(pool))
            time.sleep(0.05)
            pool.execute_sql(f"INSERT INTO {table} VALUES (2)")
    assert scalar(monitor, f"SELECT count(*) FROM {table}") == 0
    assert pool.pool_stats()["resent"] == 0
    pool.close()
    with pool.connection_context():  # the pool recovers: the next checkout is a live connection
        assert pool.execute_sql("SELECT 1").fetchone()[0] == 1


SESSION_STATE = [
    ("SELECT pg_advisory_lock(4242)", "advisory locks"),
    ("SET statement_timeout = 1234", "settings (SET)"),
    ("SELECT set_config('work_mem', '77MB', false)", "settings (set_config)"),
    ("CREATE TEMP TABLE scratch (n int)", "temporary tables"),
    ("LISTEN kit_channel", "LISTEN registrations"),
    ("PREPARE kit_stmt AS SELECT 1", "prepared statements"),
]


@observes_server_sessions
@pytest.mark.parametrize(("statement", "kind"), SESSION_STATE)
@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["backend-gone", "backend-exiting"])
def test_session_state_lost_with_its_connection_is_an_error_naming_it(pool, monitor, statement, kind, pause):
    pool.execute_sql(statement)  # this thread keeps the connection and its state
    victim = backend_pid(pool)
    terminate(monitor, victim)
    time.sleep(pause)
    with pytest.raises(SessionLost) as caught:
        pool.execute_sql("SELECT 1")
    assert kind in str(caught.value) and "nothing was re-sent" in str(caught.value)
    assert isinstance(caught.value, OperationalError)
    # Told once; the next statement runs on a new connection with none of the old state.
    assert backend_pid(pool) != victim
    assert pool.execute_sql("SHOW statement_timeout").fetchone()[0] == "0"
    assert scalar(monitor, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    pool.close()


@observes_server_sessions
def test_state_set_on_the_driver_connection_counts_as_session_state(pool, monitor):
    with pool.connection().cursor() as cur:
        cur.execute("SET search_path TO nowhere")
    terminate(monitor, backend_pid(pool))
    with pytest.raises(SessionLost, match="driver connection"):
        pool.execute_sql("SELECT 1")
    pool.close()


@observes_server_sessions
def test_a_lost_session_is_found_at_begin(pool, monitor):
    pool.execute_sql("SELECT pg_advisory_lock(4343)")
    terminate(monitor, backend_pid(pool))
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0)
    with pytest.raises(SessionLost, match="advisory locks"):
        with pool.atomic():  # BEGIN is a statement like any other
            pytest.fail("the transaction must not start on a new connection without the lock")
    pool.close()


@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["backend-gone", "backend-exiting"])
def test_commit_after_the_connection_died_is_an_error_never_a_silent_success(pool, monitor, table, pause):
    with pytest.raises(SessionLost, match="COMMIT") as caught:
        with pool.atomic():
            pool.execute_sql(f"INSERT INTO {table} VALUES (1)")
            terminate(monitor, backend_pid(pool))
            time.sleep(pause)
    if pause:  # the session had ended before COMMIT was sent: the kit knows nothing was committed
        assert "lost before COMMIT" in str(caught.value) and "nothing of it was committed" in str(caught.value)
    else:
        assert "nothing of it was committed" in str(caught.value) or "outcome is unknown" in str(caught.value)
    assert scalar(monitor, f"SELECT count(*) FROM {table}") == 0
    assert pool.execute_sql("SELECT 1").fetchone()[0] == 1  # and the thread goes on with a new connection
    pool.close()


@observes_server_sessions
def test_a_transaction_begun_as_sql_is_session_state_too(pool, monitor, table):
    pool.execute_sql("BEGIN")
    pool.execute_sql(f"INSERT INTO {table} VALUES (1)")
    terminate(monitor, backend_pid(pool))
    time.sleep(0.05)
    with pytest.raises(SessionLost, match="an open transaction"):
        pool.execute_sql("COMMIT")
    assert scalar(monitor, f"SELECT count(*) FROM {table}") == 0
    pool.execute_sql("BEGIN")
    pool.execute_sql("COMMIT")  # ended cleanly: a later loss of a clean connection is recovered silently
    victim = backend_pid(pool)
    terminate(monitor, victim)
    time.sleep(0.05)
    assert backend_pid(pool) != victim
    pool.close()


def test_a_failed_statement_inside_a_transaction_is_the_error_the_caller_sees(pool, monitor, table):
    with pytest.raises(OperationalError, match="server closed the connection"):
        with pool.atomic():  # the rollback on the dead connection does not mask the statement's error
            terminate(monitor, backend_pid(pool))
            time.sleep(0.05)
            pool.execute_sql(f"INSERT INTO {table} VALUES (1)")
    pool.close()
