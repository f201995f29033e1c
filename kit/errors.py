"""The errors the kit raises about settings, connections and the pool, in one place.

Every one derives from `KitError`: an error the kit reports to a person as one clear sentence, so a
caller (and the kit's own commands) can catch "anything the kit refused" in one clause. Connection
errors also derive from the peewee class code already catches (`OperationalError`, `ValueError`).
"""

from __future__ import annotations

from typing import Any

from peewee import DatabaseError, OperationalError, ProgrammingError
from playhouse.pool import MaxConnectionsExceeded

from kit.masking import mask_password


def describe(exc: BaseException) -> str:
    """An exception as one line for a message: its first line, every password masked (its type if it says nothing)."""
    text = str(exc).strip()
    return mask_password(text.splitlines()[0]) if text else type(exc).__name__


class KitError(Exception):
    """An error the kit reports to a person as one clear sentence (no traceback).

    What the sentence names is also there for code, as the attributes each class declares, given as
    keywords (`SessionLost(..., lost=frozenset({"advisory locks"}))`: `exc.lost`).
    """

    def __init__(self, *args: Any, **data: Any) -> None:
        unknown = sorted(name for name in data if name.startswith("_") or not hasattr(type(self), name))
        if unknown:  # a caller's mistake, as an unexpected keyword argument is in Python
            raise TypeError(f"{type(self).__name__} declares no attribute {', '.join(unknown)}")
        super().__init__(*args)
        self.__dict__.update(data)


class ConfigError(KitError):
    """A setting in the environment is missing, malformed or inconsistent."""


class PoolSettingError(KitError, ValueError):
    """A pool argument is out of range (a negative size, MIN above MAX, a timeout that is not a number)."""


class PoolExhausted(KitError, MaxConnectionsExceeded):  # type: ignore[misc]  # playhouse ships no types
    """Every connection stayed checked out for the whole wait (peewee's `MaxConnectionsExceeded`)."""

    pool_full: bool = False  # True: refused at once, every connection in use (a replica's pool)


class PoolTooLarge(KitError):
    """`min_size` is more connections than the server allows this role."""


class DatabaseUnavailable(KitError, OperationalError):
    """The database could not be reached, or the connection to it was lost: the one family a handler maps to 503.

    Raised for a server that refuses or does not answer connections (stopped, restarting, recovering,
    out of slots) and, as `SessionLost`, for a connection lost under a statement or a transaction.
    Never a raw driver error: whatever path found the outage, sync or asyncio, it is this family.
    """

    url: str | None = None  # password masked, where the message names one


class SessionLost(DatabaseUnavailable):
    """The server ended a connection under a statement or a transaction; the message names what was lost.

    `lost` names the session state lost with it ("open transaction", "advisory locks", ...).
    `outcome_unknown` is True when what was sent may have taken effect (lost during COMMIT, or under a
    statement that had been running): check before doing it again. When it is False nothing was
    committed, and the work may be run again (`kit.retry_transaction` does so).
    """

    lost: frozenset[str] = frozenset()  # the kinds of session state lost ("advisory locks", ...)
    outcome_unknown: bool = False  # True: it may have been committed


class SessionStateRefused(KitError, OperationalError):
    """Behind a transaction-pooling PgBouncer: a statement that would leave session state on a shared connection."""


class StatementTimeout(KitError, OperationalError):
    """A statement ran past its time limit and was cancelled by the server; the message names the limit."""

    limit_ms: int | None = None  # the limit it ran past (None: the server's own)
    variable: str = "DATABASE_STATEMENT_TIMEOUT"  # the setting that sets it
    row: int | None = None  # for a COPY, the row it was writing, counted from 0 across the load


class CopyRowError(KitError, ValueError):
    """A row given to binary COPY cannot be written; the message names the row index and the column."""

    row: int | None = None  # the index of the row, counted from 0 across the load


class ArgumentError(KitError, ValueError):
    """An argument of a kit operation is of the wrong kind (an organization given as a slug, say)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of a kit operation is of the wrong type (also a `TypeError`, as Python raises for one)."""


class VectorValueError(KitError, ValueError):
    """A value cannot be stored in a vector column; the message names the column."""

    offset: int | None = None  # in a batch: the position of the value refused


class MigrationError(KitError):
    """A migration cannot be applied, verified or resolved; the message says which and what to do."""


class NotMigrated(KitError, ProgrammingError):
    """A statement found none of the kit's tables: the database was never migrated (or is not the one meant)."""


class EmbeddedServerError(KitError):
    """The embedded PostgreSQL server could not be found, started or stopped."""


class DecryptionError(KitError):
    """A value cannot be decrypted with the secrets at hand (another secret, or not Better Auth's format)."""


class NotFound(KitError, LookupError):
    """A row the caller named (by id or key) does not exist, or is not the tenant context's to see."""


class InvitationError(KitError):
    """An invitation cannot be accepted (expired, revoked, for another email, used by someone else)."""


class InvitationNotFound(InvitationError, NotFound):
    """The invitation (or the user accepting it) does not exist."""


class InsufficientCredits(KitError):
    """The organization's balance is lower than the amount asked for; nothing was taken."""


class FixtureError(KitError):
    """A fixture cannot be parsed, resolved or loaded; the message starts with `file:line: table.label.column:`."""

    file: object = None  # the fixture file (a Path), where one is to blame
    line: int | None = None
    path: str | None = None  # table.label.column


class TenantError(KitError, DatabaseError):
    """A statement would reach rows of an organization other than the tenant context's; nothing was written."""


class TenantRequired(TenantError):
    """A write to a tenant table was sent with no tenant context (`kit.tenant(org)`); nothing was sent."""


class LockBusy(KitError, OperationalError):
    """A schema change could not get its lock within the retry budget; nothing of it was done."""

    def __init__(self, what: str, attempts: int, waited: float, blockers: list[Any], policy: Any) -> None:
        self.what, self.attempts, self.waited, self.blockers = what, attempts, waited, blockers
        held = "; ".join(b.describe() for b in blockers) or "a session that ended before it could be named"
        super().__init__(
            f"{what}: gave up after {attempts} attempts over {waited:,.1f} s, each waiting at most "
            f"{policy.timeout:g} s (DATABASE_LOCK_TIMEOUT) for a lock held by {held}; nothing of it was done: "
            f"end that transaction, or run it again when traffic is lower (DATABASE_LOCK_BUDGET)")


class LockHeld(KitError, OperationalError):
    """One of the kit's own locks (migrations, upkeep) is held by a session that is not a kit run, or too long."""

    holder: str | None = None  # the session holding it, as the sentence names it


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error, looked for through peewee's wrapping and the exception's causes."""
    seen = 0
    while exc is not None and seen < 8:
        code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__  # peewee keeps the driver's as `orig`
        seen += 1
    return None


class NotCitus(KitError):
    """`kit db distribute` was pointed at a server without Citus; nothing was done."""


class PlacementRefused(KitError):
    """Citus refused to place a table; the tables placed before it stay placed, nothing of it changed."""
