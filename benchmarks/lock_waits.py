"""Bounded impact of schema changes: a writer's longest stall while they run, the kit's way beside the plain way.

A database of its own, migrated by the owner, with 1,000,000 audit rows and two tables of 1,000,000
orders. A writer inserts a row every 20 ms on a connection of its own throughout; what is measured is
its longest insert (the stall everyone on that table sees) and its 99th percentile, and how long the
command took.

1. **A partition made behind a long transaction.** An application transaction has read `audit_logs`
   and stays open `--hold` seconds. The kit: `kit maintain` (brief lock waits, retried, `kit.ddl`).
   Plain: `CREATE TABLE ... PARTITION OF audit_logs`, as `kit maintain` ran before (no lock timeout).
2. **A migration on a table with rows**: a foreign key column, NOT NULL on a column, an index. The
   kit: the generator's safe forms (`kit_ops.add_fields`, `add_not_null`, `add_index(concurrently=True)`;
   steps after the transaction). Plain: peewee-migrate's `migrator.add_fields`, `add_not_null`,
   `add_index` (validations and the index build under the migration's locks).

Run: `python benchmarks/lock_waits.py [--rows N] [--hold S]`. Made and dropped as it goes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg2
from tenancy import admin, with_dbname

from kit import embedded, migrate, roles
from kit.config import load_settings
from kit.db import Database, resolve_url
from kit.maintain import maintain
from kit.models import ALL_MODELS
from kit.partitions import _month, month_partitions, partition_name

ROOT = Path(__file__).resolve().parent.parent
ORDERS = '''
import peewee as pw


def migrate(migrator, database, *, fake=False):
    for table in ("orders_kit", "orders_plain"):
        class Order(pw.Model):
            total = pw.IntegerField(null=True)

            class Meta:
                table_name = table
        migrator.create_model(Order)


def rollback(migrator, database, *, fake=False):
    migrator.remove_model("orders_kit")
    migrator.remove_model("orders_plain")
'''
CHANGE = '''
import peewee as pw
import kit.migrate.operations as kit_ops


def migrate(migrator, database, *, fake=False):
    owner = pw.ForeignKeyField(migrator.orm["organizations"], null=True, on_delete="SET NULL", field="id",
                               column_name="owner_id")
    {ops}


def rollback(migrator, database, *, fake=False):
    pass
'''
KIT_OPS = ('kit_ops.add_fields(migrator, "orders_kit", owner=owner)\n    kit_ops.add_not_null(migrator, "orders_kit", '
           '"total")\n    kit_ops.add_index(migrator, "orders_kit", "total", concurrently=True)')
PLAIN_OPS = ('migrator.add_fields("orders_plain", owner=owner)\n    migrator.add_not_null("orders_plain", "total")\n'
             '    migrator.add_index("orders_plain", "total")')


class Writer(threading.Thread):
    """Inserts into `sql`'s table every 20 ms; the latency of each insert."""

    def __init__(self, url: str, sql: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(url, application_name="bench-writer")
        self.conn.autocommit = True
        self.sql, self.stop, self.latencies = sql, threading.Event(), []

    def run(self) -> None:
        with self.conn.cursor() as cursor:
            while not self.stop.is_set():
                started = time.perf_counter()
                cursor.execute(self.sql)
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
        self.conn.close()


def measured(url: str, sql: str, command, hold: float = 0.0) -> tuple[float, float, float]:
    """Run `command` while a writer writes (and, with `hold`, a transaction holds): (longest, p99, seconds)."""
    writer = Writer(url, sql)
    writer.start()
    time.sleep(0.5)
    holder = None
    if hold:
        holder = psycopg2.connect(url, application_name="bench-holder")
        holder.cursor().execute("SELECT count(*) FROM audit_logs WHERE created_at > now()")
        threading.Timer(hold, holder.rollback).start()
    started = time.perf_counter()
    command()
    took = time.perf_counter() - started
    time.sleep(max(0.0, hold - took) + 0.5)
    writer.stop.set()
    writer.join()
    if holder is not None:
        holder.close()
    return max(writer.latencies), float(np.percentile(writer.latencies, 99)), took


def drop_newest_partition(owner: Database) -> str:
    """Detach and drop the newest partition made ahead, so the next upkeep must make it again; its name."""
    newest = max(month_partitions(owner, "audit_logs"))
    name = partition_name("audit_logs", newest)
    owner.execute_sql(f'ALTER TABLE audit_logs DETACH PARTITION "{name}"')
    owner.execute_sql(f'DROP TABLE "{name}"')
    return name


def main() -> None:
    """Make the data, run each scenario the kit's way and the plain way, print stalls and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of audit_logs and of each orders table")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the application transaction stays open")
    args = parser.parse_args()
    settings = load_settings()
    server = os.environ.get("DATABASE_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    name = f"kit_bench_locks_{os.getpid()}_{secrets.token_hex(2)}"
    admin(server, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
    roles.bootstrap(with_dbname(server, name))
    url = with_dbname(resolve_url(settings, roles.OWNER), name)
    owner = Database()
    owner.configure(url, owner=True)
    directory = Path(tempfile.mkdtemp()) / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    (directory / "090_orders.py").write_text(ORDERS)
    quiet = {"say": lambda _: None}
    try:
        migrate.apply(owner, directory, **quiet)
        started = time.perf_counter()
        owner.execute_sql("INSERT INTO audit_logs (action, created_at) SELECT 'seed', now() - (n %% 60) * interval "
                          "'1 day' FROM generate_series(1, %s) n", (args.rows,))
        for table in ("orders_kit", "orders_plain"):
            owner.execute_sql(f"INSERT INTO {table} (total) SELECT n FROM generate_series(1, %s) n", (args.rows,))
        owner.execute_sql("INSERT INTO organizations (name, slug) VALUES ('bench', 'bench')")
        maintain(owner, ALL_MODELS, **quiet)  # the past months' rows get their partitions before any measure
        owner.execute_sql("VACUUM ANALYZE")
        print(f"loaded {args.rows:,} audit rows and {args.rows:,} rows in each orders table in "
              f"{time.perf_counter() - started:.0f}s; a writer inserts every 20 ms; lock timeout "
              f"{settings.lock_timeout_ms:,} ms\n")
        print(f"{'scenario':<44} {'way':<6} | {'longest stall':>13} {'p99':>7} | {'took':>6}")
        results = {}
        write_audit = "INSERT INTO audit_logs (action) VALUES ('tick')"
        month = _month(datetime.now(UTC), 3)
        plain_sql = (f"CREATE TABLE \"{partition_name('audit_logs', month)}\" PARTITION OF audit_logs FOR VALUES "
                     f"FROM ('{month.isoformat()} 00:00:00+00') TO ('{_month(month, 1).isoformat()} 00:00:00+00')")
        scenario = f"a partition, behind a {args.hold:g} s transaction"
        for way, command in (("kit", lambda: maintain(owner, ALL_MODELS, **quiet)),
                             ("plain", lambda: owner.execute_sql(plain_sql))):
            drop_newest_partition(owner)
            results[(scenario, way)] = measured(url, write_audit, command, hold=args.hold)
        scenario2 = f"FK + NOT NULL + index on {args.rows:,} rows"
        for way, table, ops in (("kit", "orders_kit", KIT_OPS), ("plain", "orders_plain", PLAIN_OPS)):
            (directory / f"09{1 if way == 'kit' else 2}_{way}.py").write_text(CHANGE.replace("{ops}", ops))
            results[(scenario2, way)] = measured(url, f"INSERT INTO {table} (total) VALUES (1)",
                                                 lambda: migrate.apply(owner, directory, **quiet))
        for (scenario_name, way), (longest, p99, took) in results.items():
            print(f"{scenario_name:<44} {way:<6} | {longest * 1000:>10,.0f} ms {p99 * 1000:>4,.0f} ms | {took:>5.1f}s")
        print()
        for scenario_name in (scenario, scenario2):
            kit, plain = results[(scenario_name, "kit")], results[(scenario_name, "plain")]
            print(f"{scenario_name}: longest stall plain / kit = {plain[0] / kit[0]:.1f}x")
    finally:
        owner.close_all()
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(directory.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
