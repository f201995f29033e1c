"""Tenant isolation benchmark: the same queries with row-level security on (kit_app, `kit.tenant`) and off (the owner).

A database of its own, migrated by the owner, holding `document_chunks` (1536-d embeddings, the HNSW
index the migrations make, full-text search) for one large tenant, one small one and ten others. The
same queries run two ways, interleaved, on the same data and connections of the same pool settings:

- **owner**: kit_owner, which bypasses row-level security: the query's own `organization_id` filter only;
- **app**: kit_app inside `kit.tenant(org)`: the tenant setting rides with each statement and every
  policy applies (the cost of isolation: the extra `set_config` and the policy's filter).

Queries: an organization-scoped select by index (20 rows of a tenant), `DocumentChunk.search` and
`DocumentChunk.hybrid_search`, each on the small and the large tenant. Prints p50/p95 of each and
the ratio app / owner (target: p50 within 1.10x).

Run: `python benchmarks/tenancy.py [--large N] [--small N] [--queries Q]`. Made and dropped as it goes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg2

from kit import embedded, migrate, roles, tenant
from kit.config import load_settings
from kit.copy import copy_rows
from kit.db import Database, resolve_url
from kit.models import ALL_MODELS, DocumentChunk, DocumentSource, Organization
from kit.models.rag import EMBEDDING_DIMENSIONS

WORDS = ("invoice payment webhook retry refund dashboard export report token quota member invite billing "
         "search vector index tenant policy audit credit usage plan upgrade cancel trial key secret").split()


def admin(url: str, sql: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def with_dbname(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def load(owner: Database, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, tuple]:
    """Organizations with chunks (embeddings around a few topics, text of known words); their ids and centres."""
    out = {}
    with owner.bind_ctx(ALL_MODELS):
        for name, rows in sizes.items():
            org = Organization.create(name=name, slug=f"{name}-{secrets.token_hex(3)}")
            source = DocumentSource.create(organization=org, title=name)
            centres = rng.standard_normal((8, EMBEDDING_DIMENSIONS)).astype(np.float32)
            copy_rows(DocumentChunk, ({
                "source": source.id, "organization": org.id, "position": i,
                "content": " ".join(rng.choice(WORDS, 12)),
                "embedding": centres[i % 8] + rng.standard_normal(EMBEDDING_DIMENSIONS).astype(np.float32) * 0.4,
            } for i in range(rows)))
            out[name] = (org.id, centres)
        owner.execute_sql("VACUUM ANALYZE document_chunks")
    return out


def timed(call, n: int) -> list[float]:
    return [call(i) for i in range(n)]


def measure(db: Database, org, centres, kind: str, i: int, rng: np.random.Generator, as_tenant: bool) -> float:
    """Milliseconds for one query of `kind` (the same arguments whichever role runs it)."""
    q = centres[i % 8] + rng.standard_normal(EMBEDDING_DIMENSIONS).astype(np.float32) * 0.1
    with db.bind_ctx(ALL_MODELS), (tenant(org) if as_tenant else _nothing()):
        start = time.perf_counter()
        if kind == "select by index":
            rows = list(DocumentChunk.select(DocumentChunk.id, DocumentChunk.position)  # the tenant's b-tree
                        .where(DocumentChunk.organization == org).limit(20))
            assert len(rows) == 20
        elif kind == "search":
            assert len(DocumentChunk.search(q, organization=org, k=10)) == 10
        else:
            assert len(DocumentChunk.hybrid_search(f"{WORDS[i % len(WORDS)]} report", q, organization=org, k=10)) == 10
        return (time.perf_counter() - start) * 1000


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    """Make the data, run every query both ways interleaved, print p50/p95 and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=20_000, help="chunks of the large tenant")
    parser.add_argument("--small", type=int, default=300, help="chunks of the small tenant")
    parser.add_argument("--others", type=int, default=1_000, help="chunks of each of ten other tenants")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    settings = load_settings()
    server = os.environ.get("DATABASE_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    name = f"kit_bench_tenancy_{os.getpid()}_{secrets.token_hex(2)}"
    admin(server, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
    roles.bootstrap(with_dbname(server, name))
    owner_url = with_dbname(resolve_url(settings, roles.OWNER), name)
    owner, app = Database(), Database()
    owner.configure(owner_url, owner=True)
    app.configure(with_dbname(resolve_url(settings, roles.APP), name), owner_url=owner_url)
    rng = np.random.default_rng(5)
    try:
        migrate.apply(owner, __import__("pathlib").Path(__file__).resolve().parent.parent / "migrations",
                      say=lambda _: None)
        start = time.perf_counter()
        sizes = {"large": args.large, "small": args.small, **{f"other{n}": args.others for n in range(10)}}
        tenants = load(owner, sizes, rng)
        print(f"loaded {sum(sizes.values()):,} chunks ({args.large:,} large tenant, {args.small:,} small, ten of "
              f"{args.others:,}) in {time.perf_counter() - start:.1f}s; {args.queries} queries each, interleaved\n")
        print(f"{'query':<16} {'tenant':<6} | {'owner p50':>9} {'p95':>6} | {'app p50':>8} {'p95':>6} | "
              f"{'app/owner p50':>13}")
        worst = 0.0
        for kind in ("select by index", "search", "hybrid_search"):
            for who in ("small", "large"):
                org, centres = tenants[who]
                for warm in range(5):  # plans cached, counts remembered, connections open
                    measure(owner, org, centres, kind, warm, rng, False)
                    measure(app, org, centres, kind, warm, rng, True)
                plain, isolated = [], []
                for i in range(args.queries):
                    plain.append(measure(owner, org, centres, kind, i, rng, False))
                    isolated.append(measure(app, org, centres, kind, i, rng, True))
                p50, a50 = float(np.median(plain)), float(np.median(isolated))
                worst = max(worst, a50 / p50)
                print(f"{kind:<16} {who:<6} | {p50:>9.2f} {np.percentile(plain, 95):>6.2f} | {a50:>8.2f} "
                      f"{np.percentile(isolated, 95):>6.2f} | {a50 / p50:>12.2f}x")
        print(f"\nworst p50 ratio {worst:.2f}x (target <= 1.10x): "
              + ("met" if worst <= 1.10 else "not met on this run"))
    finally:
        owner.close_all()
        app.close_all()
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
