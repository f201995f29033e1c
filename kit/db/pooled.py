"""`PooledDatabase`: peewee's pooled PostgreSQL contract on the kit's pool, with the re-send rule.

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

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
from peewee import (  # type: ignore[attr-defined]  # __exception_wrapper__, _callable_context_manager: not in its stubs
    InterfaceError,
    OperationalError,
    __exception_wrapper__,
    _callable_context_manager,
    _ConnectionLocal,
    _ConnectionState,
    _savepoint,
)
from playhouse.pool import PoolConnection
from playhouse.postgres_ext import PostgresqlExtDatabase

from kit.db.clean import leaves_nothing
from kit.db.contract import (
    CITUS_SQL,
    alone_prefix,
    begin_with,
    carried,
    in_kit_words,
    limit_sql,
    lost_at_begin,
    lost_before_commit,
    lost_during_commit,
    lost_with_state,
    pooler_refuses,
    riding_settings,
    several_statements,
    tenant_rides,
)
from kit.db.forks import silence, track
from kit.db.outcomes import is_outage
from kit.db.scope import current_scope
from kit.db.shapes import ShapedStatements
from kit.db.statements import (
    DRIVER_USE,
    OPEN_TRANSACTION,
    POOLER_REFUSES,
    RAW_BEGIN,
    RAW_END,
    session_change,
)
from kit.errors import (
    ArgumentError,
    DatabaseUnavailable,
    KitError,
    PoolSettingError,
    PoolTooLarge,
    SessionStateRefused,
    describe,
)
from kit.pool import ConnectionPool, Hooks
from kit.telemetry import watch as _watch
from kit.telemetry.watch import Target, note_resent
from kit.tenancy import current_tenant

log = logging.getLogger("kit.db")

CONNECTION_BUDGET_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
       r.rolconnlimit, r.rolname
FROM pg_roles r WHERE r.rolname = current_user
"""
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
RESEND_WINDOW = 0.050  # seconds: a statement that failed later than this after sending may have been running;
# wide enough for a loaded machine to notice a dead socket late (10 ms failed 1 in 1,200 kills under load)



def _socket_readable(conn: Any) -> bool:
    """True when the server sent something (or closed) while the connection sat idle."""
    try:
        return bool(select.select((conn,), (), (), 0)[0])
    except (OSError, ValueError, psycopg2.Error):  # a closed connection has no usable socket
        return True


def _ended_by_server(exc: Exception, conn: Any) -> bool:
    """True when a statement failed on a session the server had already ended (rule 3 in the docstring)."""
    return bool(conn.closed) and getattr(exc, "pgcode", None) is None and isinstance(exc, (psycopg2.OperationalError,
                                                                         psycopg2.InterfaceError))


def never_ran(exc: Exception, conn: Any, *, idle: bool, holds_session: bool, seconds: float) -> bool:
    """The re-send rule: True only when a failed statement cannot have taken effect (rules 1-4 above)."""
    return (idle  # 1. outside any transaction, peewee's or the driver's
            and not holds_session  # 2. no session state to lose (else SessionLost)
            and _ended_by_server(exc, conn)  # 3. the driver found the session ended, with no result
            and seconds <= RESEND_WINDOW)  # 4. and found it at once, not after the statement may have run


def _succeeds(conn: Any, sql: str) -> bool:
    """Run `sql` on a driver connection; False instead of an error."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
        return True
    except psycopg2.Error:
        return False




class KitState(_ConnectionState):
    """peewee's connection state, plus whether a transaction was begun as SQL."""

    def reset(self) -> None:
        """Forget this thread's connection."""
        super().reset()
        self.raw_transaction = False  # BEGIN sent as SQL, not through peewee's atomic()
        self.tenant_used = False  # the open transaction has carried a tenant (`kit.tenancy`)
        self.scope: object | None = None  # the request scope the connection was taken in (`kit.db.scope`)

    def let_go(self) -> None:
        """Forget the connection but not the open `connection_context()` blocks, which end as they began."""
        blocks = self.ctx
        self.reset()
        self.ctx = blocks


class ThreadState(KitState, _ConnectionLocal):
    """The connection state of each thread (and asyncio task's thread): what a database keeps per caller."""


class SharedState(KitState):
    """One connection state for every thread: a test's transaction, seen by the code it calls (`kit.testing`)."""


