"""Scale benchmark: HNSW on float32, on a halfvec expression, and binary quantization + exact re-rank.

200,000 x 1536 float32 vectors (OpenAI text-embedding-3-small's size) drawn around 500 cluster centres,
in a table kept in the row as `document_chunks` is. Each index is built alone, in turn, on the same
table, with the same HNSW parameters (m=16, ef_construction=64); for each, in one run:

- build time and index size;
- 200 queries near the data through `kit.vector.nearest` (k=10; quantized indexes re-rank
  `rerank` x k candidates by the exact cosine distance): recall@10 against the exact answer computed
  in numpy, and p50/p95 latency.

Run: `python benchmarks/scale.py [--rows N] [--queries Q]`. Uses its own table, dropped at the end.
Takes about half an hour on 2 cores, most of it building the two full-precision graphs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from peewee import AutoField, Model

from kit.db import database
from kit.vector import HNSWIndex, VectorField, copy_rows, nearest

DIM = 1536
K = 10
CLUSTERS = 500


class Chunk(Model):
    id = AutoField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "bench_scale_chunks"
        table_settings = ["WITH (toast_tuple_target = 8160)"]


def generate(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    data = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        data[start:stop] = centres[rng.integers(0, CLUSTERS, stop - start)]
        data[start:stop] += rng.standard_normal((stop - start, DIM)).astype(np.float32) * 0.6
    return data


def ground_truth(data: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    norms = np.linalg.norm(data, axis=1)
    answers = []
    for q in queries:
        cos = 1 - (data @ q) / (norms * np.linalg.norm(q))
        top = np.argpartition(cos, K)[:K]
        answers.append(set((top + 1).tolist()))  # ids start at 1
    return answers


def measure(queries: np.ndarray, truth: list[set[int]], **options) -> dict:
    seconds, recalls = [], []
    select = Chunk.select(Chunk.id)
    for q, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = nearest(select, Chunk.embedding, q, k=K, exact=False, **options)
        seconds.append(time.perf_counter() - start)
        recalls.append(len({r.id for r in found} & want) / K)
    ms = np.array(seconds) * 1000
    return {"recall": float(np.mean(recalls)), "p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95)),
            "plan": found.plan.method}


def build(index: HNSWIndex) -> tuple[float, int]:
    start = time.perf_counter()
    with database.atomic():
        database.execute_sql("SET LOCAL maintenance_work_mem = '8GB'")
        database.execute_sql("SET LOCAL max_parallel_maintenance_workers = 1")
        database.execute_sql(*database.get_sql_context().sql(index).query())
    seconds = time.perf_counter() - start
    size = database.execute_sql("SELECT pg_relation_size(%s)", (index._name,)).fetchone()[0]
    return seconds, size


def main() -> None:
    """Load, then build each index in turn, search through it, and print the table."""
    database.configure_owner()  # its own tables: made, loaded and dropped as the owner (DDL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    data = generate(args.rows, rng)
    queries = data[rng.integers(0, args.rows, args.queries)] + rng.standard_normal((args.queries, DIM)).astype(
        np.float32) * 0.3
    truth = ground_truth(data, queries)
    database.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")
    database.drop_tables([Chunk])
    database.create_tables([Chunk])
    try:
        start = time.perf_counter()
        copy_rows(Chunk, ({"embedding": v} for v in data))
        database.execute_sql("VACUUM ANALYZE bench_scale_chunks")
        table = database.execute_sql("SELECT pg_total_relation_size('bench_scale_chunks')").fetchone()[0]
        print(f"loaded {args.rows:,} x {DIM} in {time.perf_counter() - start:.0f}s; table {table / 2**20:,.0f} MiB\n",
              flush=True)
        variants = [
            ("float32 HNSW", None, [None]),
            ("halfvec HNSW", "halfvec", [1, 2]),
            ("binary HNSW + re-rank", "binary", [4, 10, 20]),
        ]
        rows = []
        for name, quantize, reranks in variants:
            index = HNSWIndex(Chunk.embedding, metric="cosine", m=16, ef_construction=64, quantize=quantize)
            seconds, size = build(index)
            print(f"{name}: built in {seconds:.0f}s, {size / 2**20:,.0f} MiB", flush=True)
            for rerank in reranks:
                result = measure(queries, truth, quantize=quantize, rerank=rerank)
                rows.append((name, rerank, seconds, size, result))
                print(f"  rerank {rerank or '-'}: recall@{K} {result['recall']:.3f}, p50 {result['p50']:.2f} ms, "
                      f"p95 {result['p95']:.2f} ms ({result['plan']})", flush=True)
            database.execute_sql(f'DROP INDEX "{index._name}"')
        base_seconds, base_size = rows[0][2], rows[0][3]
        base_p50 = rows[0][4]["p50"]
        print(f"\n{'index':<24} {'rerank':>6} {'build s':>8} {'size MiB':>9} {'recall@10':>9} {'p50 ms':>7} "
              f"{'p95 ms':>7} | {'size':>6} {'build':>6} {'p50':>6} vs float32")
        for name, rerank, seconds, size, r in rows:
            print(f"{name:<24} {rerank or '-':>6} {seconds:>8.0f} {size / 2**20:>9,.0f} {r['recall']:>9.3f} "
                  f"{r['p50']:>7.2f} {r['p95']:>7.2f} | {size / base_size:>5.2f}x {seconds / base_seconds:>5.2f}x "
                  f"{r['p50'] / base_p50:>5.2f}x")
    finally:
        database.drop_tables([Chunk])


if __name__ == "__main__":
    main()
