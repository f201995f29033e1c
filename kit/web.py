"""The kit in a web service (FastAPI, Starlette, any ASGI app): one middleware, one call.

    from fastapi import FastAPI
    import kit.web

    app = FastAPI()
    kit.web.install(app)

`install(app)` adds `KitMiddleware` and maps the kit's outage family to HTTP 503. Then, in both
`def` and `async def` endpoints, use the kit as anywhere else: `kit.db.database` (sync) and
`kit.aio.database` (async). No dependency is needed to open or close a connection, and none can leak
one: inside each request (`kit.db.scope.request_scope`) a connection is held only while a statement
or a transaction runs, and given back by the thread that took it, whichever threads the framework
runs the request's code on.

Errors: every `KitError` becomes a status that fits it (`status_of`), with a body that names no
server, role, socket or database, and the full sentence in the log (`kit.web`):

| error | status | body |
|---|---|---|
| `DatabaseUnavailable` (`SessionLost`), `PoolExhausted`, `StatementTimeout`, `LockBusy`, `LockHeld` | 503 | fixed |
| `NotFound` (`InvitationNotFound`) | 404 | its sentence |
| `ArgumentError`, `VectorValueError`, `CopyRowError` | 422 | its sentence (about the request's own input) |
| `TenantError`, `TenantRequired` | 403 | its sentence (a table and the caller's own organization id) |
| `InsufficientCredits` | 402 | its sentence |
| `InvitationError` | 409 | its sentence |
| any other `KitError` (a misconfiguration, a migration not run) | 500 | fixed |

A 503 says `Retry-After`, and its fixed sentence says to try again.

A handler's own `except` still comes first; this is what reaches the client when none catches it.

Each request is tagged with its route template (`kit.telemetry.tag`): the slow-query log, the spans
and, when DATABASE_QUERY_TAGS=1, the statements' comments name it.

Sizing (docs/web.md has the arithmetic): per process, the sync pool serves at most as many
statements at once as the framework has threads (anyio's 40 by default), the asyncio pool as many
as there are tasks; DATABASE_POOL_MAX bounds each. Every process (each uvicorn worker) has its own
pools, so workers x (sync MAX + async MAX) must stay under the server's connection limit for the role.
"""

from __future__ import annotations

import logging
from typing import Any

from kit.db.scope import request_scope
from kit.errors import (
    ArgumentError,
    CopyRowError,
    DatabaseUnavailable,
    InsufficientCredits,
    InvitationError,
    KitError,
    LockBusy,
    LockHeld,
    NotFound,
    PoolExhausted,
    StatementTimeout,
    TenantError,
    VectorValueError,
    describe,
)
from kit.telemetry import tag

log = logging.getLogger("kit.web")
RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again
UNAVAILABLE = (DatabaseUnavailable, PoolExhausted, StatementTimeout, LockBusy, LockHeld)  # the failures that are a 503
# (error classes, status, the body's sentence: None to say the error's own), most specific first
STATUSES: tuple[tuple[tuple[type[KitError], ...], int, str | None], ...] = (
    ((PoolExhausted,), 503, "every database connection is in use; try again shortly"),
    ((StatementTimeout,), 503, "the request took longer than the database allows; try again shortly"),
    ((LockBusy, LockHeld), 503, "the database is busy with maintenance; try again shortly"),
    ((DatabaseUnavailable,), 503, "the database is unavailable; try again shortly"),
    ((NotFound,), 404, None),
    ((ArgumentError, VectorValueError, CopyRowError), 422, None),
    ((TenantError,), 403, None),
    ((InsufficientCredits,), 402, None),
    ((InvitationError,), 409, None),
    ((KitError,), 500, "the request could not be completed"),
)


class KitMiddleware:
    """ASGI middleware: each HTTP or WebSocket request runs in a request scope (connections per statement)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Run the request inside `request_scope()`."""
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with request_scope(), tag(route=_route(scope)):
            await self.app(scope, receive, send)


def _route(scope: dict[str, Any]) -> str:
    """The request's route as its template (`GET /orgs/{org_id}`), never the path with its ids in it."""
    method = scope.get("method", "WS")
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        try:
            found, _ = route.matches(scope)
        except Exception:  # a route that cannot judge this request is not it
            continue
        if found.name == "FULL":
            return f"{method} {getattr(route, 'path', '') or getattr(route, 'path_format', '')}"
    return f"{method} (no route)"


def status_of(exc: KitError) -> tuple[int, dict[str, str], dict[str, str]]:
    """The status, body and headers a kit error answers with (`STATUSES`): no server, role or socket in the body."""
    status, sentence = next((status, sentence) for kinds, status, sentence in STATUSES if isinstance(exc, kinds))
    body = {"detail": sentence if sentence is not None else describe(exc), "error": type(exc).__name__}
    return status, body, {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


def unavailable_response(exc: BaseException) -> tuple[int, dict[str, str], dict[str, str]]:
    """The status, body and headers for an outage: 503, a fixed sentence, and when to try again."""
    return status_of(exc) if isinstance(exc, KitError) else (503, {"detail": "the database is unavailable; try "
                                                                   "again shortly", "error": type(exc).__name__},
                                                             {"Retry-After": str(RETRY_AFTER_S)})


def install(app: Any) -> Any:
    """Add `KitMiddleware` to a Starlette or FastAPI `app` and answer every kit error with its status; return `app`."""
    from starlette.responses import JSONResponse

    async def handler(request: Any, exc: KitError) -> JSONResponse:
        status, body, headers = status_of(exc)
        (log.warning if status >= 500 else log.info)("%s %s: %s (%s)", request.method, request.url.path,
                                                     describe(exc), status)
        return JSONResponse(body, status_code=status, headers=headers)

    app.add_middleware(KitMiddleware)
    app.add_exception_handler(KitError, handler)
    return app
