"""Seed benchmark: loading a generated fixture of 50,000+ rows, against what a seed script would otherwise do.

Side by side in one run, on a scratch database of its own (created, migrated and dropped; the
developer's data is never touched), with the same rows:

- kit: `python -m kit.seed`'s path: parse, generate (fake names, picks, 1536-d embeddings), resolve
  references, and load all or nothing (binary COPY into staging tables, then upserts);
- naive: one `Model.create(**row)` per row of the same prepared values, the loop every hand-written
  seed script starts with (timed on a smaller fixture of the same shape, as rows/s);
- raw: `Model.insert_many` of the already prepared rows in batches (no generation at all);
- COPY limit: the same rows, already in binary COPY form, copied back in one transaction: what the
  server alone needs, the floor for any loader.

Run: `python benchmarks/seed.py [--scale 1.0]` and read the ratios
(targets: >= 20x naive, >= 0.7x raw, >= 0.85x the COPY limit).
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from kit import embedded, fixtures, migrate, roles
from kit.config import load_settings
from kit.db import Database, resolve_url

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = """
users:
  _generate:
    count: {users}
    values:
      name: !fake person.full_name
      email: !format "user{{n}}@bench.example"
      email_verified: !choice {{true: 3, false: 1}}
organizations:
  _generate:
    count: {orgs}
    values:
      name: !fake finance.company
      slug: !format "org-{{n}}"
members:
  _generate:
    per: organizations
    between: [{members}, {members}]
    parent: organization
    values:
      user: !pick {{table: users, unique: true}}
      role: !choice {{admin: 1, member: 5}}
document_sources:
  _generate:
    per: organizations
    between: [1, 1]
    parent: organization
    values:
      title: !fake text.title
      kind: upload
document_chunks:
  _generate:
    per: document_sources
    between: [{chunks}, {chunks}]
    parent: source
    values:
      organization: "@parent.organization"
      position: !index
      content: !fake text.sentence
      token_count: !fake {{method: numeric.integer_number, start: 20, end: 400}}
      embedding: !embedding
