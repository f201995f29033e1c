"""Schema changes that wait for locks only briefly, retry, and name what blocks them.

Why: PostgreSQL queues lock requests in order, so a DDL statement waiting for a lock (an
application transaction has read the table and stays open) makes every later statement on that
table wait behind it, reads included, for as long as the blocker lasts. A short `lock_timeout`
bounds that wait, and with it the stall of everyone queued behind; the attempt is then rolled back
whole (nothing half-done), the queue drains during a jittered pause, and the attempt runs again,
until a total budget is spent. Then `LockBusy` says in one sentence who blocks it (pid, application,
role, how long its transaction has been open), found while the attempt waited.

- `LockPolicy`: the lock timeout and the budget (`DATABASE_LOCK_TIMEOUT`, `DATABASE_LOCK_BUDGET`).
- `run_ddl(database, what, attempt)`: run `attempt` in a transaction of its own under the policy,
  retried; with `transaction=False` the attempt opens its own and calls `limit_lock_waits` in it.
- `limit_lock_waits(database)`: the current transaction's (or with `session=True`, the session's)
  lock timeout; the attempt's backend is watched for blockers.
- `run_concurrently(database, what, sql)`: a CONCURRENTLY statement, its waits bounded by the budget.
- `after_commit(database, kind, name, sql, params)`: inside a migration, queue work to run after its
  transaction commits (`kit.migrate.steps` records it there, through `recording`); False elsewhere.

Used by `kit migrate` and plain `pw_migrate` (each migration and each step after it), `kit maintain`
(each partition made, moved or retired) and tenant-index upkeep.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg2
from peewee import Database

from kit.config import load_settings
from kit.errors import KitError, LockBusy

__all__ = ["Blocker", "LockBusy", "LockPolicy", "after_commit", "limit_lock_waits", "recording", "run_concurrently",
           "run_ddl", "side_connection"]

T = TypeVar("T")
WATCH_EVERY = 0.1  # seconds between looks at what blocks a waiting attempt
MAX_PAUSE = 5.0  # the longest pause between attempts, in seconds

_BLOCKERS_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), a.state,
       extract(epoch FROM now() - a.xact_start)
FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids(%s))
"""


_FIND_SQL = """
SELECT pid FROM pg_stat_activity
WHERE usename = current_user AND state = 'active' AND pid <> pg_backend_pid() AND strpos(query, %s) > 0 LIMIT 1
"""


Recorder = Callable[[Database, str, str, str, tuple], None]  # (database, kind, name, sql, params)
_recorder: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("kit_after_commit", default=None)


def after_commit(database: Database, kind: str, name: str, sql: str, params: tuple = ()) -> bool:
    """Queue a step to run after the applying migration's transaction commits; False when no migration applies."""
    record = _recorder.get()
    if record is None:
        return False
    record(database, kind, name, sql, params)
    return True


@contextlib.contextmanager
def recording(record: Recorder) -> Iterator[None]:
    """Inside this block `after_commit` hands its steps to `record` (`kit.migrate.steps.applying`)."""
    token = _recorder.set(record)
    try:
        yield
    finally:
        _recorder.reset(token)


