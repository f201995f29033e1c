"""Partitions benchmark: audit rows in a monthly-partitioned table (as migration 008 makes audit_logs) beside
the same rows in a plain table, in one run on the same data.

Three tables with audit_logs' columns and indexes (organization, actor, action; the key): partitioned,
plain as audit_logs was before migration 008, and plain with a b-tree on created_at as well (what one
would add instead of partitioning). Rows arrive in
time order, as audit entries do, over 24 months, for 200 organizations. Measured side by side:

- insert rate: rows/s of `INSERT ... SELECT` batches of 500,000 generated rows (the server's cost:
  routing rows to partitions, keeping the indexes), and of the kit's own `insert_many` for 50,000 rows
  in batches of 1,000 (what an application pays);
- a month: `count(*)` of one month, and one organization's latest 50 entries of a month (p50 of 15);
- retention: removing the oldest month, `DELETE` on the plain table against `DETACH` + `DROP` of
  its partition.

Run: `python benchmarks/partitions.py [--rows N]` (default 10,000,000). Uses its own tables, dropped
at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import date

from kit.db import database
from kit.partitions import partition_name

MONTHS = 24
TABLES = ("bench_audit_plain", "bench_audit_indexed", "bench_audit_part")
BATCH = 500_000
COLUMNS = """
    id uuid NOT NULL DEFAULT gen_random_uuid(), organization_id uuid, actor_id uuid, action text NOT NULL,
    target_type text, target_id text, ip text, user_agent text, metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()"""
GENERATE = """
INSERT INTO {table} (organization_id, actor_id, action, target_type, target_id, ip, metadata, created_at)
SELECT ('00000000-0000-0000-0000-' || lpad((i %% 200)::text, 12, '0'))::uuid, gen_random_uuid(),
       'action.' || (i %% 20), 'document', (i %% 100000)::text, '10.0.' || (i %% 250) || '.1', '{{"n": 1}}',
       timestamptz '2025-01-01 00:00:00+00' + (i * %s) * interval '1 second'
