"""The pooled database: `PooledDatabase` (peewee's contract on the kit's pool) and `database`, the one every model uses.

`from kit.db import database`. Nothing connects at import. The first query reads the settings
(`kit.config`), starts or reuses the embedded server when DATABASE_URL is unset, and opens the pool.

`PooledDatabase` keeps playhouse's `PooledPostgresqlExtDatabase` contract: the arguments
`max_connections`, `stale_timeout` and `timeout` (None: fail at once when full; 0: wait without end;
n: seconds), `init()` changing them, `close_idle`, `close_stale`, `close_all`, `manual_close`,
`dispose()` in a forked child, the `_is_closed` / `_can_reuse` hooks a subclass may override, and the
oldest connection reused first. The kit adds `min_size`, `max_idle`, `check_after` (see `kit.pool`) and:

**Dead connections.** Every checkout asks `_is_closed`, which here asks only the driver (no system
call, no round trip: a busy pool pays nothing), and a connection idle for `check_after` seconds is
pinged with a round trip. The server can end a session at any moment (`pg_terminate_backend`, a
restart, an idle timeout, a pooler closing idle links) and nothing short of a round trip can tell;
so the first statement sent on such a connection finds out, and is re-sent by these rules.

**A statement is re-sent only when it cannot have taken effect**, once, on a new connection, when all
hold:

1. it is outside a transaction (peewee's and the driver's: the connection was idle when it was sent);
2. the connection holds no session state (else `SessionLost`, below);
3. the driver reports the connection closed with no result for the statement (libpq's "server closed
   the connection unexpectedly", or "connection already closed" before anything was sent);
4. that failure came back within `RESEND_WINDOW` (50 ms) of sending.

Why that proves it had no effect: PostgreSQL ends a session only at an interrupt check. A statement
read by a session already told to end is never started (the check right after reading comes first);
one that was running is aborted with its transaction (the check is never between a commit and its
reply, which is flushed before the next check), so its changes are rolled back. Rule 4 keeps a
statement that was running for a while (a long query killed mid-run) from being run again: that
failure is raised, not re-sent, even though it committed nothing. Raised unchanged as well: every
other error (a statement timeout, a deadlock, a FATAL with a result) and every failure inside a
transaction. libpq reports a session ended before the statement arrived and one ended while it ran in
the same words, which is why rule 4 exists. What the kit does not promise: a crash, or a network
that drops the link, after a statement committed and within 50 ms of sending it, also looks the
same. After a crash the server refuses connections while it recovers, so that re-send fails and the
error is raised; a link dropped by the network in those 50 ms is the one case in which a statement
outside a transaction can run twice. `pool_stats()["resent"]` counts the statements re-sent.

**Session state is never lost silently.** A connection that holds session state (SET, set_config,
advisory locks, LISTEN, PREPARE, DECLARE, temporary tables, LOAD, or anything done on the driver
connection itself) and turns out dead raises `SessionLost` naming what was lost, on the next statement,
once; it is not replaced under the caller. The statement after that runs on a new connection.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg2
import psycopg2.extensions
from peewee import (
    DatabaseError,
    Delete,
    Insert,
    InterfaceError,
    OperationalError,
    SelectBase,
    Update,
    __exception_wrapper__,
    _ConnectionLocal,
)
from playhouse.postgres_ext import PostgresqlExtDatabase

from kit import embedded
from kit.config import Settings, check_database_url, load_settings, mask_password
from kit.errors import (
    ConfigError,
    DatabaseUnavailable,
    KitError,
    PoolExhausted,
    PoolSettingError,
    PoolTooLarge,
    SessionLost,
    SessionStateRefused,
    StatementTimeout,
    TenantError,
    TenantRequired,
)
from kit.pool import ConnectionPool, Hooks
from kit.roles import APP, OWNER
from kit.routing import Replica, Router, lsn_int, lsn_text
from kit.tenancy import crossing_tenants, current_tenant, on_leaving_all_tenants, statement_prefix

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "PoolExhausted",
    "PoolSettingError",
    "PoolTooLarge",
    "PooledDatabase",
    "SessionLost",
    "database",
    "resolve_url",
]

APPLICATION_NAME = "kit"
CONNECT_TIMEOUT_S = 10
DOOR_POOL_MAX = 4  # owner connections `all_tenants()` may hold at once: a door for rare work, not a second pool
REPLICA_CONNECT_TIMEOUT_S = 3  # a replica that does not answer is skipped soon, and the primary serves

CONNECTION_BUDGET_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
       r.rolconnlimit, r.rolname
FROM pg_roles r WHERE r.rolname = current_user
"""

# Statements that leave session state behind, by what they leave. SET LOCAL, SET TRANSACTION,
# SET CONSTRAINTS and pg_advisory_xact_lock end with the transaction.
_SESSION_STATEMENTS = [
    (re.compile(r"\s*(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b)", re.I), "settings (SET)"),
    (re.compile(r"\s*listen\b", re.I), "LISTEN registrations"),
    (re.compile(r"\s*prepare\b", re.I), "prepared statements"),
    (re.compile(r"\s*declare\b", re.I), "cursors"),
    (re.compile(r"\s*create\s+(?:(?:global|local)\s+)?temp", re.I), "temporary tables"),
    (re.compile(r"\s*load\b", re.I), "loaded libraries"),
]
_SESSION_STATEMENT = re.compile(
    r"\s*(?:set|reset|listen|prepare|declare|create|load|begin|start|commit|end|rollback|abort)\b", re.I)
