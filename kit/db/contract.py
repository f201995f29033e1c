"""The statement contract both databases keep: what rides before a statement, and a failure in the kit's words.

The sync pool (`kit.db.pooled`, psycopg2) and the asyncio database (`kit.aio`, asyncpg) differ only in
how they send text and what their driver reports; every rule about *what* is sent and *what a failure
means* is here, once, and each engine calls it:

**What rides before a statement**, in the same round trip and the same transaction:

- `riding(sql)`: kit-made settings for the statements of a block (a search's own time limit and
  index settings), sent before each of them: never part of the statement's text, so a span is named
  after the statement, and the caller's text is the caller's alone;
- the time limit, as a SET LOCAL, only where the connection's startup default cannot hold it
  (behind a transaction-pooling PgBouncer): with a statement that is its own transaction, and with
  the BEGIN of a transaction. The asyncio database sends it only with other settings riding: on its
  own it would cost a transaction of three round trips per statement, and asyncpg's own
  `command_timeout` already bounds every statement there;
- the tenant (`kit.tenancy.statement_prefix`): with every statement that is its own transaction
  inside `kit.tenant(org)`, and, inside a transaction, with every statement from the first one that
  carried a tenant on (`tenant_rides`): leaving a block, or a savepoint rolled back, never leaves
  another tenant's setting in force for the rest of the transaction.

**On Citus** (`citus`, read from the server's catalog on a database's first connection) what rides
cannot share the statement's string: Citus passes to the workers only SET LOCAL, and with it the
whole string it came in, which must then hold no query of a distributed table. So there the
settings are a statement of their own (`carried`), inside the statement's transaction, opened for
it when it has none (`begin_with`): Citus sends that string to every node the transaction uses,
now or later, where it runs again in the worker's own transaction. The tenant's binding then holds
on every node as on one server: each node stamps the tenant with its own transaction's start.

**One statement per string outside a transaction.** Several statements sent as one string run as one
implicit transaction, in which a `SET LOCAL statement_timeout = 0` of the string's own lifts the
limit for the rest of it. Outside a transaction, with a statement limit, such a string is refused
(`several_statements`); inside `database.atomic()` the caller's SET LOCAL decides, as documented.

**A failure in the kit's words**: the sentences below, each written once, with the class that carries it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from kit.db.clean import code_of, statement_count
from kit.db.statements import NO_TRANSACTION_BLOCK, OPEN_TRANSACTION, POOLER_REFUSES
from kit.errors import (
    ArgumentError,
    DatabaseUnavailable,
    KitError,
    PoolExhausted,
    SessionLost,
    SessionStateRefused,
    StatementTimeout,
    TenantError,
    describe,
    sqlstate,
)
from kit.tenancy import current_tenant, statement_prefix

_riding: ContextVar[str] = ContextVar("kit_riding_settings", default="")


@contextmanager
def riding(settings: str) -> Iterator[None]:
    """Send `settings` (kit-made `SET LOCAL ...;` statements) before each statement of the block."""
    token = _riding.set(_riding.get() + settings)
    try:
        yield
    finally:
        _riding.reset(token)


def riding_settings() -> str:
    """The settings riding with this context's statements ('' for none)."""
    return _riding.get()


def limit_sql(limit_ms: int | None) -> str:
    """The time limit as a SET LOCAL ('' for none)."""
    return f"SET LOCAL statement_timeout = {limit_ms};" if limit_ms else ""


def alone_prefix(sql: str, tenant: uuid.UUID | None, limit_ms: int | None) -> str:
    """What rides before a statement that is its own transaction: its limit, the riding settings, its tenant."""
    if NO_TRANSACTION_BLOCK.match(sql):
        return ""  # with a prefix it would be in a transaction block, which such a statement refuses
    return limit_sql(limit_ms) + _riding.get() + (statement_prefix(tenant) if tenant is not None else "")


