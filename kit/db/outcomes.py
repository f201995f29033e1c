"""What a failed statement means for its caller: an outage, or one the whole transaction may be run again after.

Pure rules on an exception (from psycopg2 through peewee, or from asyncpg), shared by the sync pool
and the asyncio database, so that one outage reads the same whichever path met it.

**An outage** is a failure that says nothing about the statement and everything about the server
or the link: the connection is gone, or the server refuses work for now. Its SQLSTATE classes are
08 (connection exception) and 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now); a
driver error with no SQLSTATE on a connection now closed is one too. The kit raises every outage as
the `DatabaseUnavailable` family (`SessionLost` where a statement or a transaction was in flight),
never as a raw driver error, so a web handler maps one family to 503.

**A transaction may be run again** (`retryable`) only when nothing of it can have been committed:

- `SessionLost` with `outcome_unknown` False: the connection was lost before COMMIT was sent (or
  under a statement inside the transaction); the server rolled it back.
- `DatabaseUnavailable` that is not `SessionLost`: no connection was had, so nothing was sent.
- SQLSTATE 40001 (serialization failure) and 40P01 (deadlock detected): the server rolled the
  transaction back and asks for it to be run again.

Never again: a loss during COMMIT (`outcome_unknown`), a statement time limit, a constraint
violation, or anything else. Those are the caller's to decide.
"""

from __future__ import annotations

from kit.errors import DatabaseUnavailable, SessionLost, sqlstate

OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03"})  # admin shutdown, crash shutdown, cannot connect now
RUN_AGAIN_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected


def is_outage(exc: BaseException, connection_closed: bool) -> bool:
    """True when a failure is the server or the link going away, not something about the statement."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    code = sqlstate(exc)
    if code is None:
        return connection_closed
    return code.startswith("08") or code in OUTAGE_STATES


def retryable(exc: BaseException) -> bool:
    """True when a failed transaction cannot have committed anything and may be run again as a whole."""
    if isinstance(exc, SessionLost):
        return not exc.outcome_unknown
    if isinstance(exc, DatabaseUnavailable):
        return True
    return sqlstate(exc) in RUN_AGAIN_STATES
