"""Pool benchmark: checkout + SELECT 1 + release, on 1 and 8 threads.

Measures, side by side in one run against the same server (DATABASE_URL or the embedded default), each
pool with at most 10 connections and its documented defaults otherwise:
- kit:          `kit.db.PooledDatabase`, `with db.connection_context(): db.execute_sql("SELECT 1")`
- kit-unproven: the same with `SELECT 1 -- unproven`, which `kit.db.clean` cannot prove stateless (a
                comment): the connection is reset (DISCARD ALL) on its way back, the price of that rule
- peewee:       playhouse's stock `PooledPostgresqlExtDatabase`, the same calls
- psycopg_pool: psycopg 3's `ConnectionPool`, `with pool.connection() as c: c.execute("SELECT 1")`
- sqlalchemy:   SQLAlchemy's `QueuePool` over psycopg2, `pool.connect()`, a cursor, `close()`
- raw:          a psycopg2 connection kept open per thread, `cursor.execute("SELECT 1")` (the limit)

psycopg_pool and SQLAlchemy are benchmark-only dependencies: `pip install -e ".[bench]"`; a missing one
is skipped with a line saying so. Prints the median ops/s over several rounds and the ratios.
Run: `python benchmarks/pool.py [--ops N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import statistics
import threading

import psycopg2
from playhouse.postgres_ext import PooledPostgresqlExtDatabase
from timing import on_threads

from kit.config import load_settings
from kit.db import PooledDatabase, resolve_url

WARM_UP_OPS = 3000  # per thread; new server processes take a few thousand queries to settle


def peewee_pool(db, sql: str = "SELECT 1"):
    """(op, close) for a peewee pooled database: checkout, `sql`, release."""
    def op():
        with db.connection_context():
            db.execute_sql(sql).fetchone()

    return op, db.close_all


def raw_connections(url: str):
    """(op, close) for one psycopg2 connection per thread (the limit), kept from the warm-up to the run."""
    local, opened, lock = threading.local(), [], threading.Lock()
    spare: list = []

    def op():
        cur = getattr(local, "cur", None)
        if cur is None:  # a thread's first op: a connection an earlier run's thread used, else a new one
            with lock:
                cur = spare.pop() if spare else None
            if cur is None:
                conn = psycopg2.connect(url, application_name="bench-raw")
                conn.autocommit = True
                with lock:
                    opened.append(conn)
                cur = conn.cursor()
            local.cur = cur
        cur.execute("SELECT 1")
        cur.fetchone()

    def between_runs():
        spare[:] = [conn.cursor() for conn in opened]

    def close():
        for conn in opened:
            conn.close()

    op.between_runs = between_runs
    return op, close


def main() -> None:
    """Run the benchmark and print ops/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per thread per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    url = resolve_url(load_settings())
    contenders = {
        "kit": lambda: peewee_pool(PooledDatabase(url, min_size=2, max_size=10, timeout=10,
                                                  application_name="bench-kit")),
        # a statement `kit.db.clean` cannot prove stateless (a comment): its connection is reset on the way back
        "kit-unproven": lambda: peewee_pool(PooledDatabase(url, min_size=2, max_size=10, timeout=10,
                                                           application_name="bench-kit"), "SELECT 1 -- unproven"),
        "peewee": lambda: peewee_pool(PooledPostgresqlExtDatabase(url, max_connections=10, timeout=10,
                                                                  application_name="bench-peewee")),
        **other_pools(url),
        "raw": lambda: raw_connections(url),
    }
    print(f"server: {url.split('?')[0]}  ops/thread/round: {args.ops}  rounds: {args.rounds}")
    for threads in (1, 8):
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):  # interleave rounds so machine noise hits every contender alike
            for name, make in contenders.items():
                # Built anew each round: which CPU a server process lands on moves a connection's round
                # trip by tens of percent on a small machine; new connections each round average that out.
                op, close = make()
                try:
                    on_threads(threads, WARM_UP_OPS, op)  # connections open, server processes settled
                    getattr(op, "between_runs", lambda: None)()
                    samples[name].append(on_threads(threads, args.ops, op))
                finally:
                    close()
        medians = {name: statistics.median(values) for name, values in samples.items()}
        print(f"\n{threads} thread{'s' if threads > 1 else ''}: median ops/s")
        for name, value in medians.items():
            print(f"  {name:<13} {value:>10,.0f}")
        target = 1.3 if threads == 1 else 2.0
        print(f"  raw / kit           = {medians['raw'] / medians['kit']:.2f}x  (target: <= {target}x)")
        for name in contenders:
            if name not in ("kit", "raw", "kit-unproven"):
                print(f"  kit / {name:<12} = {medians['kit'] / medians[name]:.2f}x")
        print(f"  kit / kit-unproven  = {medians['kit'] / medians['kit-unproven']:.2f}x  (the cost of a reset: "
              "DISCARD ALL on the way back)")


def other_pools(url: str) -> dict:
    """Factories for psycopg_pool and SQLAlchemy's QueuePool, each skipped with a line when not installed."""
    found = {}
    try:
        from psycopg_pool import ConnectionPool
    except ImportError:
        print("psycopg_pool not installed (pip install -e '.[bench]'): skipped")
    else:
        def psycopg_pool():
            pool = ConnectionPool(url, min_size=2, max_size=10, timeout=10, open=True,
                                  kwargs={"autocommit": True, "application_name": "bench-psycopg-pool"})

            def op():
                with pool.connection() as conn:
                    conn.execute("SELECT 1").fetchone()

            return op, pool.close

        found["psycopg_pool"] = psycopg_pool
    try:
        from sqlalchemy.pool import QueuePool
    except ImportError:
        print("SQLAlchemy not installed (pip install -e '.[bench]'): skipped")
    else:
        def creator():
            conn = psycopg2.connect(url, application_name="bench-sqlalchemy")
            conn.autocommit = True
            return conn

        def sqlalchemy():
            queue = QueuePool(creator, pool_size=10, max_overflow=0, timeout=10)

            def op():
                conn = queue.connect()
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchone()
                cur.close()
                conn.close()

            return op, queue.dispose

        found["sqlalchemy"] = sqlalchemy
    return found


if __name__ == "__main__":
    main()
