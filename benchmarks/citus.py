"""One node beside a Citus cluster: the same tenant-scoped workload on the embedded server and on a
coordinator with two workers (`kit.devservers.citus`), in one run.

Both get the kit's migrations and the same rows: `--tenants` organizations with a credit balance,
`--sources` document sources and `--chunks` 1536-d chunks each. On the cluster, `kit db distribute`
places the schema first (tenant tables distributed by organization_id, co-located; shared ones
reference tables). Then, as the application role (`kit_app`, row-level security on) on 1 and
`--threads` threads, interleaved round by round, each operation picking a tenant at random:

- **point read, routed**: a document source by `organization_id` and `id` in the tenant's context
  (Citus sends it to the one shard that holds the tenant);
- **get_by_id**: the same row by `Model.get_by_id`, which names the tenant's column for you inside
  `kit.tenant(org)` (`kit.models.base.routing_field`): one shard too;
- **select by id alone**: the same row by a hand-written `select().where(id == ...)`: the policy confines
  it to the tenant, but Citus cannot prune shards by a policy, so the read visits every shard;
- **consume**: `OrgCredit.consume(org, 1)`, one routed UPDATE;
- **tenant search**: `DocumentChunk.search(q, organization=org, k=10)`;
- **cross-tenant report**: chunks counted per organization through the door (`all_tenants()`), a
  query over every shard, which Citus runs on the workers in parallel.

Prints median ops/s of each and the ratio cluster / one node. The source tarball comes from
KIT_CITUS_SOURCE or `../shared/citus/`; the cluster lives in a temporary directory and is removed.

Run: `python benchmarks/citus.py [--tenants N] [--chunks N] [--threads N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
from timing import on_threads

from kit import all_tenants, distribute, embedded, migrate, roles, tenant
from kit.config import load_settings
from kit.copy import copy_rows
from kit.db import Database, resolve_url
from kit.devservers import citus
from kit.models import ALL_MODELS, DocumentChunk, DocumentSource, Organization, OrgCredit
from kit.models.rag import EMBEDDING_DIMENSIONS
from kit.testing.template import with_dbname

ROOT = Path(__file__).resolve().parent.parent
OPS = {"point read, routed": 200, "get_by_id": 200, "select by id alone": 100, "consume": 100, "tenant search": 20,
       "cross-tenant report": 5}  # per thread per round


def admin(url: str, sql: str) -> None:
    """Run `sql` on its own autocommit connection (CREATE and DROP DATABASE)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def source_tarball() -> Path:
    """The Citus source tarball: KIT_CITUS_SOURCE, else the newest in ../shared/citus/; one sentence if none."""
    given = os.environ.get(citus.SOURCE_VARIABLE)
    found = [Path(given)] if given else sorted((ROOT.parent / "shared" / "citus").glob("citus-*.tar.gz"))
    if not found:
        raise SystemExit("no Citus source tarball: set KIT_CITUS_SOURCE or put it in ../shared/citus/")
    return found[-1]


class Target:
    """One place the workload runs: the owner's database (to load) and the application's (to measure)."""

    def __init__(self, name: str, app_url: str, owner_url: str, door_url: str) -> None:
        self.name = name
        self.owner, self.app = Database(), Database()
        self.owner.configure(owner_url, owner=True)
        self.app.configure(app_url, door_url=door_url)
        self.tenants: list[tuple[Any, list[Any]]] = []

    def load(self, tenants: int, sources: int, chunks: int, seed: int) -> float:
        """The same organizations, credits, sources and chunks on every target (from `seed`); seconds taken."""
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        with self.owner.bind_ctx(ALL_MODELS):
            for n in range(tenants):
                org = Organization.create(name=f"Tenant {n}", slug=f"tenant-{n}-{secrets.token_hex(3)}").id
                OrgCredit.grant(org, 10**9)
                ids = [DocumentSource.create(organization=org, title=f"doc {i}").id for i in range(sources)]
                copy_rows(DocumentChunk, ({"organization": org, "source": ids[i % sources], "position": i,
                                           "content": f"passage {i} of tenant {n}",
                                           "embedding": rng.standard_normal(EMBEDDING_DIMENSIONS).astype(np.float32)}
                                          for i in range(chunks)))
                self.tenants.append((org, ids))
            for table in ("document_chunks", "document_sources", "org_credits"):
                self.owner.execute_sql(f"ANALYZE {table}")
        return time.perf_counter() - start

    def operation(self, kind: str) -> Callable[[], Any]:
        """One call of `kind` as the application, on a tenant picked at random."""
        local = threading.local()

        def pick() -> tuple[Any, list[Any], random.Random]:
            if not hasattr(local, "rng"):
                local.rng = random.Random(threading.get_ident())
            org, ids = local.rng.choice(self.tenants)
            return org, ids, local.rng

        def routed() -> Any:
            org, ids, rng = pick()
            with tenant(org):
                return DocumentSource.get((DocumentSource.organization == org) & (DocumentSource.id == rng.choice(ids)))

        def by_id() -> Any:
            org, ids, rng = pick()
            with tenant(org):
                return DocumentSource.get_by_id(rng.choice(ids))

        def by_id_alone() -> Any:
            org, ids, rng = pick()
            with tenant(org):
                return DocumentSource.select().where(DocumentSource.id == rng.choice(ids)).get()

        def consume() -> Any:
            return OrgCredit.consume(pick()[0], 1)

        def search() -> Any:
            org, _, rng = pick()
            query = np.array([rng.gauss(0, 1) for _ in range(EMBEDDING_DIMENSIONS)], dtype=np.float32)
            found = DocumentChunk.search(query, organization=org, k=10)
            assert len(found) == 10
            return found

        def report() -> Any:
            with all_tenants():
                return self.app.execute_sql("SELECT organization_id, count(*) FROM document_chunks "
                                            "GROUP BY organization_id").fetchall()

        return {"point read, routed": routed, "get_by_id": by_id, "select by id alone": by_id_alone, "consume": consume,
                "tenant search": search, "cross-tenant report": report}[kind]

    def rate(self, threads: int, ops: int, call: Callable[[], Any]) -> float:
        """ops/s of `call` on `threads` threads, the models bound to the application's database (for all threads)."""
        with self.app.bind_ctx(ALL_MODELS):
            return on_threads(threads, ops, call, self.app.close)

    def close(self) -> None:
        self.owner.close_all()
        self.app.close_all()


