"""`KitInstrumentor`: OpenTelemetry spans and metrics for the kit's databases and pools.

`opentelemetry-instrument python app.py` finds it under the `opentelemetry_instrumentor` entry point
(`kit`); by hand, `KitInstrumentor().instrument(tracer_provider=..., meter_provider=...)`. Options:
`capture_query_text=True` adds `db.query.text` (peewee's parameterized text; off by default, as a
caller's raw SQL may hold literals); `pool_timings=False` leaves out the three per-checkout
histograms below (two SDK records a checkout: a real cost, measured in benchmarks/telemetry.py).
It needs `pip install "peewee-saas-kit[otel]"` (opentelemetry-api and opentelemetry-instrumentation); the SDK
and exporters are the application's choice.

What it records, by OpenTelemetry's database conventions:

- a CLIENT span per statement (`kit.telemetry.watch`), and INTERNAL spans for `kit migrate` steps,
  seed loads and `kit maintain` runs, with the statements inside them as children;
- `db.client.operation.duration` (s), per server, operation and summary, with `error.type`;
- per pool (`db.client.connection.pool.name`: `host:port/database`, a replica's and the owner's door
  marked, asyncio pools too): `db.client.connection.count` by `db.client.connection.state`
  (idle/used), `.max`, `.idle.min`, `.pending_requests`, `.timeouts`, and the histograms
  `.wait_time`, `.use_time`, `.create_time` (s; `.create_time` of the sync pools only: asyncpg's
  pool opens its connections without a hook to time them);
- the kit's own counters per pool: `kit.db.client.resends`, `kit.db.client.session_losses`,
  `kit.db.client.replica_fallbacks`, `kit.db.client.connection.leaks`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.metrics import CallbackOptions, Observation

from kit.pool import ConnectionPool
from kit.telemetry import watch

SCOPE = "kit"
DISTRIBUTION = "peewee-saas-kit"  # the name pip knows the kit by (the import name is `kit`)
TIME_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
KIT_COUNTERS = (("resent", "kit.db.client.resends", "statements re-sent on a new connection (never run before)"),
                ("session_lost", "kit.db.client.session_losses", "connections lost with session state or a "
                 "transaction (SessionLost)"),
                ("replica_fallbacks", "kit.db.client.replica_fallbacks", "reads a replica could not serve, "
                 "served by the primary"),
                ("leaks", "kit.db.client.connection.leaks", "connections reported held past the leak threshold"))


def _version() -> str:
    """The installed kit's version, for the instrumentation scope."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0"


class _PoolObserver:
    """Told by each sync pool how long a checkout waited, a connection took to open, and was held."""

    def __init__(self, wait: Any, use: Any, create: Any) -> None:
        self.wait, self.use, self.create = wait, use, create
        self._attributes: dict[str, dict[str, str]] = {}

    def _of(self, name: str) -> dict[str, str]:
        found = self._attributes.get(name)
        if found is None:
            found = self._attributes[name] = {"db.client.connection.pool.name": name}
        return found

    def waited(self, pool: str, seconds: float) -> None:
        """A checkout of pool `pool` took `seconds` to get its connection."""
        self.wait.record(seconds, self._of(pool))

    def created(self, pool: str, seconds: float) -> None:
        """A connection of pool `pool` took `seconds` to open."""
        self.create.record(seconds, self._of(pool))

    def used(self, pool: str, seconds: float) -> None:
        """A connection came back to pool `pool` after `seconds` checked out."""
        self.use.record(seconds, self._of(pool))


def _alive(found: Any) -> list[Any]:
    """A copy of a weak set that another thread may add to meanwhile (a copy made then is tried again)."""
    for _ in range(5):
        try:
            return list(found)
        except RuntimeError:  # "set changed size during iteration"
            continue
    return []


def _pools() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pool in the process, sync and asyncio, as (name, stats)."""
    for pool in _alive(ConnectionPool.every):
        yield pool.name, pool.stats()
    for database in _alive(watch.async_databases):
        if database._pool is not None:
            stats = database.pool_stats()
            stats.pop("servers", None)
            yield database.pool_name, stats


class KitInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentation of the kit: spans and metrics for statements, commands and pools."""

    _on = False
    _observed: set[int] = set()  # the meters the pool gauges are registered with (once each)

    def instrumentation_dependencies(self) -> Collection[str]:
        """The packages this instruments (checked by `opentelemetry-instrument` before `instrument()`)."""
        return ("peewee >= 3.17",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(SCOPE, _version(), tracer_provider=kwargs.get("tracer_provider"))
        meter = metrics.get_meter(SCOPE, _version(), meter_provider=kwargs.get("meter_provider"))
        duration = meter.create_histogram("db.client.operation.duration", unit="s",
                                          description="Duration of database client operations.",
                                          explicit_bucket_boundaries_advisory=TIME_BUCKETS)
        if id(meter) not in KitInstrumentor._observed:  # observable instruments stay: they report while on
            KitInstrumentor._observed.add(id(meter))
            self._observe_pools(meter)
        KitInstrumentor._on = True
        ConnectionPool.observer = None if not kwargs.get("pool_timings", True) else _PoolObserver(*(
            meter.create_histogram(f"db.client.connection.{name}", unit="s", description=text,
                                   explicit_bucket_boundaries_advisory=TIME_BUCKETS)
            for name, text in (("wait_time", "The time it took to obtain an open connection from the pool."),
                               ("use_time", "The time between borrowing a connection and returning it to the pool."),
                               ("create_time", "The time it took to create a new connection."))))
        watch.instrument(watch.Instruments(tracer, duration, bool(kwargs.get("capture_query_text", False))))

    def _uninstrument(self, **kwargs: Any) -> None:
        KitInstrumentor._on = False
        ConnectionPool.observer = None
        watch.instrument(None)

    @staticmethod
    def _observe_pools(meter: Any) -> None:
        """Register the pool gauges and the kit's counters, read from every pool at each collection."""
        def gauge(pick: Any) -> Any:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                if not KitInstrumentor._on:
                    return []
                return [Observation(value, {"db.client.connection.pool.name": name, **extra})
                        for name, stats in _pools() for value, extra in pick(stats) if value is not None]
            return callback

        def count_states(stats: dict[str, Any]) -> list[tuple[Any, dict[str, str]]]:
            return [(stats["idle"], {"db.client.connection.state": "idle"}),
                    (stats["in_use"], {"db.client.connection.state": "used"})]

        for name, pick, text in (
                ("count", count_states, "The number of connections that are currently in state described by "
                 "the state attribute."),
                ("max", lambda s: [(s["max"], {})], "The maximum number of open connections allowed."),
                ("idle.min", lambda s: [(s["min"], {})], "The minimum number of idle open connections allowed."),
                ("pending_requests", lambda s: [(s.get("waiting"), {})],
                 "The number of current pending requests for an open connection.")):
            meter.create_observable_up_down_counter(f"db.client.connection.{name}", callbacks=[gauge(pick)],
                                                    unit="{connection}" if name != "pending_requests" else
                                                    "{request}", description=text)
        meter.create_observable_counter("db.client.connection.timeouts", unit="{timeout}",
                                        callbacks=[gauge(lambda s: [(s.get("timeouts"), {})])],
                                        description="The number of connection timeouts that have occurred trying "
                                        "to obtain a connection from the pool.")
        for key, name, text in KIT_COUNTERS:
            meter.create_observable_counter(name, callbacks=[gauge(lambda s, key=key: [(s.get(key, 0), {})])],
                                            unit="1", description=text)