class PooledDatabase(ShapedStatements, PostgresqlExtDatabase):
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
        leak_after: float | None = None,
        pooler: str | None = None,
        statement_timeout: float | None = None,
        role: str = "primary",
        **kwargs: Any,
    ) -> None:
        self._budget_checked = False
        self.role = role  # "primary" or "replica": how spans, metrics and log lines name this server
        self._target: Target | None = None
        self.statement_timeout = statement_timeout  # seconds each statement may run (None: the server's)
        self.pooler = pooler  # "pgbouncer": behind transaction pooling (session state refused, no reset)
        self.citus: bool | None = None  # the server is Citus (`kit.db.contract`): read on the first connection
        self._pool = ConnectionPool(self._hooks())
        self._pool.configure(min_size=min_size, max_size=_max_size(max_connections, max_size), timeout=timeout,
                             stale_timeout=stale_timeout, max_idle=max_idle, check_after=check_after,
                             leak_after=leak_after)
        super().__init__(database, **kwargs)
        self._state: KitState = ThreadState()
        track(self)

    def _own_pool(self) -> ConnectionPool:
        """The pool `init()` configures: this database's own, whatever pool the current context uses."""
        return self._pool

    def _hooks(self) -> Hooks:
        return Hooks(open=self._open_connection, close=self._close_raw, is_closed=self._is_closed,
                     ping=self._ping, can_reuse=self._can_reuse, reset=self._reset_session)

    def init(self, database: str | None, max_connections: int | None = None, stale_timeout: float | None = None,
             timeout: float | None = None, **kwargs: Any) -> None:
        """Point at `database` with `kwargs` for the driver; pool settings given change, the rest stay."""
        pool_settings: dict[str, Any] = {name: kwargs.pop(name) for name in (
            "min_size", "max_size", "max_idle", "check_after", "leak_after") if name in kwargs}
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
        self._target = None  # the server may change: named again on next use
        if not hasattr(self, "database"):  # still in __init__: the pool was configured there
            super().init(database, **kwargs)
            self._name_pool()
            return
        self._own_pool().configure(**pool_settings)
        target_changed = limit_changed or database != self.database or any(
            self.connect_params.get(k) != v for k, v in kwargs.items())
        super().init(database, **kwargs)
        self._name_pool()
        if target_changed:
            self.shapes.clear()  # no statement crosses databases, roles or poolers
            self._budget_checked = False  # another server or role: check min_size again
            self._own_pool().invalidate()

    def _name_pool(self) -> None:
        """Name the pool after its server, for metrics and log lines (a deferred database's later)."""
        if not self.deferred:
            self._own_pool().name = self._own_target().pool_name()

    @property
    def target(self) -> Target:
        """The server this database's statements go to, as telemetry names it (host, port, database; no password)."""
        return self._own_target()

    def _own_target(self) -> Target:
        """`target`, without configuring first (what a subclass's `target` does)."""
        target = self._target
        if target is None:
            params = {key: value for key, value in self.connect_params.items() if value is not None}
            dsn = params.pop("dsn", None)
            given = {**(psycopg2.extensions.parse_dsn(dsn) if dsn else {}), **params}
            self._target = target = Target.of(given, self.role, None if dsn else self.database)
        return target

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

    @property
    def _connections(self) -> list[tuple[float, int, Any]]:
        """The idle connections as peewee's pool lists them, (timestamp, counter, connection); a copy to read."""
        return self._pool.snapshot()[0]

    @property
    def _in_use(self) -> dict[int, PoolConnection]:
        """The checked-out connections as peewee's pool maps them, key to `PoolConnection`; a copy to read."""
        return {key: PoolConnection(*entry) for key, entry in self._pool.snapshot()[1].items()}

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
            state.scope = current_scope()
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
        if self.citus is None:
            try:
                with conn.cursor() as cursor:
                    cursor.execute(CITUS_SQL)
                    self.citus = bool(cursor.fetchone()[0])
            except BaseException:
                self._close_raw(conn)
                raise
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
        watch = _watch.active
        clean = leaves_nothing(sql)  # decided on the caller's text, before any tag is appended
        if watch is None:
            return self._execute_sql(sql, params, named_cursor, clean)
        return watch.statement(self.target, sql, lambda text: self._execute_sql(text, params, named_cursor, clean))

    def _execute_sql(self, sql: str, params: Any, named_cursor: Any, clean: bool) -> Any:
        self._log_query(sql, params)
        start = time.perf_counter() if self.query_hooks else None
        kind = session_change(sql)
        scope = current_scope()
        try:
            with __exception_wrapper__:
                cursor = self._run(sql, params, named_cursor, kind, clean=clean)
        except Exception as exc:
            if scope is not None:
                self._release_in_scope(scope)
            if start is not None:
                self._notify_hooks(sql, params, start, exc)
            said = self._in_kit_words(exc)
            if said is not None:
                raise said from exc
            raise
        if start is not None:
            self._notify_hooks(sql, params, start, None)
        if scope is not None and not named_cursor:
            self._release_in_scope(scope)
        return cursor

    def _in_kit_words(self, exc: Exception) -> BaseException | None:
        """`contract.in_kit_words` with what this driver says of the failure (None: raise it as it is)."""
        outage = (isinstance(exc, (OperationalError, InterfaceError)) and not self.deferred
                  and is_outage(exc, self.connection_lost()))
        said = in_kit_words(exc, limit_ms=self._limit_ms(), outage=outage,
                            in_transaction=bool(self._state.transactions or self._state.raw_transaction))
        if said is not None and outage:
            self._pool.count("session_lost")
        return said

    def _release_in_scope(self, scope: object) -> None:
        """Inside a request scope: give the connection back once no transaction or session state needs it."""
        state = self._state
        if state.closed or state.scope is not scope or state.transactions or state.raw_transaction:
            return  # what it holds of the session is reset on its way back (`kit.db.clean`)
        conn = state.conn
        state.let_go()
        self._pool.putconn(conn)

    def _drop_leftover(self) -> None:
        """A connection this thread kept from another request scope: rolled back and closed, never reused here."""
        state = self._state
        conn, held = state.conn, self._pool.session_of(state.conn) | (
            {OPEN_TRANSACTION} if state.raw_transaction or state.transactions else set())
        state.let_go()
        self._pool.putconn(conn, discard=True)
        log.warning("a connection left by an earlier request on this thread was closed, not reused (it held %s)",
                    ", ".join(sorted(held)) or "nothing named")

    def _run(self, sql: str, params: Any, named_cursor: Any, kind: str | None, prefixed: bool = True,
             clean: bool = True, then: str = "") -> Any:
        """Send one statement with its prefix; re-send it once where `never_ran` proves it had no effect.

        `clean` False (`kit.db.clean`: not proven to leave nothing on the session): the connection is
        reset before its next borrower gets it. `then`: settings sent after it (a BEGIN's time limit).
        """
        state = self._state
        cursor = self._statement_cursor(state, named_cursor)
        conn = state.conn
        idle = not state.transactions and conn.get_transaction_status() == IDLE  # no transaction on the connection
        left = _left_on_session(kind)
        prefix = ""
        alone = idle and kind is not RAW_BEGIN
        if prefixed:
            self._before_sending(conn, sql, left, clean, several=alone)
            prefix = self._prefix(state, sql, alone, kind is RAW_BEGIN, named_cursor)
        sent = time.monotonic()
        try:
            self._send(cursor, prefix, sql, params, alone, then)
        except psycopg2.Error as exc:
            self._after_failure(exc, state, conn, idle, time.monotonic() - sent)  # raises unless it never ran
            cursor = self.cursor(named_cursor)
            self._before_sending(state.conn, sql, left, clean, several=False)
            self._send(cursor, prefix, sql, params, alone, then)
        if kind is RAW_BEGIN or kind is RAW_END:  # transaction control sent as SQL
            state.raw_transaction = kind is RAW_BEGIN
            state.tenant_used = state.raw_transaction and bool(prefix)
        return cursor

    def _send(self, cursor: Any, prefix: str, sql: str, params: Any, alone: bool, then: str) -> None:
        """The statement with what rides before (and after) it: in its string, or on Citus in a statement of its own.

        On Citus (`kit.db.contract`) a statement alone with something riding gets a transaction of its
        own: BEGIN and the settings, the statement, COMMIT (a loss during COMMIT: outcome unknown).
        """
        if not self.citus:
            cursor.execute(prefix + sql + (";" + then if then else ""), params or ())
            return
        own = cursor.connection.cursor()
        if not prefix:
            cursor.execute(sql, params or ())
        elif not alone:
            own.execute(carried(prefix, citus=True))
            cursor.execute(sql, params or ())
        else:
            self._in_own_transaction(cursor, own, prefix, sql, params)
        if then:
            own.execute(carried(then, citus=True))

    @staticmethod
    def _in_own_transaction(cursor: Any, own: Any, prefix: str, sql: str, params: Any) -> None:
        """BEGIN with `prefix` carried, the statement, COMMIT: on Citus, what a statement alone is sent as."""
        for text in begin_with(prefix, citus=True):
            own.execute(text)
        try:
            cursor.execute(sql, params or ())
        except BaseException:
            if not cursor.connection.closed:
                with contextlib.suppress(psycopg2.Error):
                    own.execute("ROLLBACK")
            raise
        try:
            own.execute("COMMIT")
        except psycopg2.Error as exc:
            if not cursor.connection.closed:
                raise
            raise lost_during_commit(exc) from exc

    def _before_sending(self, conn: Any, sql: str, state_kind: str | None, clean: bool, several: bool) -> None:
        """Refuse what must not be sent (several statements alone, state a pooler would share); note what it leaves."""
        if several:
            refused = several_statements(sql, self._limit_ms())
            if refused is not None:
                raise refused
        self._note_state(conn, sql, state_kind)
        if not clean:
            self._pool.note_session(conn, None)

    def _statement_cursor(self, state: KitState, named_cursor: Any) -> Any:
        """A cursor for the next statement: on this thread's connection, one opened or replaced first if need be.

        A connection this thread kept from another request scope is let go first (`_drop_leftover`).
        """
        if state.scope is not None and not state.closed and state.scope is not current_scope():
            self._drop_leftover()
        if named_cursor or state.closed or state.conn.closed:
            return self.cursor(named_cursor)
        return state.conn.cursor()

    def _note_state(self, conn: Any, sql: str, state_kind: str | None) -> None:
        """Record the session state `sql` leaves on `conn` (refused first behind a pooler, where it would leak)."""
        if state_kind:
            refused = pooler_refuses(state_kind, sql, self.pooler, self.in_transaction())
            if refused is not None:
                raise refused
            if state_kind in POOLER_REFUSES and current_scope() is not None and not self.in_transaction():
                raise SessionStateRefused(
                    f"{state_kind} would outlive the statement, and inside a request scope (kit.web) a connection "
                    f"is the request's only for a statement or a transaction; use {POOLER_REFUSES[state_kind]}; "
                    "nothing was sent")
            self._pool.note_session(conn, state_kind)

    def _after_failure(self, exc: psycopg2.Error, state: KitState, conn: Any, idle: bool, seconds: float) -> None:
        """Decide on a failed statement: SessionLost, raised as it is, or (returning) a new connection to re-send on."""
        holds_session = state.raw_transaction or bool(self._pool.session_of(conn))
        if holds_session and not state.transactions and _ended_by_server(exc, conn):
            self._replace_dead(exc)  # raises SessionLost, naming what was lost
        if not never_ran(exc, conn, idle=idle, holds_session=holds_session, seconds=seconds):
            raise exc  # it may have run; a dead connection is replaced at the next statement
        self._replace_dead(exc)
        self._pool.count("resent")
        note_resent()
        log.info("statement re-sent on a new connection: the server had ended the session before it ran (%s)",
                 describe(exc))

    def _prefix(self, state: KitState, sql: str, alone: bool, begins: bool, named_cursor: Any) -> str:
        """What rides before a statement, in the same round trip (`kit.db.contract`); '' for nothing.

        Alone (its own transaction): the limit behind a pooler, the riding settings, the tenant. Inside
        a transaction: the limit with its BEGIN, the riding settings, and the tenant by
        `contract.tenant_rides`. A named cursor's DECLARE takes one statement, so inside a transaction
        its prefix goes first on its own; outside one its prefix would end before the DECLARE ran.
        """
        wanted = current_tenant()
        if alone:
            prefix = alone_prefix(sql, wanted, self._limit_ms() if self.pooler else None)
            if named_cursor and prefix:
                raise ArgumentError("a named (server-side) cursor outside a transaction would not carry what rides "
                                    "before its statement (the tenant, the time limit): open it inside "
                                    "database.atomic(); nothing was sent")
            return prefix
        limit = self._limit_prefix() if begins else ""
        tenant, state.tenant_used = tenant_rides(wanted, state.tenant_used)
        prefix = limit + riding_settings() + tenant
        if named_cursor and prefix:  # DECLARE takes one statement: the settings go first, in the same transaction
            state.conn.cursor().execute(carried(prefix, bool(self.citus)))
            return ""
        return prefix

    def _limit_prefix(self) -> str:
        """The time limit sent before a statement as a SET LOCAL, behind a pooler only ('' otherwise).

        Behind a transaction-pooling PgBouncer a server connection is another client's between
        transactions, so the limit rides with the statements. Connected to the server itself, it is
        the connection's own default from its start (`_with_limit`), which costs nothing per statement
        and which RESET/DISCARD ALL return to.
        """
        return limit_sql(self._limit_ms()) if self.pooler else ""

    def _with_limit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Driver parameters with the time limit as the connection's startup default (not behind a pooler)."""
        if not self.statement_timeout or self.pooler:
            return params
        given = params.get("options") or psycopg2.extensions.parse_dsn(params.get("dsn") or "").get("options", "")
        limit = f"-c statement_timeout={max(1, round(self.statement_timeout * 1000))}"
        return {**params, "options": f"{given} {limit}".strip()}

    def _limit_ms(self) -> int | None:
        """The statement time limit in ms (None: the server's)."""
        return max(1, round(self.statement_timeout * 1000)) if self.statement_timeout else None

    def begin(self, isolation_level: Any = None) -> None:
        """Start a transaction (peewee's BEGIN, sent by the same rules as any statement)."""
        level = self._isolation_level if isolation_level is None else isolation_level
        sql = f"BEGIN TRANSACTION ISOLATION LEVEL {self._adapter.isolation_level_str(level)}" if level else "BEGIN"
        try:
            with __exception_wrapper__:  # the limit rides with BEGIN, before any savepoint; the tenant per statement
                self._watched(sql, lambda text: self._run(text, None, None, None, prefixed=False,
                                                          then=self._limit_prefix() if self.statement_timeout else ""))
        except Exception as exc:
            scope = current_scope()
            if scope is not None:  # the transaction never began: nothing holds the connection
                self._release_in_scope(scope)
            if not isinstance(exc, KitError) and isinstance(exc, (OperationalError, InterfaceError)) \
                    and is_outage(exc, self.connection_lost()):
                raise lost_at_begin(exc) from exc
            raise

    def savepoint(self, sid: str | None = None) -> Savepoint:
        """A savepoint (peewee's), whose SAVEPOINT, RELEASE and ROLLBACK TO go as transaction control."""
        return Savepoint(self, sid)

    def control(self, sql: str) -> None:
        """Send transaction control (a savepoint's statements) with nothing riding before it.

        What rides is for statements that read or write; sent before a ROLLBACK TO SAVEPOINT in a
        transaction a failed statement has aborted, it would fail, and the savepoint with it.
        """
        with __exception_wrapper__:
            self._watched(sql, lambda text: self._run(text, None, None, None, prefixed=False))

    def commit(self) -> None:
        """COMMIT on this thread's connection; a connection lost before or during it is SessionLost."""
        self._commit()  # failed, it is peewee's rollback next, which gives the connection back
        self._after_transaction()

    def rollback(self) -> None:
        """ROLLBACK on this thread's connection; on a lost connection the server already rolled back."""
        try:
            self._rollback()
        finally:
            self._after_transaction()

    def _after_transaction(self) -> None:
        """Inside a request scope, the connection goes back once the outermost transaction has ended."""
        scope = current_scope()
        if scope is not None and not self._state.transactions:
            self._release_in_scope(scope)

    def _commit(self) -> None:
        if self.is_closed():
            raise InterfaceError("Cannot commit, database connection not open.")
        conn = self._state.conn
        if _socket_readable(conn):  # the server said something while the transaction sat idle: is it gone?
            self._ping(conn)  # fails on a dead connection (and closes it); harmless inside the transaction
        if conn.closed:
            raise lost_before_commit()
        self._state.tenant_used = False
        try:
            with __exception_wrapper__:
                self._watched("COMMIT", lambda text: conn.cursor().execute(text, ()))  # (): a tag's %% is undoubled
        except (OperationalError, InterfaceError) as exc:
            if not conn.closed:
                raise
            raise lost_during_commit(exc) from exc

    def _rollback(self) -> None:
        if self.is_closed():
            raise InterfaceError("Cannot rollback, database connection not open.")
        conn = self._state.conn
        self._state.tenant_used = False
        if conn.closed:
            return
        try:
            with __exception_wrapper__:
                self._watched("ROLLBACK", lambda text: conn.cursor().execute(text, ()))
        except (OperationalError, InterfaceError):
            if not conn.closed:
                raise

    def _watched(self, sql: str, run: Any) -> Any:
        """`run(sql)`, watched as a statement when something observes (`kit.telemetry`)."""
        watch = _watch.active
        return run(sql) if watch is None else watch.statement(self.target, sql, run)

    def _replace_dead(self, cause: BaseException | None) -> None:
        """Swap this thread's dead connection for a new one, or raise SessionLost if it held session state."""
        state = self._state
        dead = state.conn
        lost = self._pool.session_of(dead) | ({OPEN_TRANSACTION} if state.raw_transaction else set())
        state.raw_transaction = False
        self._pool.putconn(dead, discard=True)
        if lost:
            self._pool.count("session_lost")
            reason = f" ({describe(cause)})" if cause is not None else ""
            log.warning("connection lost with session state (%s)%s", ", ".join(sorted(lost)), reason)
            raise lost_with_state(lost, cause) from cause
        try:
            state.conn = self._pool.getconn(verified=True)  # not another idle one that died alike
        except KitError:
            state.reset()
            raise
        except (OperationalError, InterfaceError) as exc:
            state.reset()
            raise DatabaseUnavailable(f"the database connection was lost and no new one could be opened "
                                      f"({describe(exc)}); nothing was re-sent") from exc

    def connection_context(self) -> Any:
        """peewee's connection block; inside a request scope none is needed, and this one holds nothing.

        The scope already holds a connection only per statement or transaction, and a framework may
        enter and leave the block on two threads (FastAPI runs a `def` dependency's halves so): the
        block is then a no-op on both, instead of peewee's per-thread bookkeeping failing on the second.
        """
        if current_scope() is not None:
            return _NoBlock()
        return super().connection_context()

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

    @contextlib.contextmanager
    def shared_across_threads(self) -> Iterator[None]:
        """Inside this block every thread uses one connection and one transaction (`kit.testing`'s `db` fixture).

        A test's transaction is then the one the code it calls runs in, whatever thread runs it (a web
        framework's test client runs the app in a thread of its own); nested `atomic()` blocks are
        savepoints of it. Callers take turns: two threads sending at once share one connection.
        """
        if not self.is_closed() or self.in_transaction():
            raise KitError("shared_across_threads() begins with no connection open in this thread; close it first")
        previous = self._state
        self._state = SharedState()
        try:
            yield
        finally:
            self._state = previous

    def dispose(self) -> None:
        """In a forked child: drop every connection inherited from the parent without touching its socket."""
        conns = self._pool.forget()
        if not self._state.closed:
            conns.append(self._state.conn)
        silence(conns)
        self._state = ThreadState()
        self._lock = threading.Lock()

    def pool_stats(self) -> dict[str, Any]:
        """Counts: in_use, idle, waiting, min, max, and since start the events `kit.pool.ConnectionPool.stats` names."""
        return self._pool.stats()



