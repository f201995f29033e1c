"""The statement watch: what the databases do around each statement when something observes them.

Every statement of the sync and the asyncio database goes through `watch.active` when it is set, and
past it at the cost of one global read when it is not (nothing observes: the default). What is
switched on decides what the watch does:

- **spans and metrics** (`kit.telemetry.otel.KitInstrumentor`): a CLIENT span per statement named by
  its summary, with OpenTelemetry's database attributes, and `db.client.operation.duration`;
- **the slow-query log** (DATABASE_SLOW_QUERY_MS): a statement that took longer is logged once, on
  `kit.slow`, with its duration, summary, server, tenant and route;
- **query tags** (DATABASE_QUERY_TAGS=1): the sync path's statements carry a sqlcommenter comment
  with the route or job, the tenant's id and the span's `traceparent`, which `pg_stat_activity`, the
  server's own slow-query log and pganalyze show. The asyncio path's carry the route or job only:
  asyncpg prepares each distinct text, so a comment that changed with every trace or tenant would
  cost a round trip a statement, where one per route is prepared once (`tagged_statement`).

What never leaves the process through any of them: a parameter value (spans and metrics name the
statement by its summary, the keyword and first table; `db.query.text`, off unless asked, is
peewee's parameterized text), an error message (a PostgreSQL message can quote a value: errors are
named by class and SQLSTATE) and a password (a server is named by host, port and database).
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kit.errors import sqlstate
from kit.telemetry.sql import summarize
from kit.telemetry.tags import comment, labels, tagged_now
from kit.tenancy import current_tenant

log = logging.getLogger("kit.slow")
T = TypeVar("T")

active: Watch | None = None  # read by the databases before each statement; None: nothing observes
async_databases: weakref.WeakSet[Any] = weakref.WeakSet()  # `kit.aio` databases, whose pools metrics report


@dataclass(frozen=True)
class Target:
    """The server a database's statements go to, as spans and metrics name it (never with a password)."""

    namespace: str | None
    address: str | None
    port: int | None
    role: str = "primary"  # "primary" or "replica"
    attributes: dict[str, Any] = field(default_factory=dict, compare=False)
    shapes: dict[str, Shape] = field(default_factory=dict, compare=False, repr=False)  # by SQL text

    def __post_init__(self) -> None:
        found = {"db.system.name": "postgresql", "db.namespace": self.namespace, "server.address": self.address,
                 "server.port": self.port, "kit.server.role": self.role}
        if older_names_too():
            found.update({"db.system": "postgresql", "db.name": self.namespace, "net.peer.name": self.address,
                          "net.peer.port": self.port})
        self.attributes.update({key: value for key, value in found.items() if value is not None})

    @classmethod
    def of(cls, given: dict[str, Any], role: str = "primary", database: str | None = None) -> Target:
        """The server libpq's parameters name (`host`, `port`, `dbname`; the first of several), never a password."""
        port = str(given.get("port") or 5432).split(",")[0]
        return cls(namespace=given.get("dbname") or given.get("database") or database,
                   address=str(given.get("host") or "localhost"), port=int(port) if port.isdigit() else None,
                   role=role)

    def pool_name(self) -> str:
        """The pool's name in metrics (`db.client.connection.pool.name`): `host:port/database`, a replica's marked."""
        name = f"{self.address}:{self.port}/{self.namespace or ''}"
        return name if self.role == "primary" else f"{name} ({self.role})"

    def describe(self) -> str:
        """The server in words for a log line: `primary kit at /tmp:5432`."""
        where = f"{self.address}:{self.port}" if self.port else (self.address or "the default server")
        return f"{self.role} {self.namespace or ''} at {where}".replace("  ", " ")


