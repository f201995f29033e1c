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
"""

from __future__ import annotations

import time
from collections.abc import Callable

from peewee import Database

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
