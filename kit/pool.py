"""The connection pool behind `kit.db.database`: peewee's pooled PostgreSQL class with stricter semantics.

Pool settings, as in psycopg_pool:

- `min_size`: connections opened at first use and kept open.
- `max_size`: most connections checked out at once; the next caller waits.
- `max_idle`: seconds an idle connection above `min_size` is kept before it is closed.
- `timeout`: seconds a caller waits for a free connection before `PoolExhausted`.
- `check_after`: seconds of idleness after which a connection is pinged before it is handed out.

What the pool guarantees on top of peewee's `PooledPostgresqlExtDatabase`:

- A connection the server killed is never handed out. On every checkout (and before every statement
  outside a transaction on a connection a thread keeps) the socket is polled without blocking: a
  killed backend leaves it readable, and only then, or after `check_after` seconds idle, does the
  pool spend a round trip to test it. Recently used healthy connections cost no round trip.
- A connection comes back clean: an open or failed transaction is rolled back, and a connection
  whose session state may have changed is reset with DISCARD ALL before anyone else borrows it.
  "May have changed" is seen from the statements run through the database (SET, RESET, LISTEN,
  PREPARE, DECLARE, temp tables, set_config(), session advisory locks, in lower or upper case) and
  from any use of the raw driver connection (`database.connection()`) or a named cursor. A
  connection whose session did not change costs no extra round trip.
- `min_size` fits the server: on the pool's first connection, a `min_size` above what the server allows
  this role (`max_connections` minus reserved slots, or the role's CONNECTION LIMIT) raises
  `PoolTooLarge` before any more connections are opened, instead of taking every slot on the server.
- Fork safety: a child process drops the parent's connections without touching their sockets.
- A connection held by a thread that has ended is reclaimed when the pool runs out.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from peewee import InterfaceError, OperationalError, __exception_wrapper__, _ConnectionLocal
from playhouse.pool import MaxConnectionsExceeded
from playhouse.postgres_ext import PooledPostgresqlExtDatabase, PostgresqlExtDatabase

from kit.config import KitError


class PoolExhausted(MaxConnectionsExceeded):
    """No connection became free within the pool timeout."""


class PoolTooLarge(KitError):
    """`min_size` is more connections than the server allows this role."""


CONNECTION_BUDGET_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
       r.rolconnlimit, r.rolname
FROM pg_roles r WHERE r.rolname = current_user
"""


class _NoFreeSlot(Exception):
    """Internal: every connection is checked out; the caller should wait."""


# Statements that change session state which would otherwise leak to the next borrower.
# SET LOCAL / SET TRANSACTION / SET CONSTRAINTS and pg_advisory_xact_lock end with the transaction.
_SESSION_STATEMENT = re.compile(
    r"\s*(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b|listen\b|prepare\b|declare\b|load\b"
    r"|create\s+(?:(?:global|local)\s+)?temp)",
    re.IGNORECASE,
)
_SESSION_FUNCTIONS = ("set_config", "SET_CONFIG", "advisory_lock", "ADVISORY_LOCK")


def _changes_session(sql: str) -> bool:
    """True when a statement may leave session state behind (checked in microseconds, even for long SQL)."""
    return _SESSION_STATEMENT.match(sql) is not None or any(name in sql for name in _SESSION_FUNCTIONS)


@dataclass(eq=False)
class _Slot:
    """One pooled connection and what the pool knows about it."""

    conn: Any
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    checked_out: float = 0.0
    dirty: bool = False
    owner: threading.Thread | None = None