CITUS_SQL = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')"
# What makes Citus pass a settings statement on: its SET LOCAL propagation, and one SET LOCAL of a
# setting it passes (`kit.carried`, read by nothing); the string then runs on every node it reaches.
CARRIER = "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL kit.carried = 'on';"


def carried(settings: str, citus: bool) -> str:
    """`settings` as sent in a statement of their own: on Citus, in the form Citus passes to every node."""
    return CARRIER + settings if citus else settings


def begin_with(settings: str, citus: bool) -> tuple[str, ...]:
    """The round trips that open a transaction carrying `settings` (on Citus BEGIN alone, so no node sees it twice)."""
    return ("BEGIN", carried(settings, citus)) if citus else ("BEGIN;" + settings,)


def tenant_rides(tenant: uuid.UUID | None, used: bool) -> tuple[str, bool]:
    """Inside a transaction: the tenant's part of a statement's prefix, and whether the transaction has carried one.

    From the first statement that carries a tenant on, every statement of the transaction carries the
    context's, or clears it (no tenant): the setting is then always the current context's.
    """
    if tenant is None and not used:
        return "", False
    return statement_prefix(tenant), True


def pooler_refuses(kind: str, sql: str, pooler: str | None, in_transaction: bool) -> SessionStateRefused | None:
    """The refusal of a statement leaving `kind` of session state on a server connection a pooler shares (None: send).

    Behind a transaction-pooling PgBouncer no reset runs between clients: what the kit recognises as
    outliving the transaction is refused before it is sent (a temporary table ON COMMIT DROP inside a
    transaction is not). What it does not recognise is covered by construction: the tenant is bound to
    its transaction, and every statement is bounded (the sync pool sends the limit with each one; the
    asyncio database has asyncpg's own `command_timeout`).
    """
    if not pooler or kind not in POOLER_REFUSES:
        return None
    if kind == "temporary tables" and in_transaction and re.search(r"on\s+commit\s+drop", code_of(sql) or "", re.I):
        return None  # read in the code only: a comment or a literal saying ON COMMIT DROP drops nothing
    return SessionStateRefused(
        f"{kind} would outlive the transaction on a server connection PgBouncer shares with other clients "
        f"(DATABASE_POOLER={pooler}, transaction pooling); use {POOLER_REFUSES[kind]}, or connect to the server "
        "directly; nothing was sent")


def several_statements(sql: str, limit_ms: int | None) -> ArgumentError | None:
    """The refusal of a string of several statements outside a transaction under a time limit (None: send it)."""
    if not limit_ms or statement_count(sql) <= 1:
        return None
    return ArgumentError(
        f"{statement_count(sql)} statements in one string outside a transaction run as one implicit transaction, in "
        "which their own SET LOCAL could lift the time limit (DATABASE_STATEMENT_TIMEOUT): send them one at a "
        "time, or inside database.atomic(); nothing was sent")


# -- a failure in the kit's words ----------------------------------------------------------------


def cannot_connect(where: str, exc: BaseException) -> DatabaseUnavailable:
    """No connection could be had (`where`: the URL, password masked): nothing was sent."""
    return DatabaseUnavailable(f"could not connect to the database at {where}: {describe(exc)}", url=where)


def pool_exhausted(exc: BaseException, max_size: int | None, timeout_ms: int) -> PoolExhausted:
    """Every connection stayed in use for the whole wait, in the settings' own words."""
    return PoolExhausted(f"{exc} (DATABASE_POOL_MAX={max_size}, DATABASE_POOL_TIMEOUT={timeout_ms} ms)")



def timed_out(limit_ms: int | None) -> StatementTimeout:
    """A statement cancelled by its time limit."""
    limit = f"{limit_ms:,} ms" if limit_ms else "the server's"
    return StatementTimeout(f"the statement ran past its time limit ({limit}, DATABASE_STATEMENT_TIMEOUT) and the "
                            "server cancelled it; nothing of it was committed", limit_ms=limit_ms)


