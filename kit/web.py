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

Errors: `DatabaseUnavailable` (and its `SessionLost`), `PoolExhausted` and `StatementTimeout` become
503 with `Retry-After` and one sentence (`kit.errors.describe`, no secret), so a client or a load
balancer tries again; the rest of the kit's errors are the application's to map.

Each request is tagged with its route template (`kit.telemetry.tag`): the slow-query log, the spans
and, when DATABASE_QUERY_TAGS=1, the statements' comments name it.

Sizing (docs/web.md has the arithmetic): per process, the sync pool serves at most as many
statements at once as the framework has threads (anyio's 40 by default), the asyncio pool as many
as there are tasks; DATABASE_POOL_MAX bounds each. Every process (each uvicorn worker) has its own
pools, so workers x (sync MAX + async MAX) must stay under the server's connection limit for the role.
"""

from __future__ import annotations

from typing import Any

from kit.db.scope import request_scope
from kit.errors import DatabaseUnavailable, PoolExhausted, StatementTimeout, describe
from kit.telemetry import tag

RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again
UNAVAILABLE = (DatabaseUnavailable, PoolExhausted, StatementTimeout)  # the failures that are a 503


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


def unavailable_response(exc: BaseException) -> tuple[int, dict[str, str], dict[str, str]]:
    """The status, body and headers for an outage: 503, its one sentence, and when to try again."""
    return 503, {"detail": describe(exc), "error": type(exc).__name__}, {"Retry-After": str(RETRY_AFTER_S)}


def install(app: Any) -> Any:
    """Add `KitMiddleware` to a Starlette or FastAPI `app` and answer the kit's outages with 503; return `app`."""
    from starlette.responses import JSONResponse

    async def handler(request: Any, exc: Exception) -> JSONResponse:
        status, body, headers = unavailable_response(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    app.add_middleware(KitMiddleware)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, handler)
    return app
