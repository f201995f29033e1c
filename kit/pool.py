"""`ConnectionPool`: driver connections shared by threads, with its semantics stated where they are defined.

The pool knows nothing of peewee, SQL or environment variables. It is told how to open, test, clean
and close a connection (`Hooks`) and decides when; `kit.db.PooledDatabase` puts peewee's
pooled-database contract on top of it.

Settings (checked whenever they are set; a bad one is one sentence naming it, `PoolSettingError`):

- `max_size`: most connections open at once: checked out, idle, being opened, or on their way back
  (a check-in's rollback or reset is a round trip, and the server still holds it). None or 0: no limit.
- `min_size`: connections opened at first use and kept open, idle or not (at most `max_size`).
- `timeout`: what a caller does when `max_size` connections are checked out. None: `PoolExhausted`
  at once; 0: wait as long as it takes; n > 0: wait up to n seconds, then `PoolExhausted`.
- `stale_timeout`: an age limit. A connection opened more than this many seconds ago is closed when
  it comes back and is never handed out again. None or 0: no age limit.
- `max_idle`: seconds an idle connection above `min_size` is kept before it is closed. None or 0:
  idle connections are kept until closed by hand.
- `check_after`: a connection idle this many seconds is tested with a round trip (`Hooks.ping`)
  before it is handed out; 0 tests every checkout.
- `leak_after`: seconds a connection may stay checked out before it is reported as leaked: once per
  checkout, a warning on `kit.pool` with how long it has been held, by which thread, and the stack
  that took it (recorded at checkout only while this is set), and `stats()["leaks"]`. A connection
  reported and then given back is logged again (it was slow, not lost). None or 0: off.

What the pool does:

- Checkout hands out the idle connection opened longest ago first (peewee's order), skipping and
  closing any that is stale, closed (`Hooks.is_closed`, asked on every checkout) or fails its ping.
  When none is idle and there is room, it opens one; the first opened tops the pool up to `min_size`.
- Check-in closes the connection instead of keeping it when asked to, when it is stale, when it
  was opened before the last `invalidate()`, when `Hooks.can_reuse` says no (that hook rolls back a
  leftover transaction), or when it needs a session reset (`needs_reset`) and `Hooks.reset` fails.
- A connection held by a thread that has ended is taken back when a caller would otherwise wait.
- `ConnectionPool.observer`, when set (by `kit.telemetry`), is told how long each checkout waited,
  each connection took to open and each was held; every pool is listed in `ConnectionPool.every`.
- `close_idle`, `close_stale(age)` (checked out longer than `age` seconds) and `close_all` close
  connections now; those checked out by other threads fail on their next use. `forget` drops every
  connection without closing it (for a forked child) and returns them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

from kit.errors import PoolExhausted, PoolSettingError

log = logging.getLogger("kit.pool")

__all__ = ["ConnectionPool", "Hooks", "PoolExhausted", "PoolSettingError"]


@dataclass(frozen=True)
class Hooks:
    """How the pool opens, tests, cleans and closes one driver connection."""

    open: Callable[[], Any]  # a new connection; raises when the server cannot be reached
    close: Callable[[Any], None]  # close it for good; must not raise
    is_closed: Callable[[Any], bool] = lambda conn: False  # asked on every checkout: is it unusable?
    ping: Callable[[Any], bool] = lambda conn: True  # a round trip after `check_after` idle: alive?
    can_reuse: Callable[[Any], bool] = lambda conn: True  # on check-in: fit to keep (rolls back)?
    reset: Callable[[Any], bool] = lambda conn: True  # on check-in of a connection needing a reset


@dataclass(eq=False)
class _Slot:
    """One pooled connection and what the pool knows about it."""

    conn: Any
    generation: int
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    checked_out: float = 0.0
    owner: int | None = None  # the ident of the thread that checked it out
    session: set[str] = field(default_factory=set)  # session state known to be on it, by kind
    needs_reset: bool = False
    taken_by: traceback.StackSummary | None = None  # where it was checked out (with `leak_after` only)
    reported: bool = False  # reported as leaked during this checkout


def _limit(name: str, value: Any, *, whole: bool = False, none_ok: bool = True) -> float | int | None:
    """`value` as a non-negative number (None kept when allowed), or one sentence naming `name`."""
    if value is None and none_ok:
        return None
    if isinstance(value, str):  # peewee accepts numbers given as strings
        try:
            value = float(value.strip()) if not whole else int(value.strip())
        except ValueError:
            raise PoolSettingError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PoolSettingError(f"{name} must be a number, got {value!r}")
    if value < 0:
        raise PoolSettingError(f"{name} must not be negative, got {value:g}")
    if whole:
        if value != int(value):
            raise PoolSettingError(f"{name} must be a whole number, got {value:g}")
        return int(value)
    return value


class ConnectionPool:
    """Connections shared by threads: at most `max_size` out at once, `min_size` kept, the oldest reused first."""

    observer: Any = None  # told `waited(name, s)`, `created(name, s)`, `used(name, s)` when set (kit.telemetry)
    every: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()  # every pool in the process, for metrics

    def __init__(self, hooks: Hooks, clock: Callable[[], float] = time.monotonic, name: str = "kit",
                 **settings: Any) -> None:
        self.hooks = hooks
        self.name = name  # how metrics and log lines name the pool (its server, never a password)
        self.clock = clock  # seconds, monotonic: ages, idleness and pings are measured by it (a test's own)
        self._lock = threading.Lock()  # guards the state below; C-level, cheap to take
        self._cond = threading.Condition(self._lock)  # callers waiting for a connection
        self._waiting = 0
        self._counter = itertools.count()
        self.min_size: int = 0
        self.max_size: int | None = None
        self.timeout = self.stale_timeout = self.max_idle = None
        self.check_after: float = 30.0
        self.leak_after: float | None = None
        self._reset_state()
        self.configure(**settings)
        ConnectionPool.every.add(self)

    def _reset_state(self) -> None:
        self._idle: list[tuple[float, int, _Slot]] = []  # a heap: opened longest ago first
        self._in_use: dict[int, _Slot] = {}  # id(conn) -> slot
        self._opening = 0
        self._returning = 0  # popped from _in_use by putconn, not yet idle or closed (a reset is a round trip)
        self._generation = 0
        self._reaper: threading.Thread | None = None
        self._stats = dict.fromkeys(("waits", "timeouts", "opened", "closed", "checks", "resets", "resent", "leaks",
                                      "session_lost", "replica_fallbacks"), 0)

    # -- settings ---------------------------------------------------------------------------------

    def configure(self, *, min_size: Any = ..., max_size: Any = ..., timeout: Any = ...,
                  stale_timeout: Any = ..., max_idle: Any = ..., check_after: Any = ...,
                  leak_after: Any = ...) -> None:
        """Change settings (those not given stay the same); all are checked before any is applied."""
        new_max = self.max_size if max_size is ... else (cast("int | None", _limit("max_size", max_size, whole=True))
                                                         or None)
        new_min = self.min_size if min_size is ... else cast(int, _limit("min_size", min_size, whole=True,
                                                                         none_ok=False))
        if new_max is not None and new_min > new_max:
            raise PoolSettingError(f"min_size ({new_min}) must not be greater than max_size ({new_max})")
        values = {
            "timeout": self.timeout if timeout is ... else _limit("timeout", timeout),
            "stale_timeout": self.stale_timeout if stale_timeout is ... else (_limit("stale_timeout", stale_timeout)
                                                                              or None),
            "max_idle": self.max_idle if max_idle is ... else (_limit("max_idle", max_idle) or None),
            "check_after": self.check_after if check_after is ... else _limit("check_after", check_after,
                                                                               none_ok=False),
            "leak_after": self.leak_after if leak_after is ... else (_limit("leak_after", leak_after) or None),
        }
        with self._lock:
            self.min_size, self.max_size = new_min, new_max
            for name, value in values.items():
                setattr(self, name, value)
            self._cond.notify_all()  # a larger max_size or a shorter timeout concerns waiting callers
        if self._in_use or self._idle:
            self._start_reaper()

    @property
    def wait_seconds(self) -> float | None:
        """How long a caller waits when the pool is full: None not at all, math.inf without end."""
        return math.inf if self.timeout == 0 else self.timeout

    # -- checkout ---------------------------------------------------------------------------------

    def getconn(self, verified: bool = False) -> Any:
        """Check a connection out for the calling thread (waiting as `timeout` says); `verified`: pinged if idle."""
        deadline = None
        began = time.perf_counter() if self.observer is not None else 0.0
        while True:
            slot = self._take_idle(verified)
            if slot is not None:
                if began:
                    self.observer.waited(self.name, time.perf_counter() - began)
                return slot.conn
            with self._lock:
                if self._idle:
                    continue
                if self._has_room() or self._reclaim_from_dead_threads():
                    self._opening += 1
                    break
                now = time.monotonic()  # a caller's wait is real time, whatever clock ages connections
                wait = self.wait_seconds
                if deadline is None and wait:
                    deadline = now + wait
                    self._stats["waits"] += 1
                if deadline is None or now >= deadline:
                    self._stats["timeouts"] += 1
                    raise PoolExhausted(self._exhausted_message())
                self._waiting += 1
                try:
                    self._cond.wait(None if deadline == math.inf else deadline - now)
                finally:
                    self._waiting -= 1
        slot = self._open_reserved()
        with self._lock:
            self._check_out(slot)
            extra = max(0, self.min_size - self._open_count())
            self._opening += extra
        self._open_idle(extra)
        self._start_reaper()
        if began:
            self.observer.waited(self.name, time.perf_counter() - began)
        return slot.conn

    def _exhausted_message(self) -> str:
        waited = "" if self.timeout is None else f" for {self.timeout:g}s"
        return f"connection pool exhausted: all {self.max_size} connections stayed checked out{waited}"

    def _open_count(self) -> int:
        """Connections the pool has open or is opening: out, idle, coming back, being opened (under `_lock`)."""
        return len(self._in_use) + len(self._idle) + self._returning + self._opening

    def _has_room(self) -> bool:
        # A connection on its way back (being rolled back or reset) still counts: the server has it.
        return self.max_size is None or self._open_count() < self.max_size

    def _take_idle(self, verified: bool = False) -> _Slot | None:
        """The oldest usable idle connection, checked out; unusable ones on the way are closed."""
        while True:  # the hot path of every checkout: kept flat on purpose
            with self._lock:
                if not self._idle:
                    return None
                slot = heapq.heappop(self._idle)[2]
                now = slot.checked_out = self.clock()
                slot.owner = threading.get_ident()
                self._in_use[id(slot.conn)] = slot
            if self.leak_after:
                self._note_taker(slot)
            if (slot.generation == self._generation and not self.hooks.is_closed(slot.conn)
                    and (self.stale_timeout is None or now - slot.opened <= self.stale_timeout)
                    and (not verified and now - slot.last_used < self.check_after or self.ping(slot.conn))):
                return slot
            with self._lock:
                del self._in_use[id(slot.conn)]
                self._discard(slot)

    def ping(self, conn: Any) -> bool:
        """Test `conn` with a round trip (`Hooks.ping`), counted in `stats()["checks"]`; True when alive."""
        with self._lock:
            self._stats["checks"] += 1
        return self.hooks.ping(conn)

    def _check_out(self, slot: _Slot) -> None:
        slot.owner = threading.get_ident()
        slot.checked_out = self.clock()
        self._in_use[id(slot.conn)] = slot
        if self.leak_after:
            self._note_taker(slot)

    @staticmethod
    def _note_taker(slot: _Slot) -> None:
        """Record where `slot` is being checked out (the caller's stack, without the pool's own frames)."""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__") == __name__:
            frame = frame.f_back
        slot.taken_by = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=30, lookup_lines=False)
        slot.reported = False

    def _open_reserved(self) -> _Slot:
        """Open a connection for a place already reserved in `_opening`."""
        began = time.perf_counter() if self.observer is not None else 0.0
        try:
            conn = self.hooks.open()
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._wake()
            raise
        if began:
            self.observer.created(self.name, time.perf_counter() - began)
        with self._lock:
            self._opening -= 1
            self._stats["opened"] += 1
            now = self.clock()
            return _Slot(conn, self._generation, opened=now, last_used=now)

    def _open_idle(self, count: int) -> None:
        """Open `count` reserved connections straight into the idle heap (warming up to `min_size`)."""
        for opened in range(count):
            try:
                slot = self._open_reserved()
            except Exception:  # the caller has its connection; the rest open on demand later
                with self._lock:
                    self._opening -= count - opened - 1
                return
            with self._lock:
                heapq.heappush(self._idle, (slot.opened, next(self._counter), slot))
                self._wake()

    # -- what a checked-out connection carries ----------------------------------------------------

    def note_session(self, conn: Any, kind: str | None) -> None:
        """Remember that `conn` needs a reset on check-in; `kind` names state whose loss must be reported (or None)."""
        slot = self._in_use.get(id(conn))
        if slot is not None:
            slot.needs_reset = True
            if kind:
                slot.session.add(kind)

    def session_of(self, conn: Any) -> frozenset[str]:
        """The kinds of session state `conn` is known to hold (empty when none, or not checked out)."""
        slot = self._in_use.get(id(conn))
        return frozenset(slot.session) if slot is not None else frozenset()

    # -- check-in ---------------------------------------------------------------------------------

    def putconn(self, conn: Any, discard: bool = False) -> None:
        """Take a connection back: kept for reuse, or closed (see the module docstring for when)."""
        with self._lock:
            slot = self._in_use.pop(id(conn), None)
            if slot is None:  # not checked out from here (closed by close_all/close_stale, or foreign)
                if discard:
                    self.hooks.close(conn)
                self._wake()
                return
            slot.owner = None
            self._returning += 1
        now = self.clock()
        if slot.reported:
            log.warning("a connection reported as leaked was given back after %.1f s", now - slot.checked_out)
            slot.reported = False
        if self.observer is not None:
            self.observer.used(self.name, now - slot.checked_out)
        keep = (not discard and slot.generation == self._generation
                and (self.stale_timeout is None or now - slot.opened <= self.stale_timeout)
                and self.hooks.can_reuse(conn) and (not slot.needs_reset or self._reset(slot)))
        with self._lock:
            self._returning -= 1
            if keep:
                slot.last_used = now
                heapq.heappush(self._idle, (slot.opened, next(self._counter), slot))
            else:
                self._discard(slot)
                if not discard:
                    log.debug("a connection given back was closed, not kept (stale, invalidated, or unusable)")
            self._wake()

    def _reset(self, slot: _Slot) -> bool:
        """Reset the session outside the pool's lock (a round trip); False to close it instead."""
        if not self.hooks.reset(slot.conn):
            log.warning("a connection's session reset failed on check-in; it is closed instead")
            return False
        slot.session.clear()
        slot.needs_reset = False
        with self._lock:
            self._stats["resets"] += 1
        return True

    def _wake(self) -> None:
        """Wake one caller waiting for a connection, if any (under `_lock`)."""
        if self._waiting:
            self._cond.notify()

    def _discard(self, slot: _Slot) -> None:
        """Close a slot's connection (under `_lock`; the hook must not raise)."""
        self.hooks.close(slot.conn)
        self._stats["closed"] += 1

    def _reclaim_from_dead_threads(self) -> bool:
        """Take back connections whose owning thread ended without returning them (under `_lock`)."""
        alive = {thread.ident for thread in threading.enumerate()}
        lost = [s for s in self._in_use.values() if s.owner is not None and s.owner not in alive]
        for slot in lost:
            del self._in_use[id(slot.conn)]
            self._discard(slot)
        return bool(lost)

    # -- closing ----------------------------------------------------------------------------------

    def close_idle(self) -> int:
        """Close every idle connection (checked-out ones are left alone); return how many."""
        with self._lock:
            idle, self._idle = self._idle, []
            for _, _, slot in idle:
                self._discard(slot)
            return len(idle)

    def close_stale(self, age: float = 600) -> int:
        """Close connections checked out more than `age` seconds ago (their users will fail); return how many."""
        with self._lock:
            cutoff = self.clock() - age
            stale = [s for s in self._in_use.values() if s.checked_out < cutoff]
            for slot in stale:
                del self._in_use[id(slot.conn)]
                self._discard(slot)
            self._cond.notify_all()
            return len(stale)

    def close_all(self) -> None:
        """Close every connection, idle and checked out (those in use by other threads will fail)."""
        with self._lock:
            for _, _, slot in self._idle:
                self._discard(slot)
            for slot in self._in_use.values():
                self._discard(slot)
            self._idle, self._in_use = [], {}
            self._cond.notify_all()

    def invalidate(self) -> None:
        """Close idle connections now and checked-out ones when they come back (the target changed)."""
        with self._lock:
            self._generation += 1
        self.close_idle()

    def forget(self) -> list[Any]:
        """Drop every connection without closing it (a forked child's copies) and return them."""
        conns = [slot.conn for _, _, slot in self._idle] + [slot.conn for slot in self._in_use.values()]
        self._lock = threading.Lock()  # the parent's lock may have been held at fork
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._reset_state()
        return conns

    # -- idle timeout -----------------------------------------------------------------------------

    def _start_reaper(self) -> None:
        if (self.max_idle or self.leak_after) and (self._reaper is None or not self._reaper.is_alive()):
            self._reaper = threading.Thread(target=_reap_idle, args=(weakref.ref(self),), name="kit-pool-reaper",
                                            daemon=True)
            self._reaper.start()

    def report_leaks(self) -> float | None:
        """Report connections checked out longer than `leak_after`, once each; seconds until the next may be due."""
        if not self.leak_after:
            return None
        with self._lock:
            now = self.clock()
            due = [slot for slot in self._in_use.values() if not slot.reported
                   and now - slot.checked_out >= self.leak_after]
            for slot in due:
                slot.reported = True
                self._stats["leaks"] += 1
            waiting = [slot.checked_out + self.leak_after - now for slot in self._in_use.values() if not slot.reported]
        for slot in due:
            log.warning(self._leak_message(slot, now))
        return max(min(waiting, default=self.leak_after), 0.01)

    def _leak_message(self, slot: _Slot, now: float) -> str:
        """The one log record of a leaked connection: how long, by which thread, and the stack that took it."""
        thread = next((t.name for t in threading.enumerate() if t.ident == slot.owner), "a thread that has ended")
        taken = "".join(slot.taken_by.format()) if slot.taken_by else "  (taken before leak_after was set)\n"
        return (f"possible connection leak: a connection of pool {self.name} has been checked out for "
                f"{now - slot.checked_out:.1f} s (leak_after {self.leak_after:g} s) by thread {thread}; it was "
                f"taken at:\n{taken.rstrip()}")

    def close_expired(self) -> float | None:
        """Close idle connections above `min_size` idle for `max_idle`; seconds until the next may expire."""
        if not self.max_idle:
            return None
        with self._lock:
            now = self.clock()
            by_idleness = sorted(self._idle, key=lambda item: item[2].last_used)
            keep = len(self._idle) + len(self._in_use)
            expired = []
            for item in by_idleness:
                if keep <= self.min_size or now - item[2].last_used < self.max_idle:
                    break
                expired.append(item)
                keep -= 1
            if expired:
                self._idle = [item for item in self._idle if item not in expired]
                heapq.heapify(self._idle)
                for _, _, slot in expired:
                    self._discard(slot)
            waiting = [item[2].last_used + self.max_idle - now for item in self._idle]
            return max(min(waiting, default=self.max_idle), 0.01)

    def count(self, event: str) -> None:
        """Add one to the `event` counter in `stats()` (e.g. "resent", kept by the database class)."""
        with self._lock:
            self._stats[event] = self._stats.get(event, 0) + 1

    def snapshot(self) -> tuple[list[tuple[float, int, Any]], dict[int, tuple[float, Any, float]]]:
        """Idle connections (opened, order, conn) oldest first; checked-out ones by key (opened, conn, out)."""
        with self._lock:
            idle = [(slot.opened, order, slot.conn) for _, order, slot in sorted(self._idle, key=lambda e: e[:2])]
            out = {key: (slot.opened, slot.conn, slot.checked_out) for key, slot in self._in_use.items()}
        return idle, out

    def stats(self) -> dict[str, Any]:
        """Counts: in_use, idle, waiting, min, max, and since start waits, timeouts, opened, closed, checks, resets,
        resent, leaks, session_lost, replica_fallbacks (the last two counted by the database class)."""
        with self._lock:
            return {"in_use": len(self._in_use), "idle": len(self._idle), "waiting": self._waiting,
                    "min": self.min_size, "max": self.max_size, **self._stats}


def _reap_idle(ref: weakref.ref) -> None:
    """Background loop: close idle connections above min_size past max_idle, report those past leak_after."""
    while True:
        pool = ref()
        if pool is None:
            return
        waits = [wait for wait in (pool.close_expired(), pool.report_leaks()) if wait is not None]
        del pool
        if not waits:
            return
        time.sleep(min(*waits, 5.0))