"""


def admin(url: str, statement: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


def empty_tables(db: Database, tables: list[str]) -> None:
    db.execute_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


def measure(db: Database, path: Path, rounds: int, naive_path: Path, limit: bool) -> dict[str, float]:
    """Median rows/s of the kit's load, of raw insert_many of the prepared rows, and of the naive loop."""
    fixture = fixtures.parse(path)
    tables = fixtures.touched_tables(fixture)
    resolver = fixtures.Resolver(fixture, 0, db)
    prepared = {t: [values for _, values in resolver.table_rows(t)] for t in tables}
    total = sum(len(rows) for rows in prepared.values())
    models = resolver.models
    bound = [models[t] for t in tables]
    kit_rates, raw_rates, copy_rates = [], [], []
    for _ in range(rounds):
        empty_tables(db, tables)
        start = time.perf_counter()
        report = fixtures.load(fixtures.parse(path), db)
        kit_rates.append(total / (time.perf_counter() - start))
        assert sum(c.inserted for c in report.values()) == total
        if limit:  # (with an HNSW index, COPY grows the graph row by row: minutes, and not what the kit does)
            copy_rates.append(total / copy_limit(db, tables))
        empty_tables(db, tables)
        start = time.perf_counter()
        with db.bind_ctx(bound), db.atomic():
            for table in tables:
                rows = prepared[table]
                batch = max(1, 20_000 // max(1, len(rows[0])))
                for i in range(0, len(rows), batch):
                    models[table].insert_many(rows[i:i + batch]).execute()
        raw_rates.append(total / (time.perf_counter() - start))
    # The naive loop on a smaller fixture of the same shape: one Model.create (one commit) per row.
    small = fixtures.Resolver(fixtures.parse(naive_path), 0, db)
    rows = [(t, values) for t in tables for _, values in small.table_rows(t)]
    naive_rates = []
    for _ in range(rounds):
        empty_tables(db, tables)
        start = time.perf_counter()
        with db.bind_ctx(bound):
            for table, values in rows:
                models[table].create(**values)
        naive_rates.append(len(rows) / (time.perf_counter() - start))
    empty_tables(db, tables)
    return {"rows": total, "kit": statistics.median(kit_rates), "raw": statistics.median(raw_rates),
            "naive": statistics.median(naive_rates), "copy": statistics.median(copy_rates) if copy_rates else 0.0,
            # the server's speed drifts between rounds: each kit load is compared with the COPY right after it
            "kit/copy": statistics.median(k / c for k, c in zip(kit_rates, copy_rates, strict=True))
            if copy_rates else 0.0}


def copy_limit(db: Database, tables: list[str]) -> float:
    """Seconds the server takes to COPY the loaded rows back in, already encoded: the floor for any loader."""
    encoded = {}
    with db.atomic(), db.connection().cursor() as cur:
        for table in tables:
            encoded[table] = io.BytesIO()
            cur.copy_expert(f'COPY "{table}" TO STDOUT WITH (FORMAT BINARY)', encoded[table])
    empty_tables(db, tables)
    start = time.perf_counter()
    with db.atomic(), db.connection().cursor() as cur:
        for table in tables:
            cur.copy_expert(f'COPY "{table}" FROM STDIN WITH (FORMAT BINARY)',
                            io.BytesIO(encoded[table].getvalue()), size=8 << 20)
    return time.perf_counter() - start


def report(title: str, figures: dict[str, float]) -> None:
    """Print one variant's figures and ratios."""
    kit, raw, naive, copy = figures["kit"], figures["raw"], figures["naive"], figures["copy"]
    print(f"\n{title}: {figures['rows']:,} rows, median rows/s")
    print(f"  kit (generate + resolve + load)   {kit:>10,.0f}")
    print(f"  raw insert_many (prepared rows)   {raw:>10,.0f}")
    print(f"  naive Model.create loop           {naive:>10,.0f}")
    if copy:
        print(f"  COPY of the rows already encoded  {copy:>10,.0f}  (the server's limit)")
    print(f"  kit / naive = {kit / naive:.1f}x  (target >= 20x)")
    print(f"  kit / raw   = {kit / raw:.2f}x  (target >= 0.7x)")
    if copy:
        print(f"  kit / COPY limit = {figures['kit/copy']:.2f}x  (median of each round's ratio; target >= 0.85x)")


def main() -> None:
    """Run the benchmark: with the schema as migrated, then without the HNSW index; print rows/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = about 51,000 rows")
    parser.add_argument("--rounds", type=int, default=5, help="rounds without the HNSW index (with it: 1)")
    parser.add_argument("--skip-hnsw", action="store_true", help="only the variant without the HNSW index")
    args = parser.parse_args()
    sizes = {"users": int(10_000 * args.scale), "orgs": int(500 * args.scale), "members": 20, "chunks": 60}
    naive_sizes = {"users": 400, "orgs": 20, "members": 20, "chunks": 60}
    settings = load_settings()  # a database of its own: made by the admin, migrated and seeded by the owner
    server = os.environ.get("DATABASE_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    name = f"kit_bench_seed_{os.getpid()}_{secrets.token_hex(2)}"
    admin(server, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
    roles.bootstrap(urlunsplit(urlsplit(server)._replace(path="/" + name)))
    db = Database()
    owner = resolve_url(settings, roles.OWNER)
    db.configure(urlunsplit(urlsplit(owner)._replace(path="/" + name)), owner=True)
    workdir = Path(tempfile.mkdtemp(prefix="kit-seed-bench-"))
    try:
        migrate.apply(db, ROOT / "migrations", say=lambda _: None)
        path, naive_path = workdir / "bench.yaml", workdir / "naive.yaml"
        path.write_text(FIXTURE.format(**sizes))
        naive_path.write_text(FIXTURE.format(**naive_sizes))
        print("Each approach pays the HNSW index on document_chunks.embedding: the kit builds it once after")
        print("loading, the others insert into it row by row. The second variant drops that index to show")
        print("the loaders themselves.")
        if not args.skip_hnsw:
            report("schema as migrated (HNSW index on the embeddings)", measure(db, path, 1, naive_path, limit=False))
        db.execute_sql("DROP INDEX document_chunks_embedding_hnsw_cosine_halfvec_m16_efc64")
        report("without the HNSW index", measure(db, path, args.rounds, naive_path, limit=True))
    finally:
        db.close_all()
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
