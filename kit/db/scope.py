"""`request_scope()`: inside it, a connection is held only for one statement or one transaction.

A web framework runs one request's code on several threads (FastAPI runs each sync dependency and
the endpoint on threadpool threads, entering and leaving a dependency on different ones), so a
connection tied to a thread for the whole request is either never given back or given back by the
wrong thread. Inside a request scope the sync pool gives a connection back in the thread that took
it as soon as its statement, or its outermost transaction, ends. A thread thus never carries a
connection from one request into the next; if one is found there anyway (a raw BEGIN never ended,
`database.connection()` used directly), it is rolled back and closed, with a warning.

What would outlive the statement on the connection (a plain SET, an advisory lock, LISTEN, a
temporary table) is refused inside a scope before it is sent (`SessionStateRefused`): inside
`database.atomic()` it lives as long as the transaction (SET LOCAL, `pg_advisory_xact_lock`).

The scope is a context variable: set in the request's task, it is seen by every thread the
framework runs that request's code on (they run in copies of its context). The asyncio database
holds connections this way always. `kit.web.KitMiddleware` opens one per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_scope: ContextVar[object | None] = ContextVar("kit_request_scope", default=None)


class Written:
    """What has been written, per database, for read-your-writes (`kit.db.reads`).

    Inside a request scope, one record per request, shared by reference with every task and thread
    the request starts in its context (they run in copies of it, which hold the same object): a write
    in a child task, `asyncio.to_thread` or a framework's threadpool is waited for by the request's
    later reads. Outside any request scope there is one record for the whole process (`PROCESS`): a
    write anywhere, in any thread or task, however it was started and whenever, is waited for by every
    later read outside a scope. Conservative (a read may wait for a write it did not need), never stale.

    The rule, shared by the sync and the asyncio database: a write is counted once it is done (a
    statement outside a transaction once it returned, a transaction at its COMMIT), and a read needs
    a WAL position taken from the primary *after* every write counted when the read began. A read
    that finds the count already synced by a position someone took after that count uses it; else it
    takes one itself (`pg_current_wal_insert_lsn()`, one round trip) and records it for the others.
    So two threads sharing the record can never hand each other a position older than their writes.
    """

    __slots__ = ("lock", "entries")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[int, _Entry] = {}  # id(database): what was written there and what reads must see

    def entry(self, database: object) -> _Entry:
        """`database`'s entry in this record."""
        found = self.entries.get(id(database))
        if found is None:
            with self.lock:
                found = self.entries.setdefault(id(database), _Entry())
        return found

    def wrote(self, database: object) -> None:
        """Count a write to `database` that is done (committed, or a statement that was its own transaction)."""
        entry = self.entry(database)
        with self.lock:
            entry.writes += 1

    def position(self, database: object, fetch: Callable[[], int]) -> int:
        """The WAL position a read must see: taken by `fetch()` after the writes counted so far, if none was."""
        entry = self.entry(database)
        target = entry.writes
        if entry.synced >= target:
            return entry.position
        taken = fetch()  # after every write counted in `target`: at least as far as each of them
        with self.lock:
            entry.position = max(entry.position, taken)
            entry.synced = max(entry.synced, target)
        return max(entry.position, taken)


class _Entry:
    """Per database: writes counted, how many of them `position` (a WAL position) is known to cover."""

    __slots__ = ("position", "synced", "writes")

    def __init__(self) -> None:
        self.position, self.synced, self.writes = 0, 0, 0


PROCESS = Written()  # what the process wrote outside request scopes
_written: ContextVar[Written | None] = ContextVar("kit_written", default=None)


def written() -> Written:
    """The record of writes this context's reads must see: its request's, else the process's."""
    record = _written.get()
    return PROCESS if record is None else record


@contextmanager
def request_scope() -> Iterator[object]:
    """A block in which the sync pool holds a connection only for a statement or a transaction (see the module).

    It also starts a new record of what the request writes (`Written`), shared by every task and
    thread the request starts in its context.
    """
    token = _scope.set(object())
    written_token = _written.set(Written())
    try:
        yield _scope.get()
    finally:
        _written.reset(written_token)
        _scope.reset(token)


def current_scope() -> object | None:
    """The request scope the current context is in (None: outside any)."""
    return _scope.get()