def one_node(settings: Any) -> tuple[Target, Callable[[], None]]:
    """A fresh migrated database on the embedded server (or DATABASE_ADMIN_URL's); its target and its cleanup."""
    server = os.environ.get("DATABASE_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    name = f"kit_bench_citus_{os.getpid()}_{secrets.token_hex(2)}"
    admin(server, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
    roles.bootstrap(with_dbname(server, name))
    url = {role: with_dbname(resolve_url(settings, role), name) for role in (roles.APP, roles.OWNER, roles.DOOR)}
    target = Target("one node", url[roles.APP], url[roles.OWNER], url[roles.DOOR])
    migrate.apply(target.owner, ROOT / "migrations", say=lambda _: None)

    def cleanup() -> None:
        target.close()
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return target, cleanup


def cluster(source: Path) -> tuple[Target, Callable[[], None]]:
    """A coordinator and two workers in a temporary directory, migrated and distributed; its target and cleanup."""
    where = Path(tempfile.mkdtemp(prefix="kit-citus-bench-"))
    citus.start_citus(where, source)
    url = {role: citus.node_url(where, role=role) for role in (roles.APP, roles.OWNER, roles.DOOR)}
    target = Target("Citus, 2 workers", url[roles.APP], url[roles.OWNER], url[roles.DOOR])
    migrate.apply(target.owner, ROOT / "migrations", say=lambda _: None)
    distribute.distribute(target.owner, ALL_MODELS, say=lambda _: None)

    def cleanup() -> None:
        target.close()
        citus.stop_citus(where)
        shutil.rmtree(where, ignore_errors=True)

    return target, cleanup


def main() -> None:
    """Set up both targets, load the same rows, run every operation on both interleaved; print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--sources", type=int, default=20, help="document sources per tenant")
    parser.add_argument("--chunks", type=int, default=500, help="1536-d chunks per tenant")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings()
    cleanups: list[Callable[[], None]] = []
    try:
        single, done = one_node(settings)
        cleanups.append(done)
        sharded, done = cluster(source_tarball())
        cleanups.append(done)
        for target in (single, sharded):
            took = target.load(args.tenants, args.sources, args.chunks, seed=3)
            print(f"{target.name}: {args.tenants} tenants, {args.tenants * args.chunks:,} chunks loaded in {took:.1f}s")
        shards = sharded.owner.execute_sql("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = "
                                           "'document_chunks'::regclass").fetchone()[0]
        print(f"the cluster: document_chunks in {shards} shards over 2 workers; {os.cpu_count()} cores for all "
              f"three nodes and the clients\n")
        print(f"{'operation':<22} {'threads':>7} | {'one node ops/s':>14} | {'Citus ops/s':>11} | {'Citus / one':>11}")
        for kind, ops in OPS.items():
            for threads in sorted({1, args.threads}):
                rates: dict[str, list[float]] = {single.name: [], sharded.name: []}
                calls = {t.name: t.operation(kind) for t in (single, sharded)}
                for target in (single, sharded):  # warm: connections open, plans cached
                    target.rate(threads, 2, calls[target.name])
                for _ in range(args.rounds):
                    for target in (single, sharded):
                        rates[target.name].append(target.rate(threads, max(1, ops // threads), calls[target.name]))
                one, many = statistics.median(rates[single.name]), statistics.median(rates[sharded.name])
                print(f"{kind:<22} {threads:>7} | {one:>14,.0f} | {many:>11,.0f} | {many / one:>10.2f}x")
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


if __name__ == "__main__":
    main()
