"""Migration 008 on tables with rows: the writers' longest stall, online (the kit now) beside in one transaction.

A database of its own, migrated to 007, with `--rows` rows in each of `audit_logs` and `ai_usage`
(default 1,100,000 each: 2,200,000 in all, over 24 months). Two writers insert on connections of
their own every 20 ms, one into each table; what is measured is each one's longest insert while the
tables are partitioned, and how long that took.

- **In one transaction** (how 008 ran before, and how `partition_table` runs outside a migration):
  each table locked while every row moves.
- **Online** (`pw_migrate migrate` / `kit migrate` now): 008 records a step; after its commit the step
  fills a partitioned copy kept current by a trigger, in batches, then swaps it in (`partition_online`).

Run: `python benchmarks/partition_online.py [--rows N]`. Made and dropped as it goes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from lock_waits import Writer
from tenancy import admin, with_dbname

from kit import embedded, migrate, roles
from kit.config import load_settings
from kit.db import Database, resolve_url
from kit.partitions import partition_table, unpartition_table

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("audit_logs", "ai_usage")
WRITES = {"audit_logs": "INSERT INTO audit_logs (action) VALUES ('tick')",
          "ai_usage": "INSERT INTO ai_usage (organization_id, model) SELECT id, 'tick' FROM organizations LIMIT 1"}


def measured(url: str, command) -> tuple[dict[str, tuple[float, float]], float]:
    """Run `command` while a writer writes into each table: ({table: (longest, p99)}, seconds)."""
    writers = {table: Writer(url, sql) for table, sql in WRITES.items()}
    for writer in writers.values():
        writer.start()
    time.sleep(0.5)
    started = time.perf_counter()
    command()
    took = time.perf_counter() - started
    time.sleep(0.5)
    for writer in writers.values():
        writer.stop.set()
        writer.join()
    return {t: (max(w.latencies), float(np.percentile(w.latencies, 99))) for t, w in writers.items()}, took


def main() -> None:
    """Load the rows, partition them both ways, print each writer's longest stall and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_100_000, help="rows in each of audit_logs and ai_usage")
    args = parser.parse_args()
    settings = load_settings()
    server = os.environ.get("DATABASE_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    name = f"kit_bench_p008_{os.getpid()}_{secrets.token_hex(2)}"
    admin(server, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
    roles.bootstrap(with_dbname(server, name))
    url = with_dbname(resolve_url(settings, roles.OWNER), name)
    owner = Database()
    owner.configure(url, owner=True)
    scratch = Path(tempfile.mkdtemp())
    up_to_007, up_to_008 = scratch / "007", scratch / "008"
    for directory, last in ((up_to_007, "007"), (up_to_008, "008")):
        directory.mkdir()
        for path in sorted((ROOT / "migrations").glob("0*.py")):
            if path.name[:3] <= last:
                shutil.copy(path, directory / path.name)
        shutil.copy(ROOT / "migrations" / "conf.py", directory / "conf.py")
    quiet = {"say": lambda _: None}
    try:
        migrate.apply(owner, up_to_007, **quiet)
        started = time.perf_counter()
        owner.execute_sql("INSERT INTO organizations (name, slug) VALUES ('bench', 'bench')")
        owner.execute_sql("INSERT INTO audit_logs (action, created_at) SELECT 'seed', now() - (n %% 730) * "
                          "interval '1 day' FROM generate_series(1, %s) n", (args.rows,))
        owner.execute_sql("INSERT INTO ai_usage (organization_id, model, input_tokens, created_at) "
                          "SELECT o.id, 'm', n, now() - (n %% 730) * interval '1 day' "
                          "FROM organizations o, generate_series(1, %s) n", (args.rows,))
        owner.execute_sql("VACUUM ANALYZE")
        took = time.perf_counter() - started
        print(f"loaded {args.rows:,} rows into each of audit_logs and ai_usage in {took:.0f}s; a writer inserts "
              f"into each every 20 ms; lock timeout {settings.lock_timeout_ms:,} ms\n")

        def in_one_transaction() -> None:
            with owner.atomic():
                for table in TABLES:
                    partition_table(owner, table)

        results = {"in one transaction": measured(url, in_one_transaction)}
        with owner.atomic():  # back to plain tables for the other way (not measured)
            for table in TABLES:
                unpartition_table(owner, table)
        owner.execute_sql("VACUUM ANALYZE")
        results["online (migration 008)"] = measured(url, lambda: migrate.apply(owner, up_to_008, **quiet))
        print(f"{'way':<24} | {'audit_logs longest':>18} {'p99':>7} | {'ai_usage longest':>16} {'p99':>7} | "
              f"{'took':>6}")
        for way, (stalls, took) in results.items():
            (a, a99), (u, u99) = stalls["audit_logs"], stalls["ai_usage"]
            print(f"{way:<24} | {a * 1000:>15,.0f} ms {a99 * 1000:>4,.0f} ms | {u * 1000:>13,.0f} ms "
                  f"{u99 * 1000:>4,.0f} ms | {took:>5.1f}s")
        plain, online = results["in one transaction"][0], results["online (migration 008)"][0]
        worst_plain = max(v[0] for v in plain.values())
        worst_online = max(v[0] for v in online.values())
        print(f"\nlongest stall, in one transaction / online = {worst_plain / worst_online:.0f}x; online it is "
              f"{worst_online * 1000:,.0f} ms against a bound of {settings.lock_timeout_ms + 500:,} ms "
              "(the lock timeout + 0.5 s)")
    finally:
        owner.close_all()
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