def not_the_tenant_s(table: str, tenant: uuid.UUID | None) -> TenantError:
    """A write the tenant policies refused."""
    context = f"kit.tenant({tenant})" if tenant else "no kit.tenant(org) is set"
    return TenantError(f"{table}: the row does not belong to the tenant context's organization ({context}); "
                       "nothing was written")


def lost_in_transaction(exc: BaseException | None) -> SessionLost:
    """The connection was lost under a statement inside a transaction: the server rolled it back."""
    said = f" ({describe(exc)})" if exc is not None else ""
    return SessionLost(f"the database connection was lost inside a transaction{said}; the server rolled it back, "
                       "so nothing of it was committed", lost=frozenset({OPEN_TRANSACTION}))


def lost_while_running(exc: BaseException) -> SessionLost:
    """The connection was lost under a statement that was its own transaction and may have run."""
    return SessionLost(f"the database connection was lost while the statement ran ({describe(exc)}); it may have "
                       "taken effect: check before sending it again", outcome_unknown=True)


def lost_at_begin(exc: BaseException) -> SessionLost:
    """The connection was lost when a transaction began: nothing of it was sent."""
    return SessionLost(f"the database connection was lost at BEGIN ({describe(exc)}); nothing of the transaction "
                       "was sent")


def lost_before_commit() -> SessionLost:
    """The connection was found lost before COMMIT was sent."""
    return SessionLost("the database connection was lost before COMMIT; the server rolled the transaction back, so "
                       "nothing of it was committed", lost=frozenset({OPEN_TRANSACTION}))


def ended_at_commit(exc: BaseException) -> SessionLost:
    """The server ended the session at COMMIT, before committing (told to end, or the driver never sent it)."""
    return SessionLost(f"the database connection was lost at COMMIT ({describe(exc)}); the server ended the session "
                       "before committing, so nothing of it was committed", lost=frozenset({OPEN_TRANSACTION}))


def lost_during_commit(exc: BaseException) -> SessionLost:
    """The connection was lost while COMMIT was under way: its outcome is unknown."""
    return SessionLost(f"the database connection was lost during COMMIT ({describe(exc)}); if the server ended the "
                       "session (stopped, killed it) nothing was committed, after a crash or a network failure the "
                       "outcome is unknown: check before doing it again", outcome_unknown=True)


def lost_with_state(lost: frozenset[str] | set[str], cause: BaseException | None) -> SessionLost:
    """A connection that held session state was lost: nothing is re-sent without it."""
    said = f" ({describe(cause)})" if cause is not None else ""
    return SessionLost(f"the database connection was lost{said} and with it this session's "
                       f"{', '.join(sorted(lost))}; nothing was re-sent: set that state up again on the next "
                       "statement's new connection", lost=frozenset(lost))


TIMED_OUT = "canceling statement due to statement timeout"  # the server's words for SQLSTATE 57014 by the limit
RLS_VIOLATION = re.compile(r'violates row-level security policy (?:\(USING expression\) )?for table "([^"]+)"')


def in_kit_words(exc: BaseException, *, limit_ms: int | None, in_transaction: bool, outage: bool,
                 timed_out_by_driver: bool = False) -> BaseException | None:
    """The kit's error for a failed statement, from what the engine found (None: raise the failure as it is).

    `outage`: the engine's driver reports the connection gone or the server refusing work
    (`kit.db.outcomes.is_outage`); `timed_out_by_driver`: the driver's own limit ran out (asyncpg's).
    """
    if isinstance(exc, KitError):
        return None
    text = str(exc)
    code = sqlstate(exc)
    if timed_out_by_driver or (code == "57014" and TIMED_OUT in text):
        return timed_out(limit_ms)
    violated = RLS_VIOLATION.search(text) if code == "42501" else None
    if violated:
        return not_the_tenant_s(violated[1], current_tenant())
    if outage:
        return lost_in_transaction(exc) if in_transaction else lost_while_running(exc)
    return None
