"""Search benchmark: HNSW through `kit.vector.nearest` against an exact scan, on clustered vectors.

50,000 x 384 float32 vectors drawn around 200 cluster centres (not uniform noise), an HNSW cosine index
(m=16, ef_construction=64), 100 queries near the data. Prints recall@10 against the exact answer and
p50/p95 latency for both, unfiltered and filtered to an organization owning 1% of the rows (where the
filtered HNSW answer must never come back short).

Run: `python benchmarks/search.py [--rows N] [--queries Q]`. Uses its own table, dropped at the end.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from peewee import AutoField, IntegerField

from kit.db import database
from kit.vector import HNSWIndex, VectorField, VectorModel, copy_rows, nearest

DIM = 384


class Passage(VectorModel):
    id = AutoField()
    organization = IntegerField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "bench_search_passages"


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    spread = rng.standard_normal((n, DIM)).astype(np.float32) * 0.35
    return centres[rng.integers(0, 200, n)] + spread


def measure(queries, run) -> tuple[list[set[int]], np.ndarray]:
    answers, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append({row.id for row in run(q)})
        seconds.append(time.perf_counter() - start)
    return answers, np.array(seconds) * 1000


def report(name: str, approx, approx_ms, exact, exact_ms, k: int) -> None:
    recall = np.mean([len(a & e) / k for a, e in zip(approx, exact, strict=True)])
    short = sum(len(a) < k for a in approx)
    print(f"{name}")
    print(f"  recall@{k}      {recall:.3f}   (answers short of {k}: {short})")
    print(f"  HNSW  ms       p50 {np.median(approx_ms):7.2f}   p95 {np.percentile(approx_ms, 95):7.2f}")
    print(f"  exact ms       p50 {np.median(exact_ms):7.2f}   p95 {np.percentile(exact_ms, 95):7.2f}")
    print(f"  p50 exact / HNSW = {np.median(exact_ms) / np.median(approx_ms):.1f}x")


def main() -> None:
    """Load, index, query and print recall and latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    data = clustered(args.rows, rng)
    orgs = np.where(rng.random(args.rows) < 0.01, 1, 2)
    queries = data[rng.integers(0, args.rows, args.queries)] + rng.standard_normal((args.queries, DIM)) * 0.1
    database.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")
    database.drop_tables([Passage])
    database.create_tables([Passage])
    try:
        start = time.perf_counter()
        copy_rows(Passage, ({"organization": int(o), "embedding": v} for o, v in zip(orgs, data, strict=True)))
        print(f"loaded {args.rows:,} x {DIM} in {time.perf_counter() - start:.1f}s")
        start = time.perf_counter()
        with database.atomic():
            database.execute_sql("SET LOCAL maintenance_work_mem = '512MB'")
            index = HNSWIndex(Passage.embedding, metric="cosine", m=16, ef_construction=64)
            database.execute_sql(*database.get_sql_context().sql(index).query())
        database.execute_sql("ANALYZE bench_search_passages")
        print(f"built HNSW (m=16, ef_construction=64) in {time.perf_counter() - start:.1f}s\n")
        k = 10
        everyone = Passage.select(Passage.id)
        one_org = Passage.select(Passage.id).where(Passage.organization == 1)
        for name, query in (("unfiltered", everyone), ("filtered to an organization owning 1%", one_org)):
            approx, approx_ms = measure(queries, lambda q, s=query: nearest(s, Passage.embedding, q, k=k))
            exact, exact_ms = measure(queries, lambda q, s=query: nearest(s, Passage.embedding, q, k=k, exact=True))
            report(name, approx, approx_ms, exact, exact_ms, k)
    finally:
        database.drop_tables([Passage])


if __name__ == "__main__":
    main()