def _left_on_session(kind: str | None) -> str | None:
    """The session state a statement of `kind` leaves (`kit.db.statements`); None for transaction control."""
    return None if kind is RAW_BEGIN or kind is RAW_END else kind


class Savepoint(_savepoint):
    """peewee's savepoint, its statements sent by the database as transaction control (`PooledDatabase.control`)."""

    def _begin(self) -> None:
        self.db.control(f"SAVEPOINT {self.quoted_sid};")

    def commit(self, begin: bool = True) -> None:
        """RELEASE the savepoint (and, with `begin`, take a new one)."""
        self.db.control(f"RELEASE SAVEPOINT {self.quoted_sid};")
        if begin:
            self._begin()

    def rollback(self, begin: bool = True) -> None:
        """ROLLBACK TO the savepoint (and, with `begin`, take it again)."""
        self.db.control(f"ROLLBACK TO SAVEPOINT {self.quoted_sid};")
        if begin:
            self._begin()


class _NoBlock(_callable_context_manager):
    """`connection_context()` inside a request scope: a block (and decorator) that holds nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _max_size(max_connections: Any, max_size: Any) -> Any:
    """One maximum from peewee's `max_connections` and psycopg_pool's `max_size` (equal if both given)."""
    if max_size is None:
        return max_connections
    if max_connections not in (None, 20) and max_connections != max_size:
        raise PoolSettingError(f"max_connections ({max_connections}) and max_size ({max_size}) disagree; give one")
    return max_size

