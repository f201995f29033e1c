"""The advisory lock that keeps migration runs from overlapping: one key, two scopes.

- `kit migrate` takes it per migration, transaction-scoped (`pg_advisory_xact_lock`): the lock ends
  with the transaction that applies the migration, so it can never outlive or silently lose what it
  protects (a connection that dies takes the transaction and the lock together), and it works behind
  a transaction-pooling PgBouncer.
- Plain `pw_migrate` (through `migrations/conf.py`) cannot be told to skip a migration another run
  applied, so it takes the same key for its whole run, session-scoped. Should that session die, the
  next statement raises `kit.db.SessionLost`: the run stops, it never goes on unlocked.

A session lock and a transaction lock on the same key exclude each other, so runs of either kind
apply each migration once.

**No wait is unbounded, and none is for a stranger.** Advisory locks need no privilege, so any role
may take the kit's keys. A run never blocks in the server on one: it tries, and while the key is held
it asks who holds it (`holder`). Held by a session of another role than the run's own (the
application's `kit_app` holding the migration key, say), nothing the kit runs will release it: the run
stops at once with `LockHeld` naming that session (pid, role, application, how long), and nothing of it
was done. Held by a run of the same role, it waits, saying so, at most `wait` seconds
(`LOCK_WAIT_S`, an hour: longer than any migration or upkeep should take), then stops the same way.

Behind a transaction-pooling PgBouncer a session lock means nothing (the next statement may run on
another server connection, and the lock stays behind on the first). There, a lock that must span
many transactions (plain `pw_migrate`'s run, `kit maintain`) is `hold_lock`: a transaction-scoped lock
taken on a connection of its own whose transaction stays open, idle, while the work goes on (PgBouncer
keeps a server connection for a client while its transaction is open). An idle transaction holds no
snapshot, so CREATE INDEX CONCURRENTLY elsewhere does not wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from peewee import Database

from kit.ddl import side_connection
from kit.errors import (
    LockHeld,
    MigrationError,
    SessionLost,
    describe,
)

LOCK_KEY = 0x6B69745F6D6967  # "kit_mig"
LOCK_WAIT_S = 3600.0  # the longest a run waits for another run of its own role
POLL_S = 0.2  # how often a waiting run tries again

# Who holds advisory lock `key`: pid, role, application, seconds held (the owner reads other roles'
# sessions through pg_read_all_stats); and whether that role is the asking session's own (a holder the
# server no longer lists in pg_stat_activity is a session ending, whose locks go with it: waited for).
_HOLDER_SQL = """
SELECT l.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, ''),
       coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)), 0)::float8,
       coalesce(a.usename = current_user, true)  -- a session no longer listed is ending: wait, it lets go
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.pid <> pg_backend_pid()
LIMIT 1
"""


def holder_sentence(row: Any) -> str:
    """A lock holder as the messages name it."""
    pid, role, application, seconds, _ = row
    shown = f", application {application!r}" if application else ""
    return f"server pid {pid} (role {role}{shown}, for {seconds:,.0f} s)"


def wait_rule(row: Any, what: str, waited: float, wait: float) -> str | None:
    """Why a run must stop waiting for a lock `row` holds (None: go on waiting): a stranger, or too long."""
    if row is None:
        return None
    if not row[4]:
        return (f"the lock of {what} is held by {holder_sentence(row)}, which is not a run of the kit's commands "
                f"(they connect as the owner), so nothing will release it; nothing was done: end that session "
                f"(SELECT pg_terminate_backend({row[0]})) and run again")
    if waited >= wait:
        return (f"gave up waiting for {what} after {waited:,.0f} s: it is held by {holder_sentence(row)}; "
                "nothing was done: run again once it has finished, or end that session")
    return None


def take_advisory_lock(database: Database, key: int, scope: str, what: str, say: Callable[[str], None],
                       poll: float = POLL_S, wait: float = LOCK_WAIT_S) -> None:
    """Take advisory lock `key` ("" session, "_xact" transaction scope), saying "waiting for `what`" if held.

    It waits by trying again every `poll` seconds, never in one blocking statement: a session blocked
    in a statement holds a transaction open, which CREATE INDEX CONCURRENTLY in the lock holder's
    session would wait for (a deadlock), and a wait must stay bounded (`wait_rule`).
    """
    try_sql = f"SELECT pg_try_advisory{scope}_lock(%s)"
    began, said = time.monotonic(), False
    while not database.execute_sql(try_sql, (key,)).fetchone()[0]:
        said = _keep_waiting(database.execute_sql(_HOLDER_SQL, (key,)).fetchone(), what, began, wait, said, say)
        time.sleep(poll)


def _keep_waiting(row: Any, what: str, began: float, wait: float, said: bool, say: Callable[[str], None]) -> bool:
    """Raise LockHeld where `wait_rule` says to stop; else say once who is waited for. Whether it was said."""
    stop = wait_rule(row, what, time.monotonic() - began, wait)
    if stop is not None:
        raise LockHeld(stop, holder=holder_sentence(row))
    if not said and row is not None:
        say(f"waiting for {what} to finish ({holder_sentence(row)})")
        return True
    return said


def _take(database: Database, scope: str, say: Callable[[str], None]) -> None:
    take_advisory_lock(database, LOCK_KEY, scope, "another migration run", say)


def wait_for_lock(database: Database, say: Callable[[str], None] = print, poll: float = POLL_S,
                  wait: float = LOCK_WAIT_S) -> None:
    """Wait, outside any transaction, until no other run holds the migration lock (saying so once).

    Called before the transaction that takes the lock (`lock_transaction`): a run that waited inside
    its transaction would hold it open, and CREATE INDEX CONCURRENTLY in the holder's steps waits for
    every open transaction, so each would wait for the other until a lock timeout. Inside a transaction
    already, it returns at once (`lock_transaction` then waits as before).
    """
    if database.in_transaction():
        return
    began, said = time.monotonic(), False
    while (row := database.execute_sql(_HOLDER_SQL, (LOCK_KEY,)).fetchone()) is not None:
        said = _keep_waiting(row, "another migration run", began, wait, said, say)
        time.sleep(poll)


@contextmanager
def locked(database: Database, say: Callable[[str], None] = print) -> Iterator[None]:
    """A transaction holding the migration lock: waited for outside any transaction, then taken in it."""
    wait_for_lock(database, say)
    with database.atomic():
        lock_transaction(database, say)
        yield


def lock_transaction(database: Database, say: Callable[[str], None] = print) -> None:
    """Take the migration lock until the current transaction ends (waiting, and saying so, if it is held)."""
    if not database.in_transaction():
        raise MigrationError("lock_transaction needs an open transaction (use database.atomic())")
    _take(database, "_xact", say)


def lock_session(database: Database, say: Callable[[str], None] = print) -> None:
    """Take the migration lock until this thread's connection closes (plain pw_migrate's whole run)."""
    _take(database, "", say)


def hold_lock(database: Database, key: int, what: str, say: Callable[[str], None], poll: float = 0.5,
              wait: float = LOCK_WAIT_S) -> Any:
    """Take advisory lock `key` in an open transaction of a connection of its own; close that connection to release.

    Waits (trying every `poll` seconds, outside any transaction between tries) and says "waiting for
    `what`" while another run holds it; stops with `LockHeld` as `wait_rule` says.
    """
    conn = side_connection(database, "kit-lock")
    try:
        said, began = False, time.monotonic()
        while True:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    return conn  # the transaction stays open: the lock with it
                cursor.execute(_HOLDER_SQL, (key,))
                row = cursor.fetchone()
            conn.rollback()
            said = _keep_waiting(row, what, began, wait, said, say)
            time.sleep(poll)
    except BaseException:
        conn.close()
        raise


def check_held(conn: Any, what: str) -> None:
    """Raise SessionLost when the connection holding a `hold_lock` lock is gone (the lock went with it)."""
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
    except psycopg2.Error as exc:
        first = describe(exc)
        raise SessionLost(f"the connection holding {what} was lost ({first}); the run stopped, "
                          "and what it had done so far stays done") from None
