"""Vector benchmark: the kit's VectorField and bulk paths against pgvector-python's peewee field and raw binary COPY.

Same data for everyone (N x 1536 float32, default N = 20,000), same server (DATABASE_URL or the embedded
default), each measured over several interleaved rounds; medians and ratios are printed:

- insert: `Model.insert_many` in batches, one transaction: kit VectorField vs pgvector-python (anchor)
- bulk load: `copy_rows` vs a hand-written numpy binary COPY (the limit) and vs the anchor's insert_many
- select: model rows with their embeddings as numpy arrays: kit on the kit's models and on a plain
  `peewee.Model` vs the anchor (+ np.asarray)
- bulk read: `fetch_matrix` vs the anchor's select stacked into a matrix, and vs raw COPY TO (the limit)

Run: `python benchmarks/vectors.py [--rows N] [--rounds R]`. Uses its own tables (bench_vec_*), dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import time

import numpy as np
from peewee import BigAutoField, Model
from pgvector.peewee import VectorField as AnchorVectorField

from kit.copy.encoders import COPY_HEADER, COPY_TRAILER
from kit.db import database
from kit.vector import VectorField, VectorModel, copy_rows, fetch_matrix

DIM = 1536
BATCH = 500


class AnchorRow(Model):
    id = BigAutoField()
    embedding = AnchorVectorField(DIM)

    class Meta:
        database = database
        table_name = "bench_vec_anchor"


class KitRow(VectorModel):
    id = BigAutoField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "bench_vec_kit"


class LimitRow(Model):  # also the plain peewee.Model the kit's field is read through
    id = BigAutoField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "bench_vec_limit"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def insert_many(model, matrix):
    with database.atomic():
        for i in range(0, len(matrix), BATCH):
            model.insert_many([{"embedding": v} for v in matrix[i:i + BATCH]]).execute()


def handwritten_copy(matrix):
    """A numpy-built binary COPY of the embedding column, encoded whole and then sent: the raw limit."""
    rows = matrix.shape[0]
    body = np.empty((rows, 2 + 4 + 4 + DIM * 4), dtype=np.uint8)
    body[:, 0:2] = np.frombuffer(struct.pack(">h", 1), dtype=np.uint8)
    body[:, 2:6] = np.frombuffer(struct.pack(">i", 4 + DIM * 4), dtype=np.uint8)
    body[:, 6:10] = np.frombuffer(struct.pack(">HH", DIM, 0), dtype=np.uint8)
    body[:, 10:] = matrix.astype(">f4").view(np.uint8).reshape(rows, DIM * 4)
    payload = COPY_HEADER + body.tobytes() + COPY_TRAILER
    with database.atomic():
        database.cursor().copy_expert(
            f'COPY "{LimitRow._meta.table_name}" (embedding) FROM STDIN WITH (FORMAT BINARY)', io.BytesIO(payload),
            size=8 << 20,
        )


def raw_copy_out():
    out = io.BytesIO()
    with database.atomic():
        database.cursor().copy_expert(
            f'COPY (SELECT id, embedding FROM "{KitRow._meta.table_name}" ORDER BY id) TO STDOUT WITH (FORMAT BINARY)',
            out,
        )
    return out


def reset(*models):
    database.execute_sql("TRUNCATE " + ", ".join(f'"{m._meta.table_name}"' for m in models))


def main() -> None:
    """Run the benchmark and print rows/s and ratios."""
    database.configure_owner()  # its own tables: made, loaded and dropped as the owner (DDL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.rows
    matrix = np.random.default_rng(7).standard_normal((n, DIM)).astype(np.float32)
    database.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")
    models = [AnchorRow, KitRow, LimitRow]
    database.drop_tables(models)
    database.create_tables(models)
    samples: dict[str, list[float]] = {}

    def record(name, seconds):
        samples.setdefault(name, []).append(n / seconds)

    try:
        for _ in range(args.rounds):
            reset(*models)
            record("insert_many anchor", timed(lambda: insert_many(AnchorRow, matrix)))
            reset(KitRow)
            record("insert_many kit", timed(lambda: insert_many(KitRow, matrix)))
            reset(KitRow)
            record("copy_rows kit", timed(lambda: copy_rows(KitRow, ({"embedding": v} for v in matrix))))
            record("binary COPY limit", timed(lambda: handwritten_copy(matrix)))
            database.execute_sql("VACUUM ANALYZE bench_vec_anchor")
            database.execute_sql("VACUUM ANALYZE bench_vec_kit")

            def anchor_select():
                return [np.asarray(r.embedding, dtype=np.float32) for r in AnchorRow.select().order_by(AnchorRow.id)]

            def kit_select():
                return [r.embedding for r in KitRow.select().order_by(KitRow.id)]

            def plain_select():
                return [r.embedding for r in LimitRow.select().order_by(LimitRow.id)]

            def anchor_matrix():
                rows = list(AnchorRow.select(AnchorRow.id, AnchorRow.embedding).order_by(AnchorRow.id).tuples())
                return [r[0] for r in rows], np.asarray([r[1] for r in rows], dtype=np.float32)

            record("select anchor", timed(anchor_select))
            record("select kit", timed(kit_select))
            database.execute_sql("VACUUM ANALYZE bench_vec_limit")
            record("select kit plain", timed(plain_select))
            record("matrix anchor", timed(anchor_matrix))
            record("fetch_matrix kit", timed(lambda: fetch_matrix(KitRow.select(KitRow.id, KitRow.embedding)
                                                                  .order_by(KitRow.id))))
            record("COPY TO limit", timed(raw_copy_out))
        keys, got = fetch_matrix(KitRow.select(KitRow.id, KitRow.embedding).order_by(KitRow.id))
        assert np.array_equal(got, matrix), "fetch_matrix must return exactly what was loaded"
    finally:
        database.drop_tables(models)

    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{n:,} rows x {DIM} float32, {args.rounds} rounds, median rows/s")
    for name, value in med.items():
        print(f"  {name:<20} {value:>10,.0f}")

    def ratio(a, b, target):
        print(f"  {a} / {b} = {med[a] / med[b]:.2f}x  (target >= {target}x)")

    print("ratios")
    ratio("insert_many kit", "insert_many anchor", 2.5)
    ratio("copy_rows kit", "binary COPY limit", 0.85)
    ratio("copy_rows kit", "insert_many anchor", 12)
    ratio("select kit", "select anchor", 3)
    ratio("select kit plain", "select anchor", 3)
    ratio("fetch_matrix kit", "matrix anchor", 10)
    ratio("fetch_matrix kit", "COPY TO limit", 0.5)


if __name__ == "__main__":
    main()
