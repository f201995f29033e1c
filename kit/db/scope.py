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

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_scope: ContextVar[object | None] = ContextVar("kit_request_scope", default=None)


@contextmanager
def request_scope() -> Iterator[object]:
    """A block in which the sync pool holds a connection only for a statement or a transaction (see the module)."""
    token = _scope.set(object())
    try:
        yield _scope.get()
    finally:
        _scope.reset(token)


def current_scope() -> object | None:
    """The request scope the current context is in (None: outside any)."""
    return _scope.get()