_RAW_BEGIN = re.compile(r"\s*(?:begin|start\s+transaction)\b", re.I)
_RAW_END = re.compile(r"\s*(?:commit|end|abort|rollback(?!\s+to\b))\b(?!\s+prepared)", re.I)
RAW_BEGIN, RAW_END = "BEGIN", "END"  # what session_change returns for transaction control sent as SQL
OPEN_TRANSACTION = "an open transaction (nothing of it was committed)"
_SESSION_FUNCTIONS = [("advisory_lock", "advisory locks"), ("ADVISORY_LOCK", "advisory locks"),
                      ("set_config", "settings (set_config)"), ("SET_CONFIG", "settings (set_config)")]
DRIVER_USE = "whatever was done on the driver connection directly"
# What a statement leaves on a server connection that a transaction-pooling PgBouncer shares with other
# clients once the transaction ends (cursors end with it; set_config may be local, so it is let through).
POOLER_REFUSES = {"settings (SET)": "SET LOCAL inside database.atomic()",
                  "LISTEN registrations": "a direct connection to the server for LISTEN",
                  "prepared statements": "plain statements",
                  "temporary tables": "CREATE TEMP TABLE ... ON COMMIT DROP inside database.atomic()",
                  "loaded libraries": "a direct connection to the server",
                  "advisory locks": "pg_advisory_xact_lock inside database.atomic()"}
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
# Statements PostgreSQL runs only outside a transaction block: no tenant setting rides before them.
_NO_TRANSACTION_BLOCK = re.compile(r"\s*(?:vacuum|discard\s+all|create\s+database|drop\s+database|alter\s+system|"
                                   r"(?:create|drop)\s+tablespace|reindex\s+(?:system|database)|"
                                   r"(?:create\s+(?:unique\s+)?|drop\s+|reindex\s+)\S*\s*(?:index\s+)?concurrently)\b",
                                   re.I)
_TIMED_OUT = "canceling statement due to statement timeout"
_RLS_VIOLATION = re.compile(r'violates row-level security policy (?:\(USING expression\) )?for table "([^"]+)"')
RESEND_WINDOW = 0.050  # seconds: a statement that failed later than this after sending may have been running;
# wide enough for a loaded machine to notice a dead socket late (10 ms failed 1 in 1,200 kills under load)


def session_change(sql: str) -> str | None:
    """What session state `sql` may leave behind (e.g. "advisory locks"), or None (cheap even for long SQL)."""
    if _SESSION_STATEMENT.match(sql) is not None:
        if _RAW_BEGIN.match(sql):
            return RAW_BEGIN
        if _RAW_END.match(sql):
            return RAW_END
        for pattern, kind in _SESSION_STATEMENTS:
            if pattern.match(sql):
                return kind
    for needle, kind in _SESSION_FUNCTIONS:
        if needle in sql:
            return kind
    return None


def _socket_readable(conn: Any) -> bool:
    """True when the server sent something (or closed) while the connection sat idle."""
    try:
        return bool(select.select((conn,), (), (), 0)[0])
    except (OSError, ValueError, psycopg2.Error):  # a closed connection has no usable socket
        return True


def _ended_by_server(exc: Exception, conn: Any) -> bool:
    """True when a statement failed on a session the server had already ended (rule 3 in the docstring)."""
    return bool(conn.closed) and exc.pgcode is None and isinstance(exc, (psycopg2.OperationalError,
                                                                         psycopg2.InterfaceError))


def _succeeds(conn: Any, sql: str) -> bool:
    """Run `sql` on a driver connection; False instead of an error."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
        return True
    except psycopg2.Error:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return mask_password(text.splitlines()[0]) if text else type(exc).__name__


class _ThreadState(_ConnectionLocal):
    """peewee's per-thread connection state, plus whether a transaction was begun as SQL."""

    def reset(self) -> None:
        """Forget this thread's connection."""
        super().reset()
        self.raw_transaction = False  # BEGIN sent as SQL, not through peewee's atomic()
        self.tenant_used = False  # the open transaction has carried a tenant (`kit.tenancy`)