@dataclass(frozen=True)
class LockPolicy:
    """How long one lock wait may last and how long retries may go on, in seconds."""

    timeout: float = 2.0
    budget: float = 60.0

    @classmethod
    def from_environment(cls) -> LockPolicy:
        """The policy `DATABASE_LOCK_TIMEOUT` and `DATABASE_LOCK_BUDGET` (milliseconds) give."""
        settings = load_settings()
        return cls(settings.lock_timeout_ms / 1000, settings.lock_budget_ms / 1000)

    def pause(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` + 1: exponential, jittered so runs do not march in step."""
        return random.uniform(0.5, 1.0) * min(MAX_PAUSE, 0.25 * 2 ** attempt)


@dataclass(frozen=True)
class Blocker:
    """A session an attempt waited for."""

    pid: int
    application: str
    role: str
    state: str | None
    transaction_seconds: float | None

    def describe(self) -> str:
        """`pid 123 (application 'web', role kit_app, idle in transaction, its transaction open 42 s)`."""
        parts = [f"application '{self.application}'" if self.application else "no application name"]
        if self.role:
            parts.append(f"role {self.role}")
        if self.state:
            parts.append(self.state)
        if self.transaction_seconds is not None:
            parts.append(f"its transaction open {self.transaction_seconds:,.0f} s")
        return f"pid {self.pid} ({', '.join(parts)})"


@dataclass
class _Watch:
    """The backend an attempt runs on, and who blocked it, seen from a connection of its own."""

    connect: Callable[[], Any]
    pid: int | None = None
    blockers: dict[int, Blocker] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    find: str | None = None  # behind a pooler: the statement whose backend to watch (its pid is not ours to ask)
    cancel_after: float | None = None  # seconds of waiting for a lock after which that backend is cancelled
    cancelled: bool = False

    def watch(self, pid: int | None) -> None:
        """Start looking at what blocks backend `pid` (once per attempt)."""
        self.pid = pid
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="kit-ddl-watch", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            conn = self.connect()
        except psycopg2.Error:
            return  # the report will lack names; the attempt itself is unaffected
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                waiting_since = None
                while not self.stop.wait(WATCH_EVERY):
                    if self.pid is None and self.find:
                        cursor.execute(_FIND_SQL, (self.find,))
                        found = cursor.fetchone()
                        self.pid = found[0] if found else None
                    if self.pid is None:
                        continue
                    cursor.execute(_BLOCKERS_SQL, (self.pid,))
                    rows = cursor.fetchall()
                    for row in rows:
                        self.blockers[row[0]] = Blocker(row[0], row[1], row[2], row[3],
                                                        None if row[4] is None else float(row[4]))
                    if self.cancel_after is not None:
                        waiting_since = (waiting_since or time.monotonic()) if rows else None
                        if waiting_since and time.monotonic() - waiting_since > self.cancel_after:
                            self.cancelled = True
                            cursor.execute("SELECT pg_cancel_backend(%s)", (self.pid,))
                            return
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop watching."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(2)


_current = threading.local()


def side_connection(database: Database, application_name: str) -> Any:
    """A psycopg2 connection of its own to where this context's statements go (a lock holder, a watcher)."""
    return connector(database, application_name)()


def connector(database: Database, application_name: str) -> Callable[[], Any]:
    """What opens `side_connection`, resolved now: inside `all_tenants()` the owner's URL, whichever thread opens it."""
    url = getattr(database, "current_url", None) or getattr(database, "url", None)
    if url:
        return lambda: psycopg2.connect(url, application_name=application_name)
    params = {**database.connect_params, "application_name": application_name}
    return lambda: psycopg2.connect(dbname=database.database, **params)


def limit_lock_waits(database: Database, timeout: float | None = None, *, session: bool = False) -> None:
    """Make lock waits of the current transaction (or session) end after `timeout` s (default: the policy's)."""
    policy = getattr(_current, "policy", None) or LockPolicy.from_environment()
    milliseconds = max(1, round((policy.timeout if timeout is None else timeout) * 1000))
    pid = database.execute_sql("SELECT set_config('lock_timeout', %s, %s), pg_backend_pid()",
                               (f"{milliseconds}ms", not session)).fetchone()[1]
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.watch(pid)


def _is_lock_timeout(exc: BaseException) -> bool:
    """True for "canceling statement due to lock timeout" (SQLSTATE 55P03), however peewee wrapped it."""
    if isinstance(exc, KitError):  # an inner change's LockBusy (or any refusal) is final, not a wait to retry
        return False
    for error in (exc, exc.__cause__, getattr(exc, "orig", None)):
        if getattr(error, "pgcode", None) == "55P03":
            return True
    return "lock timeout" in str(exc)


@contextlib.contextmanager
def _watching(database: Database, policy: LockPolicy) -> Iterator[_Watch]:
    outer = getattr(_current, "watch", None), getattr(_current, "policy", None)
    watch = _Watch(connector(database, "kit-lock-watch"))
    _current.watch, _current.policy = watch, policy
    try:
        yield watch
    finally:
        _current.watch, _current.policy = outer
        watch.close()


def run_ddl(database: Database, what: str, attempt: Callable[[], T], *, policy: LockPolicy | None = None,
            transaction: bool = True, on_retry: Callable[[], None] | None = None,
            say: Callable[[str], None] | None = None) -> T:
    """Run `attempt` with brief lock waits, again after each lock timeout until the budget is spent.

    `transaction`: run it in `database.atomic()` with `limit_lock_waits` first; False: it opens its
    own transaction (or none, for CONCURRENTLY) and calls `limit_lock_waits` itself. `on_retry` runs
    between attempts (to forget state the failed one left in memory). Raises `LockBusy` naming the
    blockers once the budget is spent; what the attempts did was rolled back.
    """
    policy = policy or LockPolicy.from_environment()
    if database.in_transaction():  # inside a caller's transaction (a migration's): its run_ddl retries
        return attempt()
    started = time.monotonic()
    tries = 0
    with _watching(database, policy) as watch:
        while True:
            tries += 1
            try:
                if not transaction:
                    return attempt()
                with database.atomic():
                    limit_lock_waits(database)
                    return attempt()
            except Exception as exc:
                if not _is_lock_timeout(exc):
                    raise
                watch.pid = None
                spent = time.monotonic() - started
                pause = policy.pause(tries)
                if spent + pause + policy.timeout > policy.budget:
                    time.sleep(WATCH_EVERY)  # let the watcher's last look land
                    raise LockBusy(what, tries, spent, list(watch.blockers.values()), policy) from None
                if say is not None and tries == 1:
                    blockers = "; ".join(b.describe() for b in watch.blockers.values()) or "another session"
                    say(f"{what}: waited {policy.timeout:g} s for a lock held by {blockers}; retrying for up to "
                        f"{policy.budget:g} s (DATABASE_LOCK_BUDGET)")
                time.sleep(pause)
                if on_retry is not None:
                    on_retry()


def run_concurrently(database: Database, what: str, sql: str, params: Any = None) -> None:
    """Run a CONCURRENTLY statement (outside any transaction) with its lock waits bounded by the whole budget.

    Its lock (SHARE UPDATE EXCLUSIVE) conflicts with no reads or writes, so its waits stall nobody and
    the short timeout would only throw a long build away; but one waiting on an old transaction for
    ever would hang the command. Given up: `LockBusy` naming that transaction. Behind PgBouncer a
    session setting would reach other clients: there the watcher cancels the statement instead, once
    it has waited for locks the whole budget.
    """
    budget = LockPolicy.from_environment().budget
    if getattr(database, "pooler", None):
        _cancelled_after(database, what, sql, params, budget)
        return

    def attempt() -> None:
        limit_lock_waits(database, session=True)
        try:
            database.execute_sql(sql, params)
        finally:
            database.execute_sql("RESET lock_timeout")

    run_ddl(database, what, attempt, policy=LockPolicy(timeout=budget, budget=budget), transaction=False)


def _cancelled_after(database: Database, what: str, sql: str, params: Any, budget: float) -> None:
    """Run `sql`, cancelled from a connection of its own once it has waited for locks `budget` seconds."""
    policy = LockPolicy(timeout=budget, budget=budget)
    started = time.monotonic()
    with _watching(database, policy) as watch:
        watch.find, watch.cancel_after = sql.split("%s")[0], budget  # the text up to its first parameter
        watch.watch(None)
        try:
            database.execute_sql(sql, params)
        except Exception:
            if watch.cancelled:
                raise LockBusy(what, 1, time.monotonic() - started, list(watch.blockers.values()), policy) from None
            raise