class Shape:
    """What is known of one SQL text on one server, worked out once: its summary and attribute sets."""

    __slots__ = ("metric", "operation", "span", "summary")

    def __init__(self, target: Target, sql: str) -> None:
        self.operation, self.summary, table = summarize(sql)
        self.metric = {**target.attributes, "db.operation.name": self.operation, "db.query.summary": self.summary}
        self.span = {**self.metric, "db.collection.name": table} if table else self.metric
        if "db.system" in target.attributes:  # the older names too (`older_names_too`)
            self.span = {**self.span, "db.operation": self.operation, **({"db.sql.table": table} if table else {})}


def older_names_too() -> bool:
    """True when OTEL_SEMCONV_STABILITY_OPT_IN has `database/dup`: spans carry the pre-1.26 names as well."""
    return "database/dup" in {part.strip() for part in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}


SHAPES_KEPT = 4096  # SQL texts remembered per server; past it the memory starts again


def shape_of(target: Target, sql: str) -> Shape:
    """The shape of `sql` on `target`, remembered."""
    shape = target.shapes.get(sql)
    if shape is None:
        if len(target.shapes) >= SHAPES_KEPT:
            target.shapes.clear()
        shape = target.shapes[sql] = Shape(target, sql)
    return shape


class _Statement:
    """One statement under watch: its shape, span, start and whether it was re-sent; the block it runs in."""

    __slots__ = ("resent", "shape", "span", "start", "target", "token", "watch")

    def __init__(self, watch: Watch, target: Target, shape: Shape) -> None:
        self.watch, self.target, self.shape = watch, target, shape
        self.resent = False
        self.span: Any = None  # OpenTelemetry's span, when instrumented
        self.start = 0.0  # perf_counter() when it was sent

    def __enter__(self) -> _Statement:
        self.token = _current.set(self)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        _current.reset(self.token)
        self.watch._close(self.target, self, exc)


_current: ContextVar[_Statement | None] = ContextVar("kit_statement", default=None)


def note_resent() -> None:
    """Mark the statement being watched as re-sent on a new connection (the re-send rule's)."""
    statement = _current.get()
    if statement is not None:
        statement.resent = True


class Instruments:
    """What OpenTelemetry gives the watch: a tracer, the duration histogram, and whether to record query text."""

    def __init__(self, tracer: Any, duration: Any, query_text: bool = False) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        self.tracer, self.duration, self.query_text = tracer, duration, query_text
        self.client, self.internal = SpanKind.CLIENT, SpanKind.INTERNAL
        self.failed = lambda name: Status(StatusCode.ERROR, name)
        self.in_context = set_span_in_context


