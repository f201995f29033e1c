"""`AsyncDatabase`: the asyncio database, on peewee's own `playhouse.pwasyncio` (asyncpg).

Every model (the kit's and a project's own, on `kit.models.BaseModel`) runs on it from `async def`,
bound to nothing by hand, while the sync `kit.db.database` serves threads in the same process:

    await database.get(Member.select().where(Member.id == member_id))
    rows = await database.list(DocumentChunk.select().limit(10))
    async with database.atomic():
        ...
    await database.run(OrgCredit.consume, org, 1)  # any sync kit operation, run without blocking the loop

How: `run()` (which every helper uses) marks its greenlet as this database's, and a model's
`_meta.database` reads that mark (`kit.db.bridge`), so what runs inside sees this
database; elsewhere it is still `kit.db.database`. A query made outside `run()` is bound here by the
helpers (`get`, `get_by_id`, `list`, `first`, `scalar`, `count`, `exists`, `aexecute`).

It keeps the sync pool's promises, with the same rules (`kit.db.pooled`, `kit.db.outcomes`):

- Settings from the same environment: DATABASE_URL (else the embedded server), DATABASE_POOL_MIN/MAX,
  DATABASE_POOL_IDLE_TIMEOUT, DATABASE_POOL_TIMEOUT, DATABASE_STATEMENT_TIMEOUT, DATABASE_POOLER.
- A connection is held only while a statement runs or a transaction is open (or while it holds
  session state): a request that awaits something else for ten seconds holds no connection.
- A statement outside a transaction that found its session already ended by the server is re-sent
  once on a new connection, within `RESEND_WINDOW`; one that may have run never is. Session state lost
  with a connection is `SessionLost`; every outage is the `DatabaseUnavailable` family.
- Each statement's time limit: the server's `statement_timeout` from the connection's start, and the
  driver's `command_timeout` a second later, which also holds behind PgBouncer; past it,
  `StatementTimeout`.
- The tenant context (`kit.tenant(org)`): every statement runs as that organization, in the same
  transaction as its setting.
- Behind a transaction-pooling PgBouncer: asyncpg's prepared-statement cache is off, and what would
  leave session state on a shared connection is refused (`SessionStateRefused`), as on the sync path.
- Vectors travel in pgvector's binary format both ways (`kit.vector.wire`), numpy arrays in and out.
- Reads go to replicas by the sync rules (`kit.aio.reads`); the bulk paths run on a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2.extensions
from peewee import (  # type: ignore[attr-defined]  # __exception_wrapper__: not in its stubs
    DatabaseError,
    ModelSelect,
    OperationalError,
    SelectBase,
    __exception_wrapper__,
)
from playhouse.pwasyncio import (
    AsyncPostgresqlDatabase,
    CursorAdapter,
    greenlet_spawn,
)

from kit.aio.connection import (
    KitConnection,
    json_decoder,
    json_encoder,
    session_ended,
    settle,
    split_settings,
    vector_codec,
)
from kit.aio.reads import AsyncReadRouting
from kit.aio.transaction import Atomic
from kit.config import Settings, check_database_url, load_settings, mask_password
from kit.db.bridge import leave, stand_in
from kit.db.clean import leaves_nothing
from kit.db.contract import (
    CITUS_SQL,
    alone_prefix,
    begin_with,
    cannot_connect,
    carried,
    in_kit_words,
    limit_sql,
    lost_during_commit,
    lost_in_transaction,
    lost_with_state,
    pool_exhausted,
    pooler_refuses,
    riding_settings,
    several_statements,
    tenant_rides,
)
from kit.db.outcomes import is_outage, sqlstate
from kit.db.pooled import RESEND_WINDOW
from kit.db.reads import plain_read
from kit.db.retry import DEFAULT_TRIES, check_tries, refuse_nested, wait_before_next
from kit.db.rows import not_found
from kit.db.shapes import ShapedStatements
from kit.db.statements import NO_TRANSACTION_BLOCK, OPEN_TRANSACTION, RAW_BEGIN, RAW_END, session_change
from kit.errors import (
    KitError,
    PoolExhausted,
    describe,
)
from kit.pool import ConnectionPool
from kit.roles import APP
from kit.telemetry import watch as _watch
from kit.telemetry.watch import Target, async_databases, note_resent
from kit.tenancy import crossing_tenants, current_tenant, require_tenant

log = logging.getLogger("kit.db")


class _OneLine(logging.Filter):
    """asyncpg's pool logs a failed reconnect with its traceback; an operator gets the one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fold the exception into the message (password masked) and drop the traceback."""
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage()}: {describe(record.exc_info[1])}", None
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLine())

