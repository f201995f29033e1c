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

Behind a transaction-pooling PgBouncer a session lock means nothing (the next statement may run on
another server connection, and the lock stays behind on the first). There, a lock that must span
many transactions (plain `pw_migrate`'s run, `kit maintain`) is `hold_lock`: a transaction-scoped lock
taken on a connection of its own whose transaction stays open, idle, while the work goes on (PgBouncer
keeps a server connection for a client while its transaction is open). An idle transaction holds no
snapshot, so CREATE INDEX CONCURRENTLY elsewhere does not wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg2
from peewee import Database

from kit.ddl import side_connection
from kit.errors import (
    SessionLost,
    describe,
)

LOCK_KEY = 0x6B69745F6D6967  # "kit_mig"

_HOLDER_SQL = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND ((classid::bigint << 32) | objid::bigint) = %s LIMIT 1"
)


def take_advisory_lock(database: Database, key: int, scope: str, what: str, say: Callable[[str], None],
                       poll: float | None = None) -> None:
    """Take advisory lock `key` ("" session, "_xact" transaction scope), saying "waiting for `what`" if held.

    With `poll` (seconds), wait by trying again at that interval instead of in one blocking statement:
    a session blocked in a statement holds a transaction open, which CREATE INDEX CONCURRENTLY in the
    lock holder's session would wait for (a deadlock).
    """
    try_sql = f"SELECT pg_try_advisory{scope}_lock(%s)"
    if database.execute_sql(try_sql, (key,)).fetchone()[0]:
        return
    holder = database.execute_sql(_HOLDER_SQL, (key,)).fetchone()
    say(f"waiting for {what} to finish (server pid {holder[0] if holder else '?'})")
    if poll is None:
        database.execute_sql(f"SELECT pg_advisory{scope}_lock(%s)", (key,))
        return
    while not database.execute_sql(try_sql, (key,)).fetchone()[0]:
        time.sleep(poll)


def _take(database: Database, scope: str, say: Callable[[str], None]) -> None:
    take_advisory_lock(database, LOCK_KEY, scope, "another migration run", say)


def lock_transaction(database: Database, say: Callable[[str], None] = print) -> None:
    """Take the migration lock until the current transaction ends (waiting, and saying so, if it is held)."""
    if not database.in_transaction():
        raise RuntimeError("lock_transaction needs an open transaction (use database.atomic())")
    _take(database, "_xact", say)


def lock_session(database: Database, say: Callable[[str], None] = print) -> None:
    """Take the migration lock until this thread's connection closes (plain pw_migrate's whole run)."""
    _take(database, "", say)


def hold_lock(database: Database, key: int, what: str, say: Callable[[str], None], poll: float = 0.5) -> Any:
    """Take advisory lock `key` in an open transaction of a connection of its own; close that connection to release.

    Waits (trying every `poll` seconds, outside any transaction between tries) and says "waiting for
    `what`" while another holds it.
    """
    conn = side_connection(database, "kit-lock")
    try:
        said = False
        while True:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    return conn  # the transaction stays open: the lock with it
                if not said:
                    cursor.execute(_HOLDER_SQL, (key,))
                    holder = cursor.fetchone()
                    say(f"waiting for {what} to finish (server pid {holder[0] if holder else '?'})")
                    said = True
            conn.rollback()
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