FROM generate_series(%s, %s) AS i
"""


def setup(rows: int) -> float:
    """Create both tables; return the seconds between two generated rows (24 months over `rows`)."""
    for table in TABLES:
        database.execute_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    database.execute_sql(f"CREATE TABLE bench_audit_plain ({COLUMNS}, PRIMARY KEY (id))")
    database.execute_sql(f"CREATE TABLE bench_audit_indexed ({COLUMNS}, PRIMARY KEY (id))")
    database.execute_sql("CREATE INDEX bench_audit_indexed_created_at ON bench_audit_indexed (created_at)")
    database.execute_sql(f"CREATE TABLE bench_audit_part ({COLUMNS}, PRIMARY KEY (id, created_at)) "
                         "PARTITION BY RANGE (created_at)")
    for month in range(MONTHS + 1):
        low = f"{2025 + month // 12}-{month % 12 + 1:02d}-01 00:00:00+00"
        high = f"{2025 + (month + 1) // 12}-{(month + 1) % 12 + 1:02d}-01 00:00:00+00"
        name = partition_name("bench_audit_part", date(2025 + month // 12, month % 12 + 1, 1))
        database.execute_sql(f"CREATE TABLE {name} PARTITION OF bench_audit_part "
                             f"FOR VALUES FROM ('{low}') TO ('{high}')")
    database.execute_sql("CREATE TABLE bench_audit_part_default PARTITION OF bench_audit_part DEFAULT")
    for table in TABLES:
        for column in ("organization_id", "actor_id", "action"):
            database.execute_sql(f"CREATE INDEX {table}_{column} ON {table} ({column})")
    return MONTHS * 30.4 * 86400 / rows


def insert_rate(table: str, rows: int, step: float) -> float:
    """rows/s of generating `rows` rows into `table` in batches."""
    started = time.perf_counter()
    for first in range(0, rows, BATCH):
        with database.atomic():
            database.execute_sql(GENERATE.format(table=table), (step, first, min(first + BATCH, rows) - 1))
    return rows / (time.perf_counter() - started)


def app_insert_rate(table: str, count: int) -> float:
    """rows/s of `insert_many` in batches of 1,000, rows of 2026-12 (the current month in the data)."""
    from peewee import SQL, Table

    target = Table(table, ("organization_id", "action", "metadata", "created_at"))
    target = target.bind(database)
    started = time.perf_counter()
    for first in range(0, count, 1000):
        with database.atomic():
            target.insert([(str(uuid.UUID(int=n % 200)), "app.insert", '{"n": 2}',
                                 SQL("timestamptz '2026-12-15 00:00:00+00'")) for n in range(first, first + 1000)]
                               ).execute()
    return count / (time.perf_counter() - started)


def p50(sql: str, params: tuple = (), runs: int = 15) -> float:
    """Median ms of `sql`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        database.execute_sql(sql, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print partitioned against plain."""
    database.configure_owner()  # its own tables: made, loaded and dropped as the owner (DDL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    step = setup(args.rows)
    month = ("2026-06-01 00:00:00+00", "2026-07-01 00:00:00+00")
    org = "00000000-0000-0000-0000-000000000007"
    count_sql = "SELECT count(*) FROM {t} WHERE created_at >= %s AND created_at < %s"
    latest_sql = ("SELECT * FROM {t} WHERE organization_id = %s AND created_at >= %s AND created_at < %s "
                  "ORDER BY created_at DESC LIMIT 50")
    names = ["insert, INSERT ... SELECT (rows/s)", "insert, insert_many x 1,000 (rows/s)",
             "count(*) of one month (ms, p50)", "an organization's latest 50 of a month (ms, p50)",
             "retire the oldest month (s)"]
    found: dict[str, list[float]] = {name: [] for name in names}
    for table in TABLES:
        found[names[0]].append(insert_rate(table, args.rows, step))
        database.execute_sql(f"VACUUM ANALYZE {table}")
    for table in TABLES:
        found[names[1]].append(app_insert_rate(table, 50_000))
        found[names[2]].append(p50(count_sql.format(t=table), month))
        found[names[3]].append(p50(latest_sql.format(t=table), (org, *month)))
    oldest = database.execute_sql("SELECT count(*) FROM bench_audit_part_p202501").fetchone()[0]
    for table in TABLES[:2]:
        started = time.perf_counter()
        with database.atomic():
            database.execute_sql(f"DELETE FROM {table} WHERE created_at < '2025-02-01+00'")
        found[names[4]].append(time.perf_counter() - started)
    started = time.perf_counter()
    with database.atomic():
        database.execute_sql("ALTER TABLE bench_audit_part DETACH PARTITION bench_audit_part_p202501")
        database.execute_sql("DROP TABLE bench_audit_part_p202501")
    found[names[4]].append(time.perf_counter() - started)
    print(f"{args.rows:,} audit rows over {MONTHS} months (the oldest month: {oldest:,} rows): partitioned by "
          "month vs plain (as audit_logs was) vs plain with a created_at index")
    print(f"{'measure':<52} {'plain':>11} {'+index':>11} {'partitioned':>12} {'vs plain':>9} {'vs +index':>9}")
    for name in names:
        plain, indexed, part = found[name]
        better = (lambda a, b: b / a) if "rows/s" in name else (lambda a, b: a / b)
        print(f"{name:<52} {plain:>11,.2f} {indexed:>11,.2f} {part:>12,.2f} {better(plain, part):>8.2f}x "
              f"{better(indexed, part):>8.2f}x")
    print("ratio: times better partitioned does (rates: partitioned/other; times: other/partitioned)")
    for table in TABLES:
        database.execute_sql(f"DROP TABLE IF EXISTS {table} CASCADE")


if __name__ == "__main__":
    main()