T = TypeVar("T")
APPLICATION_NAME = "kit"
CONNECT_TIMEOUT_S = 10
COMMAND_GRACE_S = 1.0  # the driver's own limit waits this much past the server's, which speaks first
STATEMENT_CACHE = 256  # asyncpg's prepared statements per connection (0 behind PgBouncer)


class AsyncDatabase(AsyncReadRouting, ShapedStatements, AsyncPostgresqlDatabase):
    """The kit's asyncio PostgreSQL database: pwasyncio on asyncpg, configured from the environment on first use."""

    is_door = False  # the door's own database: `all_tenants()` statements of its parent run here
    _pool: Any  # pwasyncio's: the asyncpg pool of the running loop (None until made)

    def __init__(self, url: str | None = None, settings: Settings | None = None, stands_for: Any = None, *,
                 replicas: Any = None, door_url: str | None = None) -> None:
        super().__init__(None)
        if stands_for is None:
            from kit.db.configured import database as stands_for
        self.stands_for = stands_for  # models bound to this sync database run here inside run()
        self._given_url, self._given_settings = url, settings
        self.settings: Settings | None = None
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counts = {"resent": 0, "session_lost": 0, "timeouts": 0, "replica_fallbacks": 0, "leaks": 0}
        self._waiting = 0  # tasks waiting for a connection
        self._leak_after: float | None = None
        self._given_replicas: Any = replicas  # URLs to read from (None: DATABASE_REPLICA_URLS)
        self._given_door = door_url  # the door's URL (None: DATABASE_DOOR_URL, `kit.db.configured.resolve_url`)
        self._door: AsyncDatabase | None = None
        self._sessions: dict[int, set[str]] = {}  # server process id: the session state its connection holds
        self._unclean: set[int] = set()  # server process ids that ran what `kit.db.clean` cannot prove stateless
        self._target: Target | None = None
        self.citus: bool | None = None  # the server is Citus (`kit.db.contract`): read on the first connection
        async_databases.add(self)

    # -- configuration and the pool -------------------------------------------------------------

    def configure(self, url: str | None = None, settings: Settings | None = None, replicas: Any = None,
                  door_url: str | None = None) -> None:
        """Point at `url` with `settings` (default: the environment's), reading from `replicas` (default: theirs)."""
        self._given_url, self._given_settings, self._given_replicas = url, settings, replicas
        self._given_door, self._door = door_url, None
        self.settings = None
        self.url = None
        self._target = None
        self.citus = None

    def _configured(self) -> Settings:
        """The settings, read and the URL resolved on first use."""
        if self.settings is None:
            from kit.db.configured import resolve_url

            settings = self._given_settings or load_settings()
            self.url = self._given_url or resolve_url(settings, APP)
            self.database = mask_password(self.url)
            self._pool_size, self._pool_min_size = settings.pool_max, settings.pool_min
            self._acquire_timeout = settings.pool_timeout_ms / 1000 or None
            self._leak_after = settings.pool_leak_threshold_ms / 1000 or None
            self.settings = settings
            urls = settings.replica_urls if self._given_replicas is None else self._given_replicas
            if urls and not self.is_replica:
                self._set_replicas([check_database_url(u, "replica URL") for u in urls], settings)
        return self.settings

    @property
    def target(self) -> Target:
        """The server this database's statements go to, as telemetry names it (host, port, database; no password)."""
        if self._target is None:
            self._configured()
            self._target = Target.of(psycopg2.extensions.parse_dsn(self.url),
                                     "replica" if self.is_replica else "primary")
        return self._target

    @property
    def pool_name(self) -> str:
        """The pool's name in metrics and log lines: its server's, marked as the asyncio pool's."""
        return f"{self.target.pool_name()} (asyncio)"

    @property
    def pooler(self) -> str | None:
        """"pgbouncer" behind a transaction-pooling PgBouncer, else None."""
        return self._configured().pooler

    @property
    def statement_timeout(self) -> float | None:
        """Seconds each statement may run (None: the server's own)."""
        return self._configured().statement_timeout_ms / 1000 or None

    async def _create_pool_async(self) -> Any:
        import asyncpg

        settings = self._configured()
        limit = self.statement_timeout
        server_settings = {"application_name": APPLICATION_NAME}
        if limit and not self.pooler:  # behind PgBouncer a startup setting is refused; the driver's limit holds
            server_settings["statement_timeout"] = str(max(1, round(limit * 1000)))
        self._loop = asyncio.get_running_loop()
        try:
            return await asyncpg.create_pool(
                dsn=self.url, min_size=min(self._pool_min_size, self._pool_size), max_size=self._pool_size,
                max_inactive_connection_lifetime=settings.pool_idle_timeout_ms / 1000,
                init=self._init_connection, reset=self._reset_connection, server_settings=server_settings,
                statement_cache_size=0 if self.pooler else STATEMENT_CACHE,
                command_timeout=limit + COMMAND_GRACE_S if limit else None, timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise cannot_connect(self.database, exc) from exc

    async def _init_connection(self, conn: Any) -> None:
        """Set a new connection up: JSON and pgvector codecs; the first one also reads whether the server is Citus."""
        if self.citus is None:
            self.citus = bool(await conn.fetchval(CITUS_SQL))
        for name, head in (("json", b""), ("jsonb", b"\x01")):  # jsonb's binary form: version 1, then the text
            await conn.set_type_codec(name, schema="pg_catalog", format="binary", encoder=json_encoder(head),
                                      decoder=json_decoder(len(head)))
        for name, element in (("vector", ">f4"), ("halfvec", ">f2")):
            encode, decode = vector_codec(element)
            try:
                await conn.set_type_codec(name, schema="public", encoder=encode, decoder=decode, format="binary")
            except ValueError:  # pgvector not installed in this database (halfvec: before 0.7)
                pass

    async def _reset_connection(self, conn: Any) -> None:
        """Clear what a borrower left on a connection: DISCARD ALL when it ran anything not proven stateless."""
        pid = conn.get_server_pid()
        held, unclean = self._sessions.pop(pid, None), pid in self._unclean
        self._unclean.discard(pid)
        if (held or unclean) and not self.pooler:
            await conn.execute("DISCARD ALL")
            conn._drop_local_statement_cache()  # DISCARD ALL deallocated asyncpg's prepared statements too

    async def _ensure_pool(self) -> Any:
        """The pool of the running event loop (a pool made on a loop since closed is dropped)."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is not loop:
            old, self._pool = self._pool, None
            if self._loop is None or self._loop.is_closed():
                old.terminate()
        return await super()._ensure_pool()

    async def _acquire_conn_async(self) -> KitConnection:
        """A connection from the pool (made on first use), waiting at most DATABASE_POOL_TIMEOUT for one."""
        pool = self._pool
        if pool is None or self._loop is not asyncio.get_running_loop():
            try:
                pool = await asyncio.wait_for(self._ensure_pool(), timeout=CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise OperationalError(f"timed out connecting to the database ({CONNECT_TIMEOUT_S} s)") from None
        conn = await self._pool_acquire(pool)
        conn._pool = pool  # as pwasyncio tags it: a late release finds a pool replaced since
        return conn

    async def _pool_acquire(self, pool: Any) -> KitConnection:
        import asyncpg

        if self.is_replica and pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size():
            raise PoolExhausted(f"replica {self.database}: every connection is in use", pool_full=True)
        began = time.monotonic()
        for _ in range(3):  # a connection lost as it is handed over is taken back by asyncpg: take another
            self._waiting += 1
            try:
                async with asyncio.timeout(self._acquire_timeout):  # no task made per checkout, as wait_for does
                    conn = await pool.acquire()
            except TimeoutError:
                self.counts["timeouts"] += 1
                raise OperationalError(f"Timed out acquiring connection from pool (after "
                                       f"{self._acquire_timeout} s)") from None
            finally:
                self._waiting -= 1
            try:
                held = KitConnection(conn, self._sessions.setdefault(conn.get_server_pid(), set()))
            except asyncpg.InterfaceError:
                continue
            held.taken = time.monotonic()
            if ConnectionPool.observer is not None:
                ConnectionPool.observer.waited(self.pool_name, held.taken - began)
            if self._leak_after:
                self._watch_for_leak(held, self._leak_after)
            return held
        raise OperationalError("every connection the pool handed over was lost at once")

    def _watch_for_leak(self, held: KitConnection, after: float) -> None:
        """Report `held` once if it is still checked out `after` seconds on, with the stack that took it."""
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("kit.aio", "playhouse")):
            frame = frame.f_back
        held.taken_by = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=30, lookup_lines=False)
        held.leak_timer = asyncio.get_running_loop().call_later(after, self._report_leak, held,
                                                                 asyncio.current_task())

    def _report_leak(self, held: KitConnection, task: Any) -> None:
        held.reported = True
        self.counts["leaks"] += 1
        taken = "".join(held.taken_by.format()).rstrip()
        log.warning("possible connection leak: a connection of pool %s has been checked out for %.1f s (leak_after "
                    "%g s) by task %s; it was taken at:\n%s", self.pool_name, time.monotonic() - held.taken,
                    self._leak_after, task.get_name() if task is not None else "(none)", taken)

    def _settle_checkout(self, conn: KitConnection) -> None:
        """What a connection's return ends: its leak watch, and the pool's use-time metric."""
        if conn.leak_timer is not None:
            conn.leak_timer.cancel()
            conn.leak_timer = None
            if conn.reported:
                log.warning("a connection reported as leaked was given back after %.1f s",
                            time.monotonic() - conn.taken)
        if ConnectionPool.observer is not None and conn.taken:
            ConnectionPool.observer.used(self.pool_name, time.monotonic() - conn.taken)
            conn.taken = 0.0

    async def _release_conn(self, conn: KitConnection) -> None:
        """Give a connection back to its pool (closed if that pool is gone), ending its checkout's watch."""
        self._settle_checkout(conn)
        await super()._release_conn(conn)

    async def _pool_release(self, conn: KitConnection) -> None:
        """Give a connection back; a dead one asyncpg has already taken back is let go without a word."""
        if conn.conn is None:
            return
        if conn.stale():
            try:
                await self._pool.release(conn.conn)
            except Exception:  # asyncpg released it itself when the connection was lost
                pass
            return
        await super()._pool_release(conn)

    async def aconnect(self) -> KitConnection:
        """This task's connection, from the pool if it has none (failing to get one: DatabaseUnavailable)."""
        held = self._state.conn
        if held is not None and held.stale():  # found dead between statements: never replaced silently
            if self._state.transactions:
                raise lost_in_transaction(None)
            await self._drop(held)  # raises SessionLost if it held session state
        try:
            return await super().aconnect()
        except KitError:
            raise
        except Exception as exc:  # no connection was had, so nothing was sent (a refusal at start-up, 57P03, too)
            if "acquiring connection" in str(exc):
                raise pool_exhausted(exc, self._pool_size, self._configured().pool_timeout_ms) from None
            raise cannot_connect(self.database, exc) from exc

    def pool_stats(self) -> dict[str, Any]:
        """Counts: in_use, idle, min, max (the configured sizes before first use), resent, session_lost, timeouts."""
        self._configured()
        pool = self._pool
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        stats = {"in_use": size - idle, "idle": idle, "waiting": self._waiting, "min": self._pool_min_size,
                 "max": self._pool_size, **self.counts}
        if self._router is not None:
            stats["servers"] = [{"server": "primary", **stats}, *(r.stats() for r in self._router.replicas)]
        return stats

    async def close_pool(self) -> None:
        """Close the pool (and each replica's, and the door's), waiting for connections in use to come back."""
        for replica in self._router.replicas if self._router is not None else ():
            await replica.database.close_pool()
        if self._door is not None:
            await self._door.close_pool()
        await super().close_pool()

    # -- all_tenants(): the door's own database ---------------------------------------------------

    def _crossing(self) -> bool:
        """True when this context's statements go through the door (inside `all_tenants()`)."""
        return not self.is_door and crossing_tenants()

    def door(self) -> AsyncDatabase:
        """The database `all_tenants()` statements run on: the door's URL (`kit_door`), a small pool of its own."""
        if self._door is None:
            from dataclasses import replace

            from kit.db.configured import DOOR_POOL_MAX, door_for

            settings = self._configured()
            url = door_for(self._given_url, self._given_door, settings)
            door = type(self)(url, replace(settings, replica_urls=(), pool_min=0, pool_max=DOOR_POOL_MAX),
                              stands_for=None, replicas=())
            door.is_door = True
            self._door = door
        return self._door

    # -- models: bound to this database inside run() -------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run sync code (any kit operation, peewee queries) on this database without blocking the event loop."""
        token = stand_in(self, self.stands_for)
        try:
            return await greenlet_spawn(fn, *args, **kwargs)
        finally:
            leave(token)

    async def get(self, query: Any) -> Any:
        """The one row of `query` (peewee's `DoesNotExist` when there is none)."""
        if self._reads_directly(query):
            clone = query.paginate(1, 1)  # as peewee's get() writes it
            rows = await self._rows(clone)
            try:
                return rows.iterate()
            except StopIteration:
                raise not_found(clone) from None
        return await self.run(query.bind(self).get)

    async def get_by_id(self, model: Any, pk: Any) -> Any:
        """`model.get_by_id(pk)` on this database: the row with this primary key, or the model's `DoesNotExist`."""
        query = model.kit_by_id(pk) if hasattr(model, "kit_by_id") else None
        if query is None or not self._reads_directly(query):
            return await self.run(model.get_by_id, pk)
        rows = await self._rows(query)
        try:
            return rows.iterate()
        except StopIteration:
            raise not_found(query) from None

    async def first(self, query: Any, n: int = 1) -> Any:
        """The first row of `query` (the first `n` when n > 1), or None."""
        if self._reads_directly(query):
            clone = query.clone()
            clone._limit = n  # as peewee's first() sets it, here on a copy
            found = (await self._rows(clone))[:n]
            return (found[0] if n == 1 else found) if found else None
        return await self.run(query.bind(self).first, n=n)

    async def list(self, query: Any) -> list[Any]:
        """Every row of `query`."""
        if self._reads_directly(query):
            return list(await self._rows(query.clone()))
        return await self.run(list, query.bind(self))

    def _reads_directly(self, query: Any) -> bool:
        """A plain model SELECT for the primary, outside the door: read here, with no greenlet (`_rows`).

        The same statement and rows as through `run()`: the statement cache's SQL (`kit.db.shapes`) sent by
        `aexecute_sql` (the one contract), the rows by the query's own cursor wrapper. Anything else (a
        read a replica may serve, FOR UPDATE, `all_tenants()`) goes through `run()`.
        """
        return isinstance(query, ModelSelect) and plain_read(query) and not self._crossing() \
            and not self._reads_here(query)

    async def _rows(self, query: Any) -> Any:
        """Run a plain model SELECT on this database; its cursor wrapper (a read: nothing for replicas to wait for)."""
        query._cursor_wrapper = None
        sql, params = self.sql_of(query)
        return query._get_cursor_wrapper(await self.aexecute_sql(sql, params, writes=False))

    async def scalar(self, query: Any) -> Any:
        """The first column of the first row of `query`."""
        return await self.run(query.bind(self).scalar)

    async def count(self, query: Any) -> int:
        """How many rows `query` returns."""
        return await self.run(query.bind(self).count)

    async def exists(self, query: Any) -> bool:
        """Whether `query` returns a row."""
        return await self.run(query.bind(self).exists)

    def execute(self, query: Any, commit: Any = None, **context: Any) -> Any:
        """Run a peewee query (a tenant table's write with no tenant context is refused first, as on the sync path)."""
        if self._crossing():
            return self.door().execute(query, commit, **context)
        if not isinstance(query, SelectBase) and current_tenant() is None and not crossing_tenants():
            require_tenant(query)
        return super().execute(query, commit, **context)

    def in_transaction(self) -> bool:
        """Whether this task is inside a transaction (the door's, inside `all_tenants()`)."""
        if self._crossing():
            return self.door().in_transaction()
        return super().in_transaction()

    def atomic(self, *args: Any, **kwargs: Any) -> Atomic:
        """A transaction (a savepoint inside one): `async with database.atomic():`, or `with` inside `run()`."""
        if self._crossing():
            return self.door().atomic(*args, **kwargs)
        return Atomic(self, *args, **kwargs)

    transaction = savepoint = atomic

    async def retry_transaction(self, fn: Callable[..., T], *args: Any, tries: int = DEFAULT_TRIES,
                                **kwargs: Any) -> T:
        """Run sync `fn` in one transaction; again (up to `tries` runs) when nothing was committed (`kit.db.retry`)."""
        check_tries(tries)

        def whole() -> T:
            if self.in_transaction():
                refuse_nested("retry_transaction")
            with self.atomic():
                return fn(*args, **kwargs)

        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.run(whole)
            except Exception as exc:
                wait = wait_before_next(exc, attempt, tries)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    # -- the bulk paths, on a thread ---------------------------------------------------------------

    async def copy_rows(self, model: Any, rows: Any, **kwargs: Any) -> int:
        """`kit.copy.copy_rows` (binary COPY, all or nothing) on a worker thread, in this context (tenant included).

        Binary COPY is the sync pool's (psycopg2's COPY protocol); the event loop goes on meanwhile.
        """
        from kit.copy import copy_rows

        return await asyncio.to_thread(functools.partial(self._on_sync_pool, copy_rows, model, rows, **kwargs))

    async def fetch_matrix(self, query: Any) -> tuple[Any, Any]:
        """`kit.vector.fetch_matrix` (binary COPY out into one matrix) on a worker thread, in this context."""
        from kit.vector import fetch_matrix

        return await asyncio.to_thread(self._on_sync_pool, fetch_matrix, query)

    def _on_sync_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on this worker thread with the sync pool; the thread's connection goes back when it returns."""
        try:
            return fn(*args, **kwargs)
        finally:
            if not self.stands_for.in_transaction():
                self.stands_for.close()

    # -- statements ------------------------------------------------------------------------------

    async def aexecute_sql(self, sql: str, params: Any = None, writes: bool = True) -> CursorAdapter:
        """Run one statement; re-sent once only when the server never ran it; failures in the kit's words.

        `writes` False: a read (`kit.aio.reads`), which the context's next reads need not wait for.
        Inside `all_tenants()` it runs through the door (`door()`).
        """
        if self._crossing():
            return await self.door().aexecute_sql(sql, params, writes)
        watch = _watch.active
        if watch is None:
            result = await self._aexecute(sql, params)
        else:
            tag = watch.tagged_statement(sql)[len(sql):]
            result = await watch.astatement(self.target, sql, lambda: self._aexecute(sql, params, tag))
        if writes and not self.in_transaction():  # done, and it may have written (a COMMIT sent as SQL too)
            self._note_write()
        return result

    async def _aexecute(self, sql: str, params: Any, tag: str = "") -> CursorAdapter:
        self._log_query(sql, params)
        start = time.perf_counter() if self.query_hooks else None
        try:
            result = await self._send(sql, params, tag=tag)
        except Exception as exc:
            if start is not None:
                self._notify_hooks(sql, params, start, exc)
            raise self._translate(exc) from exc
        if start is not None:
            self._notify_hooks(sql, params, start, None)
        return result

    async def _send(self, sql: str, params: Any, resent: bool = False, tag: str = "") -> CursorAdapter:
        """Send `sql` with what rides before it (and `tag` after); once more if the session had ended before it ran.

        Every rule is decided on `sql`, the caller's text; `tag` (a query-tag comment) is only sent.
        """
        conn = await self.aconnect()
        if resent:
            conn = await self._verified(conn)
        in_transaction = bool(self._state.transactions) or conn.raw_transaction
        kind = await self._before_sending(conn, sql, in_transaction)
        settings, body = split_settings(sql)
        sent = time.monotonic()
        try:
            if in_transaction:
                result = await self._in_transaction(conn, settings, body + tag, params)
            else:
                result = await self._alone(conn, settings, body + tag, params, kind)
        except Exception as exc:
            if resent or not await self._may_resend(exc, conn, in_transaction, time.monotonic() - sent):
                await self._after_loss(conn, in_transaction)
                raise
            return await self._send(sql, params, resent=True, tag=tag)
        if kind is RAW_BEGIN or kind is RAW_END:
            conn.raw_transaction, conn.tenant_used = kind is RAW_BEGIN, False
        if not self._state.transactions and not conn.raw_transaction and not conn.session:
            await self.aclose()  # nothing to keep: the connection goes back until the next statement
        return result

    def _limit_ms(self) -> int | None:
        """The statement time limit in ms (None: the server's)."""
        limit = self.statement_timeout
        return max(1, round(limit * 1000)) if limit else None

    async def _before_sending(self, conn: KitConnection, sql: str, in_transaction: bool) -> str | None:
        """Refuse what must not be sent (several statements alone, state a pooler would share); note what it leaves.

        Returns the statement's kind (`kit.db.statements.session_change`).
        """
        kind = session_change(sql)
        left = None if kind is RAW_BEGIN or kind is RAW_END else kind
        refused = (None if in_transaction else several_statements(sql, self._limit_ms())) or (
            pooler_refuses(left, sql, self.pooler, in_transaction) if left is not None else None)
        if refused is not None:
            if not self._state.transactions and not conn.raw_transaction and not conn.session:
                await self.aclose()
            raise refused
        if left is not None:
            conn.session.add(left)
        if not leaves_nothing(sql):
            self._unclean.add(conn.conn.get_server_pid())
        return kind

    async def _may_resend(self, exc: BaseException, conn: KitConnection, in_transaction: bool,
                          seconds: float) -> bool:
        """Whether a failed statement is sent again (`_never_ran`); if so, its dead connection is let go first."""
        if not conn.stale() and not isinstance(exc, KitError) and sqlstate(exc) is None:
            await settle()  # a driver error with no SQLSTATE: let the driver read a close the server sent
        if not self._never_ran(exc, conn, in_transaction, seconds):
            return False
        await self._drop(conn)
        self.counts["resent"] += 1
        note_resent()
        log.info("statement re-sent on a new connection: the server had ended the session before it ran (%s)",
                 describe(exc))
        return True

    async def _in_transaction(self, conn: KitConnection, settings: str, body: str, params: Any) -> CursorAdapter:
        """A statement inside a transaction: the riding settings and the tenant first (`kit.db.contract`)."""
        tenant, conn.tenant_used = tenant_rides(current_tenant(), conn.tenant_used)
        settings = riding_settings() + tenant + settings
        if settings:
            await conn.simple(carried(settings, bool(self.citus)))
        return await conn.execute(body, params)

    async def _alone(self, conn: KitConnection, settings: str, body: str, params: Any,
                     kind: str | None) -> CursorAdapter:
        """A statement that is its own transaction; with settings to ride along, one transaction around them."""
        riding = alone_prefix(body, current_tenant(), None)
        if riding or settings:  # behind PgBouncer the limit rides too; elsewhere it is the connection's default
            settings = (limit_sql(self._limit_ms()) if self.pooler else "") + riding + settings
        if not settings or kind is RAW_BEGIN or NO_TRANSACTION_BLOCK.match(body):
            return await conn.execute(body, params)
        return await self._in_own_transaction(conn, settings, body, params)

    async def _in_own_transaction(self, conn: KitConnection, settings: str, body: str, params: Any) -> CursorAdapter:
        """BEGIN with `settings`, the statement, COMMIT: what rides before a statement stays in its transaction."""
        for text in begin_with(settings, bool(self.citus)):
            await conn.simple(text)
        try:
            result = await conn.execute(body, params)
        except BaseException:
            if not conn.stale():
                await conn.simple("ROLLBACK")
            raise
        try:
            await conn.simple("COMMIT")
        except Exception as exc:
            if conn.stale():
                raise lost_during_commit(exc) from exc
            raise
        return result

    async def _verified(self, conn: KitConnection) -> KitConnection:
        """A connection proven alive by a round trip: a re-send never goes to another that died alike.

        The kill, restart or idle timeout that ended one idle connection often ended the pool's other
        idle ones too; as the sync pool does (`getconn(verified=True)`), the replacement is pinged, and
        one found dead is let go for the next, at most as many times as the pool has connections.
        """
        for _ in range(self._pool_size):
            try:
                await conn.simple("SELECT 1")
                return conn
            except Exception:  # noqa: BLE001 - dead: let it go and take another
                await self._drop(conn)
                conn = await self.aconnect()
        return conn

    def _never_ran(self, exc: BaseException, conn: KitConnection, in_transaction: bool, seconds: float) -> bool:
        """The re-send rule (`kit.db.pooled`): outside a transaction, no session state, session gone at once."""
        return (not in_transaction and not conn.session and not isinstance(exc, KitError)
                and conn.stale() and session_ended(sqlstate(exc)) and seconds <= RESEND_WINDOW)

    async def _after_loss(self, conn: KitConnection, in_transaction: bool) -> None:
        """A dead connection is let go (not inside a transaction, which still needs to end on it)."""
        if conn.stale() and not in_transaction:
            await self._drop(conn)

    async def _drop(self, conn: KitConnection) -> None:
        """Forget this task's connection and give it back to the pool (which closes a dead one)."""
        lost = set(conn.session) | ({OPEN_TRANSACTION} if conn.raw_transaction else set())
        for pid, session in list(self._sessions.items()):
            if session is conn.session:
                del self._sessions[pid]
        self._state.reset()
        conn.session.clear()
        try:
            await self._release_conn(conn)
        except Exception:  # a dead connection may refuse even to be released
            log.debug("releasing a dead connection failed", exc_info=True)
        if lost:
            self.counts["session_lost"] += 1
            raise lost_with_state(lost, None)

    def _translate(self, exc: BaseException) -> BaseException:
        """A failure in the kit's words (`kit.db.contract.in_kit_words`); anything else as peewee's class."""
        if isinstance(exc, KitError):
            return exc
        outage, in_transaction = self._what_failed(exc)
        said = in_kit_words(exc, limit_ms=self._limit_ms(), outage=outage, in_transaction=in_transaction,
                            timed_out_by_driver=isinstance(exc, asyncio.TimeoutError))
        if said is not None or isinstance(exc, DatabaseError):
            return said or exc
        return _wrapped(exc) or exc

    def _what_failed(self, exc: BaseException) -> tuple[bool, bool]:
        """What asyncpg says of a failure: (the connection is gone or refused, it was inside a transaction)."""
        conn = self._state.conn if self._has_task() else None
        closed = conn is None or conn.stale()
        gone = type(exc).__name__ in ("ConnectionDoesNotExistError", "InterfaceError") and closed
        in_transaction = self._has_task() and bool(self._state.transactions or (conn is not None
                                                                                and conn.raw_transaction))
        return is_outage(exc, closed) or gone, in_transaction

    @staticmethod
    def _has_task() -> bool:
        try:
            return asyncio.current_task() is not None
        except RuntimeError:
            return False


def _wrapped(exc: BaseException) -> BaseException | None:
    """A driver error as peewee's own class (IntegrityError, ...), as the sync path raises it; None if not one."""
    try:
        with __exception_wrapper__:
            raise exc
    except BaseException as new:  # noqa: BLE001 - the wrapper's translation is what is wanted
        return new if new is not exc else None
    return None