def _socket_readable(conn: Any) -> bool:
    """True when the server sent something (or closed) while the connection sat idle."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, Exception):  # a closed connection has no usable fileno
        return True


class PooledDatabase(PooledPostgresqlExtDatabase):
    """A pooled PostgreSQL database (postgres_ext features, JSONB included) with the semantics above."""

    def __init__(
        self,
        database: str | None,
        min_size: int = 2,
        max_size: int = 10,
        max_idle: float = 30.0,
        timeout: float = 10.0,
        check_after: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self._pool_init_state()
        self.min_size, self.max_size = min_size, max_size
        self.max_idle, self.timeout, self.check_after = max_idle, timeout, check_after
        super().__init__(database, max_connections=max_size, timeout=timeout, **kwargs)
        _track_forks(self)

    def _pool_init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Slot] = []  # a stack: the most recently used is reused first
        self._slots: dict[int, _Slot] = {}  # id(conn) -> slot, for checked-out connections
        self._opening = 0
        self._budget_checked = False
        self._reaper: threading.Thread | None = None
        self._stats = dict.fromkeys(("waits", "timeouts", "opened", "closed", "checks", "resets"), 0)

    def init(self, database: str | None, **kwargs: Any) -> None:
        """Point the pool at `database` (a URL), closing what it holds; pool settings may be passed too."""
        for name in ("min_size", "max_size", "max_idle", "timeout", "check_after"):
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
        kwargs.setdefault("max_connections", self.max_size)
        kwargs.setdefault("timeout", self.timeout)
        if hasattr(self, "_cond"):
            self.close_all()
        self._budget_checked = False  # another server, or another min_size: check again
        super().init(database, **kwargs)

    # -- checkout ---------------------------------------------------------------------------------

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check a connection out for this thread, waiting up to `timeout` seconds for a free one."""
        # Like peewee's Database.connect, minus its database-wide lock: the pool has its own, and a
        # slow connection attempt in one thread must not hold up other threads' checkouts and releases.
        if self.deferred:
            raise InterfaceError("Error, database must be initialized before opening a connection.")
        if not self._state.closed:
            if reuse_if_open:
                return False
            raise OperationalError("Connection already opened.")
        conn = self._wait_for_connection()
        self._state.set_connection(conn)
        if self.server_version is None:
            self._set_server_version(conn)
        self._initialize_connection(conn)
        return True

    def _wait_for_connection(self) -> Any:
        deadline = None
        while True:
            try:
                with __exception_wrapper__:
                    return self._connect()
            except _NoFreeSlot:
                pass
            now = time.monotonic()
            with self._cond:
                if deadline is None:
                    deadline = now + self.timeout
                    self._stats["waits"] += 1
                if self._reclaim_from_dead_threads() or self._has_room():
                    continue
                if now >= deadline:
                    self._stats["timeouts"] += 1
                    raise PoolExhausted(
                        f"connection pool exhausted: all {self.max_size} connections "
                        f"(DATABASE_POOL_MAX={self.max_size}) stayed checked out for "
                        f"{self.timeout:g}s (DATABASE_POOL_TIMEOUT={self.timeout * 1000:g} ms)"
                    )
                self._cond.wait(deadline - now)

    def close(self) -> bool:
        """Return this thread's connection to the pool (peewee's close, minus the database-wide lock)."""
        if self.deferred:
            raise InterfaceError("Error, database must be initialized before opening a connection.")
        if self.in_transaction():
            raise OperationalError("Attempting to close database while transaction is open.")
        is_open = not self._state.closed
        try:
            if is_open:
                with __exception_wrapper__:
                    self._close(self._state.conn)
        finally:
            self._state.reset()
        return is_open

    def _has_room(self) -> bool:
        return bool(self._idle) or len(self._slots) + self._opening < self.max_size

    def _connect(self) -> Any:
        """Hand out a live idle connection, or open one if there is room; `_NoFreeSlot` when full."""
        while True:
            with self._cond:
                slot = self._check_out(self._idle.pop()) if self._idle else None
                if slot is None:
                    if len(self._slots) + self._opening >= self.max_size:
                        raise _NoFreeSlot()
                    self._opening += 1
            if slot is None:
                break
            if not self._is_dead(slot):
                return slot.conn
            with self._cond:
                del self._slots[id(slot.conn)]
                self._discard(slot)
        slot = self._open_slot()
        extra = 0
        with self._cond:
            self._check_out(slot)
            # First use, or after dead connections were dropped: top the pool up to min_size, idle.
            extra = max(0, self.min_size - len(self._slots) - len(self._idle) - self._opening)
            self._opening += extra
        self._open_idle(extra)
        self._start_reaper()
        return slot.conn

    def _check_budget(self, conn: Any) -> None:
        """Raise PoolTooLarge when `min_size` is more than the server allows this role (once per pool)."""
        with conn.cursor() as cursor:
            cursor.execute(CONNECTION_BUDGET_SQL)
            most, reserved, role_limit, role = cursor.fetchone()
        if not conn.autocommit:
            conn.rollback()
        allowed = most - reserved if role_limit < 0 else min(most - reserved, role_limit)
        if self.min_size > allowed:
            limit = (f"max_connections {most} minus {reserved} reserved" if role_limit < 0 or role_limit >= most
                     - reserved else f"the role's CONNECTION LIMIT {role_limit}")
            raise PoolTooLarge(f"min_size {self.min_size} is more connections than the server allows role {role} "
                               f"({allowed}: {limit}); lower it")
        self._budget_checked = True

    def _open_slot(self) -> _Slot:
        """Open a connection for a slot already reserved in `_opening` (checking the budget on the first)."""
        try:
            conn = PostgresqlExtDatabase._connect(self)
            if not self._budget_checked:
                try:
                    self._check_budget(conn)
                except BaseException:
                    self._close_raw(conn)
                    raise
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            self._stats["opened"] += 1
        return _Slot(conn)

    def _open_idle(self, count: int) -> None:
        """Open `count` reserved connections straight into the idle stack (warming up to `min_size`)."""
        for opened in range(count):
            try:
                slot = self._open_slot()
            except Exception:  # the caller has its connection; the rest open on demand later
                with self._cond:
                    self._opening -= count - opened - 1
                return
            with self._cond:
                self._idle.insert(0, slot)
                self._cond.notify()

    def _check_out(self, slot: _Slot) -> _Slot:
        slot.owner = threading.current_thread()
        slot.checked_out = time.monotonic()
        self._slots[id(slot.conn)] = slot
        return slot

    def _is_dead(self, slot: _Slot) -> bool:
        """Cheap test first (local status, a non-blocking poll); a round trip only when in doubt."""
        conn = slot.conn
        if conn.closed or self._adapter.txn_status(conn) == self._adapter.txn_unknown:
            return True
        if not _socket_readable(conn) and time.monotonic() - slot.last_used < self.check_after:
            return False
        with self._cond:
            self._stats["checks"] += 1
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return False
        except Exception:
            return True

    # -- a thread that keeps its connection -------------------------------------------------------

    def cursor(self, named_cursor: Any = None) -> Any:
        """A cursor on this thread's connection, swapped for a fresh one first if the server dropped it."""
        state = self._state
        if not state.closed and not state.transactions:
            conn = state.conn
            if conn.closed or (
                _socket_readable(conn) and self._adapter.txn_status(conn) == self._adapter.txn_idle
            ):
                slot = self._slots.get(id(conn))
                if slot is not None and (conn.closed or self._is_dead(slot)):
                    state.conn = self._replace(slot)
        if named_cursor:
            self._mark_dirty()
        return super().cursor(named_cursor)

    def _replace(self, slot: _Slot) -> Any:
        """Swap a dead checked-out connection for a new one; if that fails the slot stays, to retry."""
        self._close_raw(slot.conn)
        new = _Slot(PostgresqlExtDatabase._connect(self))
        with self._cond:
            del self._slots[id(slot.conn)]
            self._stats["closed"] += 1
            self._stats["opened"] += 1
            return self._check_out(new).conn

    def connection(self) -> Any:
        """This thread's driver connection; what is done with it directly is reset on release."""
        conn = super().connection()
        self._mark_dirty()
        return conn

    def execute_sql(self, sql: str, params: Any = None, named_cursor: Any = None) -> Any:
        """Run one statement, noting when it changes session state that must not leak."""
        if _changes_session(sql):
            cursor = super().execute_sql(sql, params, named_cursor)
            self._mark_dirty()
            return cursor
        return super().execute_sql(sql, params, named_cursor)

    def _mark_dirty(self) -> None:
        if not self._state.closed:
            slot = self._slots.get(id(self._state.conn))
            if slot is not None:
                slot.dirty = True

    # -- check-in ---------------------------------------------------------------------------------

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        """Return a connection: roll back, reset if its session changed, and push it on the idle stack."""
        with self._cond:
            slot = self._slots.pop(id(conn), None)
            if slot is None:
                if close_conn:
                    self._close_raw(conn)
                return
            slot.owner = None
            if close_conn or not self._clean(slot):
                self._discard(slot)
            else:
                slot.last_used = time.monotonic()
                self._idle.append(slot)
            self._cond.notify()

    def _clean(self, slot: _Slot) -> bool:
        """Roll back a leftover transaction and reset session state; False when it cannot be reused."""
        conn = slot.conn
        if conn.closed or not self._adapter.is_connection_reusable(conn):
            return False
        if slot.dirty:
            try:
                with conn.cursor() as cur:
                    cur.execute("DISCARD ALL")
            except Exception:
                return False
            slot.dirty = False
            self._stats["resets"] += 1
        return True

    def _discard(self, slot: _Slot) -> None:
        self._close_raw(slot.conn)
        self._stats["closed"] += 1

    def _reclaim_from_dead_threads(self) -> bool:
        """Take back connections whose owning thread ended without closing them (under `_cond`)."""
        lost = [s for s in self._slots.values() if s.owner is not None and not s.owner.is_alive()]
        for slot in lost:
            del self._slots[id(slot.conn)]
            self._discard(slot)
        return bool(lost)

    # -- idle timeout -----------------------------------------------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            ref = weakref.ref(self)
            self._reaper = threading.Thread(target=_reap_idle, args=(ref,), name="kit-pool-reaper", daemon=True)
            self._reaper.start()

    def _close_expired(self) -> float:
        """Close idle connections above `min_size` idle for `max_idle`; seconds until the next may expire."""
        with self._cond:
            now = time.monotonic()
            while self._idle and len(self._idle) + len(self._slots) > self.min_size:
                oldest = self._idle[0]
                wait = oldest.last_used + self.max_idle - now
                if wait > 0:
                    return wait
                self._idle.pop(0)
                self._discard(oldest)
            return self.max_idle if self.max_idle > 0 else 1.0

    # -- housekeeping -----------------------------------------------------------------------------

    def pool_stats(self) -> dict[str, int]:
        """Counts: in_use, idle, min, max, and since start waits, timeouts, opened, closed, checks, resets."""
        with self._cond:
            return {
                "in_use": len(self._slots),
                "idle": len(self._idle),
                "min": self.min_size,
                "max": self.max_size,
                **self._stats,
            }

    def close_idle(self) -> None:
        """Close every idle connection (checked-out ones are left alone)."""
        with self._cond:
            idle, self._idle = self._idle, []
            for slot in idle:
                self._discard(slot)

    def close_all(self) -> None:
        """Close every connection, including those checked out by other threads (they will fail)."""
        if not self.is_closed() and not self.in_transaction():
            self.close()
        with self._cond:
            for slot in self._idle + list(self._slots.values()):
                self._discard(slot)
            self._idle, self._slots = [], {}
            self._cond.notify_all()

    def close_stale(self, age: float = 600) -> int:
        """Close connections checked out more than `age` seconds ago (their users will fail); return how many."""
        with self._cond:
            cutoff = time.monotonic() - age
            stale = [s for s in self._slots.values() if s.checked_out < cutoff]
            for slot in stale:
                del self._slots[id(slot.conn)]
                self._discard(slot)
            self._cond.notify_all()
            return len(stale)

    def manual_close(self) -> bool:
        """Close this thread's connection for good instead of returning it to the pool."""
        if self.is_closed():
            return False
        self._close(self._state.conn, close_conn=True)
        self.close()
        return True

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without sending anything on their sockets."""
        conns = [s.conn for s in self._idle + list(self._slots.values())]
        state_conn = getattr(self._state, "conn", None)
        if state_conn is not None:
            conns.append(state_conn)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in conns:
                try:
                    # Point the child's copy of the socket at /dev/null: the parent keeps its session,
                    # and the goodbye libpq sends when this object is freed goes nowhere.
                    os.dup2(devnull, conn.fileno())
                except Exception:
                    pass
        finally:
            os.close(devnull)
        self._pool_init_state()
        self._lock = threading.Lock()
        self._state = _ConnectionLocal()


def _reap_idle(ref: weakref.ref) -> None:
    """Background loop: close idle connections above min_size once they pass max_idle."""
    while True:
        db = ref()
        if db is None:
            return
        wait = db._close_expired()
        del db
        time.sleep(min(max(wait, 0.01), 5.0))


_pools: weakref.WeakSet[PooledDatabase] = weakref.WeakSet()


def _track_forks(db: PooledDatabase) -> None:
    _pools.add(db)


def _after_fork_in_child() -> None:
    for db in list(_pools):
        db._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
