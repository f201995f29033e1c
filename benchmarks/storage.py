"""Storage benchmark: 1536-d embeddings kept in the row (the kit's document_chunks) against PostgreSQL's default.

A 1536-d vector is 6 KB. By default PostgreSQL moves any value that makes a row larger than 2 KB out of
the row (TOAST); `document_chunks` is created `WITH (toast_tuple_target = 8160)` so that it stays in.
Two tables of the same shape (uuid key, a sentence, vector(1536)) get the same 30,000 random unit
vectors, side by side in one run: binary COPY time, an exact top-10 scan, and the HNSW index build
(cosine, m=16, ef_construction=64), which PostgreSQL can give parallel workers only when the table's
own pages are many. Prints medians and the ratios.

Run: `python benchmarks/storage.py [--rows N] [--skip-build]`. Uses its own tables, dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid

import numpy as np
from peewee import TextField, UUIDField

from kit.db import database
from kit.vector import VectorField, VectorModel, copy_rows

DIM = 1536
TABLES = {"default": "bench_storage_toasted", "in the row": "bench_storage_inline"}


class Chunk(VectorModel):
    id = UUIDField(primary_key=True)
    content = TextField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = TABLES["default"]


def encoded(vectors: np.ndarray) -> bytes:
    """The rows as one binary COPY stream: loaded once with copy_rows, then read back with COPY TO."""
    content = "a passage of about sixty characters, as a chunk would hold."
    copy_rows(Chunk, [{"id": uuid.uuid4(), "content": content, "embedding": v} for v in vectors])
    out = io.BytesIO()
    with database.atomic():
        database.cursor().copy_expert(f'COPY "{TABLES["default"]}" TO STDOUT WITH (FORMAT BINARY)', out)
    return out.getvalue()


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    """Load the same vectors into both tables; print COPY, exact scan and HNSW build times and ratios."""
    database.configure_owner()  # its own tables: made, loaded and dropped as the owner (DDL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--skip-build", action="store_true", help="leave out the HNSW builds (about a minute)")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((args.rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = [vectors[i] + rng.standard_normal(DIM).astype(np.float32) * 0.1 for i in range(20)]
    figures: dict[str, dict[str, float]] = {}
    try:
        for kind, table in TABLES.items():
            options = " WITH (toast_tuple_target = 8160)" if kind == "in the row" else ""
            database.execute_sql(f'DROP TABLE IF EXISTS "{table}"')
            database.execute_sql(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, content text NOT NULL, '
                                 f"embedding vector({DIM})){options}")
        stream = encoded(vectors)
        for kind, table in TABLES.items():
            copies = []
            for _ in range(3):
                database.execute_sql(f'TRUNCATE "{table}"')

                def copy(table: str = table) -> None:
                    with database.atomic():
                        database.cursor().copy_expert(f'COPY "{table}" FROM STDIN WITH (FORMAT BINARY)',
                                                      io.BytesIO(stream), size=8 << 20)
                copies.append(timed(copy))
            database.execute_sql(f'VACUUM ANALYZE "{table}"')
            scans = []
            for q in queries:
                literal = "[" + ",".join(map(repr, q.tolist())) + "]"
                scans.append(timed(lambda table=table, literal=literal: database.execute_sql(
                    f'SELECT id FROM "{table}" ORDER BY embedding <=> %s::vector LIMIT 10', (literal,)).fetchall()))
            heap, toast = database.execute_sql(
                "SELECT pg_relation_size(oid), COALESCE(pg_relation_size(NULLIF(reltoastrelid, 0)), 0) "
                "FROM pg_class WHERE relname = %s", (table,)).fetchone()
            figures[kind] = {"copy": statistics.median(copies), "scan": statistics.median(scans) * 1000,
                             "heap": heap / 1e6, "toast": toast / 1e6}
            if not args.skip_build:
                with database.atomic():
                    database.execute_sql("SET LOCAL maintenance_work_mem = '512MB'")
                    figures[kind]["build"] = timed(lambda table=table: database.execute_sql(
                        f'CREATE INDEX ON "{table}" USING hnsw (embedding vector_cosine_ops) '
                        "WITH (m = 16, ef_construction = 64)"))
    finally:
        for table in TABLES.values():
            database.execute_sql(f'DROP TABLE IF EXISTS "{table}"')
    print(f"{args.rows:,} rows x {DIM} float32, medians")
    for kind, got in figures.items():
        build = f"   HNSW build {got['build']:6.1f} s" if "build" in got else ""
        print(f"  {kind:<11} COPY {got['copy']:5.2f} s   exact top-10 {got['scan']:6.1f} ms   "
              f"heap {got['heap']:5.0f} MB   TOAST {got['toast']:5.0f} MB{build}")
    before, after = figures["default"], figures["in the row"]
    print("ratios (default / in the row)")
    print(f"  COPY {before['copy'] / after['copy']:.2f}x   exact scan {before['scan'] / after['scan']:.1f}x"
          + (f"   HNSW build {before['build'] / after['build']:.1f}x" if "build" in after else ""))


if __name__ == "__main__":
    main()
