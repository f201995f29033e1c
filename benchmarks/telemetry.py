"""Observability overhead: the kit's statements with OpenTelemetry on and off, in one run.

Two operations on the sync pool (DATABASE_URL or the embedded default, seeded with fixtures/dev.yaml):
- checkout: `SELECT 1` on a connection checked out and given back each time (`connection_context()`)
- read:     one organization by its id, a model read (every column)

Modes, their rounds interleaved so that the machine's drift hits each alike:
- off:         nothing observes (the default): one global read per statement
- on:          `KitInstrumentor` with the SDK, every span recorded and exported to an in-memory
               exporter through a `BatchSpanProcessor` (as production exports), every metric recorded
- on, 10%:     the same with a `ParentBased(TraceIdRatioBased(0.1))` sampler, the usual production setting
- no pool timings: 10% sampled, and `pool_timings=False` (no per-checkout histograms)
- on, no-op:   `KitInstrumentor` with the API's no-op providers: the kit's own work, without the SDK's
- tags + slow: no OpenTelemetry; query tags (a sqlcommenter comment) and the slow-query log on

And "off" in fresh child processes, alternately with OpenTelemetry importable and made unimportable,
to show that without OpenTelemetry installed the kit runs at the same speed. Prints median ops/s and
each mode's ratio to off, and the CPU time this process spends per op beyond off's (steadier than
wall time on a shared machine: it leaves out the server and the waits).
Run: `python benchmarks/telemetry.py [--ops N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

OPS = 3000
ROUNDS = 7


def operations() -> dict[str, Callable[[], object]]:
    """The two timed operations, on the kit's own `database`."""
    from kit.db import database
    from kit.models import Organization

    org_id = Organization.select(Organization.id).first().id
    database.close()

    def checkout() -> object:
        with database.connection_context():
            return database.execute_sql("SELECT 1").fetchone()

    def read() -> object:
        return Organization.get_by_id(org_id)

    return {"checkout": checkout, "read": read}


def rate(op: Callable[[], object], ops: int) -> float:
    """Ops per second of `op` run `ops` times."""
    start = time.perf_counter()
    for _ in range(ops):
        op()
    return ops / (time.perf_counter() - start)


def modes() -> dict[str, Callable[[bool], None]]:
    """Each mode as a switch: called with True before its round, False after."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import NoOpTracerProvider

    from kit.telemetry import watch
    from kit.telemetry.otel import KitInstrumentor

    def instrumented(sampler: object | None, sdk: bool = True, **options: bool) -> Callable[[bool], None]:
        exporter = InMemorySpanExporter()
        if sdk:
            tracer_provider = TracerProvider(**({"sampler": sampler} if sampler else {}))
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        else:  # the API's no-op providers: what the kit itself adds, without the SDK's work
            tracer_provider, meter_provider = NoOpTracerProvider(), NoOpMeterProvider()

        def switch(on: bool) -> None:
            if on:
                KitInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                             **options)
            else:
                KitInstrumentor().uninstrument()
                if sdk:
                    tracer_provider.force_flush()
                exporter.clear()
        return switch

    def tags_and_slow(on: bool) -> None:
        watch.configure(slow_after=10.0 if on else None, tags=on)

    return {"off": lambda on: None, "on": instrumented(None),
            "on, 10%": instrumented(ParentBased(TraceIdRatioBased(0.1))),
            "on, 10%, no pool timings": instrumented(ParentBased(TraceIdRatioBased(0.1)), pool_timings=False),
            "on, no-op providers": instrumented(None, sdk=False), "tags + slow": tags_and_slow}


def child_off(ops: int, absent: bool) -> dict[str, float]:
    """Ops/s of "off" in a fresh child process, with `opentelemetry` unimportable when `absent`."""
    code = (("import sys; sys.modules['opentelemetry'] = None\n" if absent else "")
            + f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "import telemetry\n"
            "ops = telemetry.operations()\n"
            f"[telemetry.rate(op, {ops // 4}) for op in ops.values()]\n"  # warm up, as the parent does
            f"print({{name: telemetry.rate(op, {ops}) for name, op in ops.items()}})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child's dict of floats


def watch_cost(switches: dict[str, Callable[[bool], None]], n: int = 20_000) -> dict[str, float]:
    """µs of the watch around one statement that does nothing, per mode: the kit's part, with no server."""
    import timeit

    from kit.telemetry import watch
    from kit.telemetry.watch import Target

    target, costs = Target("kit", "db.internal", 5432), {}
    for mode, switch in switches.items():
        switch(True)
        try:
            active = watch.active
            if active is None:
                costs[mode] = 0.0
                continue
            costs[mode] = timeit.timeit(lambda active=active: active.statement(target, "SELECT 1", len),
                                        number=n) / n * 1e6
        finally:
            switch(False)
    return costs


def main() -> None:
    """Run every mode's rounds interleaved and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=OPS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    ops, switches = operations(), modes()
    for op in ops.values():
        rate(op, args.ops // 4)  # warm up: the pool, the caches
    results: dict[tuple[str, str], list[float]] = {}
    spent: dict[tuple[str, str], list[float]] = {}  # this process's CPU µs per op
    for _ in range(args.rounds):
        for mode, switch in switches.items():
            switch(True)
            try:
                for name, op in ops.items():
                    cpu = time.process_time()
                    results.setdefault((mode, name), []).append(rate(op, args.ops))
                    spent.setdefault((mode, name), []).append((time.process_time() - cpu) / args.ops * 1e6)
            finally:
                switch(False)
    children: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.rounds):  # fresh processes, alternating: installed (not instrumented), then absent
        for absent in (False, True):
            children[absent].append(child_off(args.ops, absent))
    print(f"{args.ops} ops x {args.rounds} rounds, median ops/s (ratio to off in this run), and the client's "
          "CPU µs per op beyond off's")
    print(f"{'mode':<30}" + "".join(f"{name:>22}{'+CPU µs':>9}" for name in ops))
    off = {name: statistics.median(results[("off", name)]) for name in ops}
    for mode in switches:
        cells = []
        for name in ops:
            median = statistics.median(results[(mode, name)])
            extra = statistics.median(spent[(mode, name)]) - statistics.median(spent[("off", name)])
            cells.append(f"{f'{median:>10,.0f} ({median / off[name]:.3f})':>22}{extra:>9.1f}")
        print(f"{mode:<30}" + "".join(cells))
    print("the watch around one statement that does nothing (no server), µs: " + ", ".join(
        f"{mode} {cost:.1f}" for mode, cost in watch_cost(switches).items()))
    print("fresh processes, median ops/s; ratio: absent to installed")
    for absent, label in ((False, "off, OpenTelemetry installed"), (True, "off, OpenTelemetry absent")):
        cells = []
        for name in ops:
            median = statistics.median(run[name] for run in children[absent])
            base = statistics.median(run[name] for run in children[False])
            cells.append(f"{median:>10,.0f} ({median / base:.3f})")
        print(f"{label:<30}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