class PooledDatabase(PostgresqlExtDatabase):
    """A pooled PostgreSQL database (postgres_ext features, JSONB included) keeping peewee's pooled contract."""

    def __init__(
        self,
        database: str | None,
        max_connections: int | None = 20,
        stale_timeout: float | None = None,
        timeout: float | None = None,
        *,
        min_size: int = 0,
        max_size: int | None = None,
        max_idle: float | None = None,
        check_after: float = 30.0,
        pooler: str | None = None,
        statement_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._budget_checked = False
        self.statement_timeout = statement_timeout  # seconds each statement may run (None: the server's)
        self.pooler = pooler  # "pgbouncer": behind transaction pooling (session state refused, no reset)
        self._pool = ConnectionPool(self._hooks())
        self._pool.configure(min_size=min_size, max_size=_max_size(max_connections, max_size), timeout=timeout,
                             stale_timeout=stale_timeout, max_idle=max_idle, check_after=check_after)
        super().__init__(database, **kwargs)
        self._state = _ThreadState()
        _pools.add(self)

    def _hooks(self) -> Hooks:
        return Hooks(open=self._open_connection, close=self._close_raw, is_closed=self._is_closed,
                     ping=self._ping, can_reuse=self._can_reuse, reset=self._reset_session)

    def init(self, database: str | None, max_connections: int | None = None, stale_timeout: float | None = None,
             timeout: float | None = None, **kwargs: Any) -> None:
        """Point at `database` with `kwargs` for the driver; pool settings given change, the rest stay."""
        pool_settings = {name: kwargs.pop(name) for name in ("min_size", "max_size", "max_idle", "check_after")
                         if name in kwargs}
        before = (getattr(self, "pooler", None), getattr(self, "statement_timeout", None))
        if "pooler" in kwargs:
            self.pooler = kwargs.pop("pooler")
        if "statement_timeout" in kwargs:
            self.statement_timeout = kwargs.pop("statement_timeout")
        limit_changed = before != (self.pooler, self.statement_timeout)  # a connection's startup default
        if max_connections is not None or "max_size" in pool_settings:
            pool_settings["max_size"] = _max_size(max_connections, pool_settings.get("max_size"))
        for name, value in (("stale_timeout", stale_timeout), ("timeout", timeout)):
            if value is not None:
                pool_settings[name] = value
        if not hasattr(self, "database"):  # still in __init__: the pool was configured there
            super().init(database, **kwargs)
            return
        self._pool.configure(**pool_settings)
        target_changed = limit_changed or database != self.database or any(
            self.connect_params.get(k) != v for k, v in kwargs.items())
        super().init(database, **kwargs)
        if target_changed:
            self._budget_checked = False  # another server or role: check min_size again
            self._pool.invalidate()

    # -- peewee's pool attributes -----------------------------------------------------------------

    @property
    def max_connections(self) -> int | None:
        """Most connections checked out at once (None: no limit)."""
        return self._pool.max_size

    @property
    def min_size(self) -> int:
        """Connections opened at first use and kept open."""
        return self._pool.min_size

    @property
    def max_size(self) -> int | None:
        """The same as `max_connections`, in psycopg_pool's words."""
        return self._pool.max_size

    @property
    def timeout(self) -> float | None:
        """Seconds a caller waits when the pool is full (None: not at all; 0: without end)."""
        return self._pool.timeout

    _max_connections = max_connections
    _stale_timeout = property(lambda self: self._pool.stale_timeout, doc="Age limit in seconds (peewee's name).")
    _wait_timeout = property(lambda self: self._pool.wait_seconds, doc="Wait in seconds, inf for ever (peewee's).")

    # -- checkout ---------------------------------------------------------------------------------

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check a connection out for this thread, waiting as `timeout` says."""
        # Like peewee's Database.connect, minus its database-wide lock: the pool has its own, and a slow
        # connection attempt in one thread must not hold up other threads' checkouts and releases.
        if self.deferred:
            raise InterfaceError("Error, database must be initialized before opening a connection.")
        state = self._state
        if not state.closed:
            if reuse_if_open:
                return False
            raise OperationalError("Connection already opened.")
        conn = self._pool.getconn()
        try:
            state.set_connection(conn)
            if self.server_version is None:
                self._set_server_version(conn)
            self._initialize_connection(conn)
        except BaseException:
            state.reset()
            self._pool.putconn(conn, discard=True)
            raise
        return True

    def _connect(self) -> Any:
        """Check a connection out of the pool (peewee's `_connect` of a pooled database)."""
        return self._pool.getconn()

    def _open_connection(self) -> Any:
        """Open a new driver connection; the pool's first also checks `min_size` against the server."""
        with __exception_wrapper__:  # driver errors as peewee's
            conn = self._adapter.connect(self, **self._with_limit(self.connect_params))
        if self._isolation_level:
            conn.set_isolation_level(self._isolation_level)
        conn.autocommit = True  # as peewee's _connect leaves it
        if not self._budget_checked and not self.pooler:  # behind a pooler the server's limit is not ours
            try:
                self._check_budget(conn)
            except BaseException:
                self._close_raw(conn)
                raise
        return conn

    def _check_budget(self, conn: Any) -> None:
        """Raise PoolTooLarge when `min_size` is more than the server allows this role."""
        with conn.cursor() as cursor:
            cursor.execute(CONNECTION_BUDGET_SQL)
            most, reserved, role_limit, role = cursor.fetchone()
        allowed = most - reserved if role_limit < 0 else min(most - reserved, role_limit)
        if self.min_size > allowed:
            limit = (f"max_connections {most} minus {reserved} reserved" if role_limit < 0 or role_limit >= most
                     - reserved else f"the role's CONNECTION LIMIT {role_limit}")
            raise PoolTooLarge(f"min_size {self.min_size} is more connections than the server allows role {role} "
                               f"({allowed}: {limit}); lower it")
        self._budget_checked = True

    def _is_closed(self, conn: Any) -> bool:
        """Hook asked on every checkout: True when the driver already knows the connection is unusable."""
        return bool(conn.closed) or conn.get_transaction_status() == UNKNOWN

    def _ping(self, conn: Any) -> bool:
        """One round trip: True when the server answers."""
        return _succeeds(conn, "SELECT 1")

    def _can_reuse(self, conn: Any) -> bool:
        """Hook asked on every check-in: fit to keep? (A leftover or failed transaction is rolled back.)"""
        if conn.closed:
            return False
        return conn.get_transaction_status() == IDLE or self._adapter.is_connection_reusable(conn)

    def _reset_session(self, conn: Any) -> bool:
        """Clear session state before the next borrower: DISCARD ALL; False if that fails (none behind a pooler)."""
        return bool(self.pooler) or _succeeds(conn, "DISCARD ALL")

    # -- statements -------------------------------------------------------------------------------

    def cursor(self, named_cursor: Any = None) -> Any:
        """A cursor on this thread's connection (one known dead is replaced first, outside a transaction)."""
        state = self._state
        if state.closed:
            if not self.autoconnect:
                raise InterfaceError("Error, database connection not opened.")
            self.connect()
        elif state.conn.closed and not state.transactions:
            self._replace_dead(None)
        if named_cursor:
            self._pool.note_session(state.conn, None)
            return self._adapter.server_side_cursor(state.conn)
        return state.conn.cursor()

    def execute_sql(self, sql: str, params: Any = None, named_cursor: Any = None) -> Any:
        """Run one statement; re-sent once only when the server never ran it (see the docstring)."""
        self._log_query(sql, params)
        start = time.perf_counter() if self.query_hooks else None
        kind = session_change(sql)
        try:
            with __exception_wrapper__:
                cursor = self._run(sql, params, named_cursor, kind)
        except Exception as exc:
            if start is not None:
                self._notify_hooks(sql, params, start, exc)
            if isinstance(exc, DatabaseError) and _TIMED_OUT in str(exc):
                raise StatementTimeout(self._timeout_sentence()) from exc
            violated = _RLS_VIOLATION.search(str(exc)) if isinstance(exc, DatabaseError) else None
            if violated:
                table = violated[1]
                tenant = current_tenant()
                raise TenantError(
                    f"{table}: the row does not belong to the tenant context's organization "
                    f"({f'kit.tenant({tenant})' if tenant else 'no kit.tenant(org) is set'}); nothing was written"
                ) from exc
            raise
        if start is not None:
            self._notify_hooks(sql, params, start, None)
        return cursor

    def _run(self, sql: str, params: Any, named_cursor: Any, kind: str | None, prefixed: bool = True) -> Any:
        state = self._state
        if named_cursor or state.closed or state.conn.closed:
            cursor = self.cursor(named_cursor)
        else:
            cursor = state.conn.cursor()
        conn = state.conn
        idle = not state.transactions and conn.get_transaction_status() == IDLE  # no transaction on the connection
        state_kind = kind if kind is not RAW_BEGIN and kind is not RAW_END else None
        if state_kind:
            if self.pooler and state_kind in POOLER_REFUSES:
                self._refuse(sql, state_kind)
            self._pool.note_session(conn, state_kind)
        prefix = self._prefix(state, sql, idle and kind is not RAW_BEGIN, kind is RAW_BEGIN, named_cursor) \
            if prefixed else ""
        sent = time.monotonic()
        try:
            cursor.execute(prefix + sql, params or ())
        except psycopg2.Error as exc:
            if state.transactions or not _ended_by_server(exc, conn):
                raise
            if state.raw_transaction or self._pool.session_of(conn):
                self._replace_dead(exc)  # raises SessionLost, naming what was lost
            if not idle or time.monotonic() - sent > RESEND_WINDOW:
                raise  # it may have been running; the dead connection is replaced at the next statement
            self._replace_dead(exc)
            self._pool.count("resent")
            cursor = self.cursor(named_cursor)
            if state_kind:
                self._pool.note_session(state.conn, state_kind)
            cursor.execute(prefix + sql, params or ())
        if kind is RAW_BEGIN or kind is RAW_END:
            state.raw_transaction = kind is RAW_BEGIN
            state.tenant_used = kind is RAW_BEGIN and bool(prefix)
        return cursor

    def _prefix(self, state: _ThreadState, sql: str, alone: bool, begins: bool, named_cursor: Any) -> str:
        """What rides before a statement, in the same round trip: its time limit and its tenant; '' for nothing.

        The time limit (`statement_timeout`, a SET LOCAL) comes with every statement that is its own
        transaction (`alone`) and with the BEGIN of a transaction (peewee's, `begin()`, or one sent as
        SQL, `begins`): it holds behind a transaction-pooling PgBouncer, no savepoint rolled back can
        drop it, and a SET LOCAL of the caller's inside the transaction still decides. A statement
        that is its own transaction carries the tenant when there is one (`kit.tenancy`). Inside a
        transaction that has carried a tenant, every statement carries the context's (or clears it), so
        a savepoint rolled back or a block left can never leave another tenant's setting in force.
        """
        wanted = current_tenant()
        if alone:
            if _NO_TRANSACTION_BLOCK.match(sql):
                return ""  # with a prefix it would be in a transaction block, which such a statement refuses
            return self._limit_prefix() + (statement_prefix(wanted) if wanted is not None else "")
        limit = self._limit_prefix() if begins else ""
        if wanted is None and not state.tenant_used:
            return limit
        state.tenant_used = True
        prefix = limit + statement_prefix(wanted)
        if named_cursor:  # DECLARE takes one statement: the settings go first, in the same transaction
            state.conn.cursor().execute(prefix)
            return ""
        return prefix

    def _limit_prefix(self) -> str:
        """The time limit sent before a statement as a SET LOCAL, behind a pooler only ('' otherwise).

        Behind a transaction-pooling PgBouncer a server connection is another client's between
        transactions, so the limit rides with the statements. Connected to the server itself, it is
        the connection's own default from its start (`_with_limit`), which costs nothing per statement
        and which RESET/DISCARD ALL return to.
        """
        if not self.statement_timeout or not self.pooler:
            return ""
        return f"SET LOCAL statement_timeout = {max(1, round(self.statement_timeout * 1000))};"

    def _with_limit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Driver parameters with the time limit as the connection's startup default (not behind a pooler)."""
        if not self.statement_timeout or self.pooler:
            return params
        given = params.get("options") or psycopg2.extensions.parse_dsn(params.get("dsn") or "").get("options", "")
        limit = f"-c statement_timeout={max(1, round(self.statement_timeout * 1000))}"
        return {**params, "options": f"{given} {limit}".strip()}

    def _timeout_sentence(self) -> str:
        """The one sentence a statement cancelled by its time limit is reported with."""
        limit = f"{round(self.statement_timeout * 1000):,} ms" if self.statement_timeout else "the server's"
        return (f"the statement ran past its time limit ({limit}, DATABASE_STATEMENT_TIMEOUT) and the server "
                "cancelled it; nothing of it was committed")

    def _refuse(self, sql: str, kind: str) -> None:
        """Raise SessionStateRefused for a statement that would leave `kind` on a pooler's shared connection."""
        if kind == "temporary tables" and re.search(r"on\s+commit\s+drop", sql, re.I) and self.in_transaction():
            return
        raise SessionStateRefused(
            f"{kind} would outlive the transaction on a server connection PgBouncer shares with other clients "
            f"(DATABASE_POOLER={self.pooler}, transaction pooling); use {POOLER_REFUSES[kind]}, or connect to "
            "the server directly; nothing was sent")

    def begin(self, isolation_level: Any = None) -> None:
        """Start a transaction (peewee's BEGIN, sent by the same rules as any statement)."""
        level = self._isolation_level if isolation_level is None else isolation_level
        sql = f"BEGIN TRANSACTION ISOLATION LEVEL {self._adapter.isolation_level_str(level)}" if level else "BEGIN"
        with __exception_wrapper__:  # the limit comes with the BEGIN, before any savepoint; the tenant per statement
            self._run(sql + ";" + self._limit_prefix() if self.statement_timeout else sql, None, None, None,
                      prefixed=False)

    def commit(self) -> None:
        """COMMIT on this thread's connection; a connection lost before or during it is SessionLost."""
        if self.is_closed():
            raise InterfaceError("Cannot commit, database connection not open.")
        conn = self._state.conn
        if _socket_readable(conn):  # the server said something while the transaction sat idle: is it gone?
            self._ping(conn)  # fails on a dead connection (and closes it); harmless inside the transaction
        if conn.closed:
            raise SessionLost("the database connection was lost before COMMIT; the server rolled the transaction "
                              "back, so nothing of it was committed")
        self._state.tenant_used = False
        try:
            with __exception_wrapper__:
                conn.cursor().execute("COMMIT")
        except (OperationalError, InterfaceError) as exc:
            if not conn.closed:
                raise
            raise SessionLost(
                f"the database connection was lost during COMMIT ({_first_line(exc)}); if the server ended the "
                "session (stopped, killed it) nothing was committed, after a crash or a network failure the "
                "outcome is unknown: check before doing it again"
            ) from exc

    def rollback(self) -> None:
        """ROLLBACK on this thread's connection; on a lost connection the server already rolled back."""
        if self.is_closed():
            raise InterfaceError("Cannot rollback, database connection not open.")
        conn = self._state.conn
        self._state.tenant_used = False
        if conn.closed:
            return
        try:
            with __exception_wrapper__:
                conn.cursor().execute("ROLLBACK")
        except (OperationalError, InterfaceError):
            if not conn.closed:
                raise

    def _replace_dead(self, cause: BaseException | None) -> None:
        """Swap this thread's dead connection for a new one, or raise SessionLost if it held session state."""
        state = self._state
        dead = state.conn
        lost = self._pool.session_of(dead) | ({OPEN_TRANSACTION} if state.raw_transaction else set())
        state.raw_transaction = False
        self._pool.putconn(dead, discard=True)
        if lost:
            reason = f" ({_first_line(cause)})" if cause is not None else ""
            raise SessionLost(
                f"the database connection was lost{reason} and with it this session's {', '.join(sorted(lost))}; "
                "nothing was re-sent: set that state up again on the next statement's new connection"
            ) from cause
        state.conn = self._pool.getconn(verified=True)  # not another idle one that died alike

    def connection_lost(self) -> bool:
        """True when this thread has no usable connection: none could be opened, or the one it had died."""
        return self._state.closed or bool(self._state.conn.closed)

    def connection(self) -> Any:
        """This thread's driver connection; what is done with it directly is reset on release."""
        conn = super().connection()
        self._pool.note_session(conn, DRIVER_USE)
        return conn

    # -- check-in ---------------------------------------------------------------------------------

    def close(self) -> bool:
        """Return this thread's connection to the pool (peewee's close, minus the database-wide lock)."""
        if self.deferred:
            raise InterfaceError("Error, database must be initialized before opening a connection.")
        if self.in_transaction():
            raise OperationalError("Attempting to close database while transaction is open.")
        state = self._state
        is_open = not state.closed
        try:
            if is_open:
                with __exception_wrapper__:
                    self._pool.putconn(state.conn)
        finally:
            state.reset()
        return is_open

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        """Give a connection back to the pool, or close it for good with `close_conn`."""
        self._pool.putconn(conn, discard=close_conn)

    def _close_raw(self, conn: Any) -> None:
        """Close a driver connection for good, ignoring errors (it may be dead already)."""
        try:
            super()._close(conn)
        except Exception:
            pass

    def manual_close(self) -> bool:
        """Close this thread's connection for good instead of returning it; False if none was open."""
        if self.is_closed():
            return False
        conn = self._state.conn
        self._state.reset()
        self._pool.putconn(conn, discard=True)
        return True

    def close_idle(self) -> int:
        """Close every idle connection (checked-out ones are left alone); return how many."""
        return self._pool.close_idle()

    def close_stale(self, age: float = 600) -> int:
        """Close connections checked out more than `age` seconds ago (their users will fail); return how many."""
        return self._pool.close_stale(age)

    def close_all(self) -> None:
        """Close every connection, this thread's and those checked out by other threads (they will fail)."""
        if not self.is_closed() and not self.in_transaction():
            self.close()
        self._pool.close_all()

    def dispose(self) -> None:
        """In a forked child: drop every connection inherited from the parent without touching its socket."""
        conns = self._pool.forget()
        if not self._state.closed:
            conns.append(self._state.conn)
        _silence(conns)
        self._state = _ThreadState()
        self._lock = threading.Lock()

    def pool_stats(self) -> dict[str, Any]:
        """Counts: in_use, idle, min, max, and since start waits, timeouts, opened, closed, checks, resets."""
        return self._pool.stats()


def _max_size(max_connections: Any, max_size: Any) -> Any:
    """One maximum from peewee's `max_connections` and psycopg_pool's `max_size` (equal if both given)."""
    if max_size is None:
        return max_connections
    if max_connections not in (None, 20) and max_connections != max_size:
        raise PoolSettingError(f"max_connections ({max_connections}) and max_size ({max_size}) disagree; give one")
    return max_size


def _silence(conns: list[Any]) -> None:
    """Point each connection's socket at /dev/null, so nothing of it reaches the server (after fork)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in conns:
            try:
                os.dup2(devnull, conn.fileno())
            except (OSError, ValueError, psycopg2.Error):
                pass
    finally:
        os.close(devnull)


_pools: weakref.WeakSet[PooledDatabase] = weakref.WeakSet()


def _dispose_in_child() -> None:
    for db in list(_pools):
        db.dispose()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_in_child)


# -- the kit's database, configured from the environment --------------------------------------------


def resolve_url(settings: Settings, role: str = APP) -> str:
    """The URL in use for `role` (APP or OWNER): from the settings, else the embedded server's (started if needed)."""
    given = settings.owner_url if role == OWNER else settings.database_url
    return given or embedded.start(settings.data_dir, role)


PRIMARY, REPLICA = "primary", "replica"


def _plain_read(query: Any) -> bool:
    """True for a peewee SELECT that cannot write: no FOR UPDATE/SHARE, no data-modifying WITH."""
    if not isinstance(query, SelectBase) or getattr(query, "_for_update", None) is not None:
        return False
    return all(isinstance(cte._query, SelectBase) for cte in query._cte_list or ())


class Database(PooledDatabase):
    """The kit's pooled PostgreSQL database, configured from the environment on first use, reading from replicas.

    It connects as the run-time role (DATABASE_URL), or as the owner (DATABASE_OWNER_URL) in the
    commands that need it (`configure(owner=True)`: migrations, seeds, `kit maintain`). Inside
    `kit.all_tenants()` a context's connections come from a second, small pool on the owner's URL:
    the connection state and the pool a context uses are chosen by that context, so the rest of the
    pooled contract (transactions, re-sends, `SessionLost`) holds there unchanged.
    """

    def __init__(self) -> None:
        self._owner_pool: ConnectionPool | None = None
        self._owner_state = _ThreadState()
        self._owner_url: str | None = None
        self.owner = False  # True: the pool itself connects as the owner (migrations, seeds, upkeep)
        super().__init__(None)
        self._configure_lock = threading.Lock()
        self.settings: Settings | None = None
        self._router: Router | None = None
        on_leaving_all_tenants(self._release_door)
        # What the current context (thread or asyncio task) asked for and wrote, for read routing:
        self._force: ContextVar[str | None] = ContextVar("kit_force", default=None)  # "primary"/"replica"
        self._written: ContextVar[int] = ContextVar("kit_written", default=0)  # WAL position reads must see
        self._unsynced: ContextVar[bool] = ContextVar("kit_unsynced", default=False)  # wrote since then
        self._primary_seen = 0  # the highest WAL position of the primary this process has seen

    def configure(self, url: str | None = None, settings: Settings | None = None,
                  replicas: Sequence[str] | None = None, *, owner: bool = False, owner_url: str | None = None) -> str:
        """Point the pool at `url` (default: from the settings), reading from `replicas` (default: the settings').

        `owner`: connect as the owner role (`url` is then the owner's); `owner_url`: the owner's URL that
        `all_tenants()` uses (default: the settings').
        """
        with self._configure_lock:
            self.owner = owner
            return self._configure(url, settings, replicas, owner_url)

    def configure_owner(self, settings: Settings | None = None) -> None:
        """Connect as the owner (DATABASE_OWNER_URL), as migrations, seeds and upkeep do; a configured pool is kept.

        Kept as it is when already configured: a test or an application that pointed the pool at a
        database on purpose (`configure(url, owner=True)`) is not sent back to the environment's.
        """
        if self.deferred:
            self.configure(settings=settings, owner=True)

    def _configure(self, url: str | None, settings: Settings | None, replicas: Sequence[str] | None = None,
                   owner_url: str | None = None) -> str:
        settings = settings or load_settings()
        role = OWNER if self.owner else APP
        url = check_database_url(url, "url") if url else resolve_url(settings, role)
        self._owner_url = url if self.owner else (check_database_url(owner_url, "owner_url") if owner_url else None)
        if self._owner_pool is not None:
            self._owner_pool.close_all()
            self._owner_pool = None
        self.connect_params = {}
        self.init(
            mask_password(url),  # what peewee and pw_migrate print; the real URL goes to the driver as dsn
            dsn=url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            max_idle=settings.pool_idle_timeout_ms / 1000,
            timeout=settings.pool_timeout_ms / 1000,
            pooler=settings.pooler,
            # the application's statements are bounded; the owner's commands (DDL, loads) bound their own waits
            statement_timeout=None if self.owner else (settings.statement_timeout_ms / 1000 or None),
            **_driver_params(url, CONNECT_TIMEOUT_S),
        )
        self.settings = settings
        urls = settings.replica_urls if replicas is None else [check_database_url(r, "replica URL") for r in replicas]
        self._set_replicas(urls, settings)
        return url

    def _set_replicas(self, urls: Sequence[str], settings: Settings) -> None:
        """Read from these replicas from now on (none: the primary serves every read)."""
        old, self._router = self._router, None
        for replica in old.replicas if old else ():
            replica.database.close_all()
        if urls:
            made = [Replica(mask_password(url), PooledDatabase(
                mask_password(url), dsn=url, min_size=settings.pool_min, max_size=settings.pool_max,
                max_idle=settings.pool_idle_timeout_ms / 1000,
                timeout=None,  # a full replica pool sends the read to the primary rather than wait
                pooler=settings.pooler, statement_timeout=settings.statement_timeout_ms / 1000 or None,
                **_driver_params(url, REPLICA_CONNECT_TIMEOUT_S))) for url in urls]
            self._router = Router(made, settings.replica_max_lag_ms / 1000)

    # -- all_tenants(): the owner's connections, for the contexts inside it -----------------------

    @property
    def _state(self) -> _ThreadState:
        return self._owner_state if self._crossing() else self._app_state

    @_state.setter
    def _state(self, value: _ThreadState) -> None:
        self._app_state = value

    @property
    def _pool(self) -> ConnectionPool:
        return self._door_pool() if self._crossing() else self._app_pool

    @_pool.setter
    def _pool(self, value: ConnectionPool) -> None:
        self._app_pool = value

    def _crossing(self) -> bool:
        """True when this context's statements go to the owner's pool (inside `all_tenants()`, run-time role)."""
        return not self.owner and crossing_tenants()

    def _door_pool(self) -> ConnectionPool:
        """The owner's pool for `all_tenants()`, made on first use (DOOR_POOL_MAX connections at most)."""
        if self._owner_pool is None:
            self._configured()
            with self._configure_lock:
                if self._owner_pool is None:
                    url = self._owner_url or resolve_url(self.settings, OWNER)
                    params = {**self.connect_params, "dsn": url}
                    pool = ConnectionPool(Hooks(open=lambda: self._open_as(params), close=self._close_raw,
                                                is_closed=self._is_closed, ping=self._ping,
                                                can_reuse=self._can_reuse, reset=self._reset_session))
                    pool.configure(min_size=0, max_size=DOOR_POOL_MAX, timeout=self._app_pool.timeout,
                                   max_idle=self.settings.pool_idle_timeout_ms / 1000)
                    self._owner_pool = pool
        return self._owner_pool

    def _release_door(self) -> None:
        """Give this thread's owner connection back when its context leaves `all_tenants()` (none is kept)."""
        state = self._owner_state
        if self._owner_pool is not None and not state.closed and not state.transactions \
                and not state.raw_transaction:
            conn = state.conn
            state.reset()
            self._owner_pool.putconn(conn)

    def _open_as(self, params: dict[str, Any]) -> Any:
        """Open a driver connection with `params` (the owner's), as peewee opens its own."""
        with __exception_wrapper__:
            conn = self._adapter.connect(self, **self._with_limit(params))
        conn.autocommit = True
        return conn

    def _configured(self) -> None:
        """Configure from the environment if this is the first use."""
        if self.deferred:
            with self._configure_lock:
                if self.deferred:
                    self._configure(None, None)

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check out a connection, configuring the pool first if this is the first use."""
        self._configured()
        try:
            return super().connect(reuse_if_open)
        except PoolExhausted as exc:  # say it in the settings' own words
            raise PoolExhausted(f"{exc} (DATABASE_POOL_MAX={self.max_size}, "
                                f"DATABASE_POOL_TIMEOUT={self.settings.pool_timeout_ms} ms)") from None
        except PoolTooLarge as exc:
            raise ConfigError(f"DATABASE_POOL_MIN={self.min_size} is too large: {exc}") from None
        except KitError:
            raise
        except OperationalError as exc:
            if not self._state.closed:
                raise
            raise DatabaseUnavailable(
                f"could not connect to the database at {self.database}: {_first_line(exc)}"
            ) from exc

    @property
    def url(self) -> str | None:
        """The URL the pool connects to, password included (None until configured)."""
        return self.connect_params.get("dsn") if not self.deferred else None

    @property
    def current_url(self) -> str | None:
        """The URL this context's statements go to: the owner's inside `all_tenants()`, else `url`."""
        if self._crossing():
            self._configured()
            return self._owner_url or resolve_url(self.settings, OWNER)
        return self.url

    # -- read routing ----------------------------------------------------------------------------

    def execute(self, query: Any, **context: Any) -> Any:
        """Run a peewee query: a plain read outside a transaction on a fit replica, everything else on the primary."""
        self._configured()
        if not _plain_read(query):
            if not isinstance(query, SelectBase) and current_tenant() is None and not self.owner \
                    and not crossing_tenants():
                _refuse_without_tenant(query)
            return super().execute(query, **context)
        sql, params = self.get_sql_context(**context).sql(query).query()
        return self.read_sql(sql, params)

    def execute_sql(self, sql: str, params: Any = None, named_cursor: Any = None) -> Any:
        """Run one statement on the primary (on a replica inside `on_replica()`, outside a transaction)."""
        if self._force.get() == REPLICA and named_cursor is None:
            replica = self._replica_for_read(writes_matter=False)
            if replica is not None:
                return self._read_on(replica, sql, params, only_reads=False)
        self._unsynced.set(True)  # it may write: the next read waits for a replica to replay it
        return super().execute_sql(sql, params, named_cursor)

    def read_sql(self, sql: str, params: Any = None) -> Any:
        """Run raw SQL that only reads, routed as a peewee SELECT is (a fit replica outside a transaction)."""
        self._configured()
        replica = self._replica_for_read(writes_matter=True)
        if replica is not None:
            return self._read_on(replica, sql, params)
        return PooledDatabase.execute_sql(self, sql, params)

    def _replica_for_read(self, writes_matter: bool) -> Replica | None:
        """The replica this read may go to, or None for the primary (see `kit.routing`)."""
        router, state = self._router, self._state
        if router is None or self._force.get() == PRIMARY or state.transactions or state.raw_transaction \
                or self._crossing():
            return None
        if not state.closed and self._pool.session_of(state.conn):
            return None  # this thread set session state up on the primary; its reads stay there
        return router.choose(self._written_position() if writes_matter else 0)

    def _written_position(self) -> int:
        """The WAL position this context's reads must see: taken from the primary after its last write."""
        if self._unsynced.get():
            with __exception_wrapper__:
                cursor = PooledDatabase.execute_sql(self, "SELECT pg_current_wal_insert_lsn()::text")
            position = lsn_int(cursor.fetchone()[0])
            self._primary_seen = max(self._primary_seen, position)
            self._written.set(max(self._written.get(), position))
            self._unsynced.set(False)
        return self._written.get()

    def _read_on(self, replica: Replica, sql: str, params: Any, only_reads: bool = True) -> Any:
        """Run a read on `replica`; should it fail there, on the primary (a read has no effect to repeat).

        `only_reads` False (raw SQL in `on_replica()`, which may be a write): only a full replica pool
        sends it to the primary; any other failure is raised, so a write is refused as the standby refuses it.
        """
        try:
            cursor = replica.database.execute_sql(sql, params)
        except (DatabaseError, InterfaceError, KitError) as exc:
            if replica.database.connection_lost() and not isinstance(exc, PoolExhausted):
                self._router.failed(replica, exc)
            if not only_reads and not isinstance(exc, PoolExhausted):
                raise
            self._pool.count("replica_fallbacks")
            return PooledDatabase.execute_sql(self, sql, params)
        replica.reads += 1
        return cursor

    @contextmanager
    def on_primary(self) -> Iterator[None]:
        """Within the block, every statement of this context goes to the primary."""
        token = self._force.set(PRIMARY)
        try:
            yield
        finally:
            self._force.reset(token)

    @contextmanager
    def on_replica(self) -> Iterator[None]:
        """Within the block, every statement outside a transaction (raw SQL too) goes to a replica when one is fit.

        This context's own recent writes are not waited for; replicas down or past the lag limit are
        still skipped (the primary serves when none is left).
        """
        token = self._force.set(REPLICA)
        try:
            yield
        finally:
            self._force.reset(token)

    def write_position(self) -> str | None:
        """The WAL position after this context's last write (`X/Y`), for `reads_after` elsewhere; None if none."""
        position = self._written_position()
        return lsn_text(position) if position else None

    @contextmanager
    def reads_after(self, position: str | None) -> Iterator[None]:
        """Within the block, this context's reads see at least WAL `position` (from `write_position()`).

        A position is checked (`ArgumentError` unless it is `X/Y` in hex) and capped to the primary's
        current one: a client that carries positions cannot send every read to the primary by
        naming one from the future.
        """
        wanted = lsn_int(position)
        if wanted > self._primary_seen:  # past what this process has seen: ask the primary (one round trip)
            with __exception_wrapper__:
                cursor = PooledDatabase.execute_sql(self, "SELECT pg_current_wal_insert_lsn()::text")
            self._primary_seen = max(self._primary_seen, lsn_int(cursor.fetchone()[0]))
            wanted = min(wanted, self._primary_seen)
        token = self._written.set(max(self._written.get(), wanted))
        try:
            yield
        finally:
            self._written.reset(token)

    def check_replicas(self) -> list[dict[str, Any]]:
        """Ask every replica for its state now (those skipped as down too); return what `pool_stats` says of them."""
        router = self._router
        for replica in router.replicas if router else ():
            router.probe(replica)
        return [replica.stats() for replica in router.replicas] if router else []

    # -- the replicas' connections go and come with the primary's -------------------------------

    def close(self) -> bool:
        """Return this thread's connections (the primary's and any replica's) to their pools."""
        closed = super().close()
        for replica in self._router.replicas if self._router else ():
            replica.database.close()
        return closed

    def close_all(self) -> None:
        """Close every connection, to the primary (the owner's too) and to each replica."""
        super().close_all()
        if self._owner_pool is not None:
            self._owner_pool.close_all()
        for replica in self._router.replicas if self._router else ():
            replica.database.close_all()

    def dispose(self) -> None:
        """In a forked child: drop every inherited connection, the owner's pool's too."""
        super().dispose()
        if self._owner_pool is not None:
            _silence(self._owner_pool.forget())
            self._owner_pool = None
        self._owner_state = _ThreadState()

    def pool_stats(self) -> dict[str, Any]:
        """The primary's counts, and with replicas `servers`: each one's state, lag, reads and pool counts."""
        stats = super().pool_stats()
        if self._router is not None:
            stats["servers"] = [{"server": "primary", **super().pool_stats()},
                                *(replica.stats() for replica in self._router.replicas)]
        return stats


def _refuse_without_tenant(query: Any) -> None:
    """Raise TenantRequired for a write the tenant table's policies would refuse (or, for UPDATE/DELETE, skip)."""
    meta = getattr(getattr(query, "model", None), "_meta", None)
    name = getattr(meta, "tenant", None)
    if not name or not isinstance(query, (Insert, Update, Delete)):
        return
    command = {Insert: "insert", Update: "update", Delete: "delete"}[next(
        kind for kind in (Insert, Update, Delete) if isinstance(query, kind))]
    if command in meta.tenant_open or (command == "insert" and meta.fields[name].null):
        return  # open to every context, or a row of no organization may be allowed (the policy decides)
    raise TenantRequired(f"{meta.table_name}: {command.upper()} of an organization's rows needs a tenant context "
                         "(with kit.tenant(org): ...), and none is set; nothing was sent")


def _driver_params(url: str, connect_timeout: int) -> dict[str, Any]:
    """Driver parameters the URL leaves out: the kit's application_name and a connect timeout."""
    given = psycopg2.extensions.parse_dsn(url)
    params: dict[str, Any] = {}
    if "application_name" not in given:
        params["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        params["connect_timeout"] = connect_timeout
    return params


database = Database()