class Watch:
    """What happens around each statement: spans, the duration metric, the slow-query log, query tags."""

    def __init__(self, instruments: Instruments | None = None, slow_after: float | None = None,
                 tags: bool = False) -> None:
        self.instruments = instruments
        self.slow_after = slow_after  # seconds
        self.tags = tags

    # -- the sync and the asyncio path ------------------------------------------------------------

    def statement(self, target: Target, sql: str, run: Callable[[str], T]) -> T:
        """Run `run(text)` as one watched statement; `text` is `sql` with its tags when they are on."""
        with self._open(target, sql) as statement:
            return run(sql + self._comment(statement) if self.tags else sql)

    async def astatement(self, target: Target, sql: str, send: Callable[[], Awaitable[T]]) -> T:
        """Await `send()` as one watched statement (its text is the caller's: `tagged_statement` tags it)."""
        with self._open(target, sql):
            return await send()

    def tagged_statement(self, sql: str) -> str:
        """`sql` with the route or job's comment when tags are on: a text stable per route, for prepared statements."""
        if not self.tags:
            return sql
        pairs = labels()
        return sql + comment(pairs) if pairs else sql

    # -- its parts --------------------------------------------------------------------------------

    def _open(self, target: Target, sql: str) -> _Statement:
        statement = _Statement(self, target, shape_of(target, sql))
        instruments = self.instruments
        if instruments is not None:
            attributes = statement.shape.span  # the SDK copies what it is given
            tenant, tagged = current_tenant(), tagged_now()
            if tenant is not None or tagged or instruments.query_text:
                attributes = {**attributes, **{f"kit.{name}": value for name, value in tagged}}
                if tenant is not None:
                    attributes["kit.tenant.id"] = str(tenant)
                if instruments.query_text:
                    attributes["db.query.text"] = sql
            statement.span = instruments.tracer.start_span(statement.shape.summary, kind=instruments.client,
                                                           attributes=attributes)
        statement.start = time.perf_counter()
        return statement

    def _close(self, target: Target, statement: _Statement, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - statement.start
        instruments, span = self.instruments, statement.span
        error = None if exc is None else type(exc).__qualname__
        if instruments is not None:
            attributes = statement.shape.metric
            if error is not None:
                attributes = {**attributes, "error.type": error}
                code = sqlstate(exc)
                if code:
                    attributes["db.response.status_code"] = code
            instruments.duration.record(seconds, attributes)
            if span is not None:
                if statement.resent:
                    span.set_attribute("kit.statement.resent", True)
                if error is not None:
                    span.set_attributes({key: attributes[key] for key in ("error.type", "db.response.status_code")
                                         if key in attributes})
                    span.set_status(instruments.failed(error))
                span.end()
        if self.slow_after is not None and seconds >= self.slow_after:
            self._log_slow(target, statement, seconds, error)

    def _comment(self, statement: _Statement) -> str:
        """The sqlcommenter comment for this statement: route or job, tenant id, traceparent."""
        pairs = labels()
        tenant = current_tenant()
        if tenant is not None:
            pairs["tenant"] = str(tenant)
        span = statement.span
        if span is not None:
            context = span.get_span_context()
            if context.is_valid:
                pairs["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        return comment(pairs)

    @staticmethod
    def _log_slow(target: Target, statement: _Statement, seconds: float, error: str | None) -> None:
        """The one log line of a statement over the slow-query threshold (with its trace, when traced)."""
        tagged = labels()
        tenant = current_tenant()
        context = statement.span.get_span_context() if statement.span is not None else None
        trace: dict[str, str] = {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"} \
            if context is not None and context.is_valid else {}
        log.warning("slow statement: %s took %.0f ms on %s (tenant %s, %s)%s%s", statement.shape.summary,
                    seconds * 1000, target.describe(), tenant or "none",
                    ", ".join(f"{key} {value}" for key, value in tagged.items()) or "no route or job",
                    f", failed: {error}" if error else "", f", trace {trace['trace_id']}" if trace else "",
                    extra={"duration_ms": round(seconds * 1000, 1), "summary": statement.shape.summary,
                           "tenant": str(tenant) if tenant else None, **tagged, "server": target.describe(),
                           **trace})


# -- what is switched on ----------------------------------------------------------------------------

_on: dict[str, Any] = {"instruments": None, "slow_after": None, "tags": False}


def configure(*, slow_after: float | None = ..., tags: bool = ...) -> None:  # type: ignore[assignment]
    """Switch the slow-query log (seconds, None: off) and query tags on or off (those not given stay)."""
    if slow_after is not ...:
        _on["slow_after"] = slow_after
    if tags is not ...:
        _on["tags"] = tags
    _rebuild()


def instrument(instruments: Instruments | None) -> None:
    """Give the watch OpenTelemetry's tracer and meters (None: take them away)."""
    _on["instruments"] = instruments
    _rebuild()


def _rebuild() -> None:
    global active
    watch = Watch(_on["instruments"], _on["slow_after"], _on["tags"])
    active = watch if (watch.instruments or watch.slow_after is not None or watch.tags) else None


@contextmanager
def operation(name: str, **attributes: Any) -> Iterator[Any]:
    """A span around one unit of the kit's own work (a migration, a seed load, a bulk copy) when traced.

    Yields the span, to add what is known only at the end (`set_attribute`), or None when not traced.
    """
    instruments = _on["instruments"]
    if instruments is None:
        yield None
        return
    given = {key: value for key, value in attributes.items() if value is not None}
    with instruments.tracer.start_as_current_span(name, kind=instruments.internal, attributes=given,
                                                  record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(instruments.failed(type(exc).__qualname__))
            raise
