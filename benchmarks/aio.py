"""asyncio benchmark: `kit.aio` beside SQLAlchemy's asyncio (asyncpg) and raw asyncpg, on 1 and 50 tasks.

The same three operations against the same server (DATABASE_URL or the embedded default, seeded with
fixtures/dev.yaml), each stack with a pool of at most 10 connections, as the run-time role:
- read:    one organization by its id (every column)
- consume: one credit taken in a transaction, as the tenant (`kit.tenant` bound to the transaction, then
           `UPDATE org_credits ... RETURNING balance`); the kit: `OrgCredit.consume(org, 1)` in `run()`
- search:  the 10 chunks of one organization nearest a 1536-d vector (cosine), every column (vectors decoded
           to numpy) and the distance, as the tenant; the kit: `DocumentChunk.search`, which also counts the
           organization's rows to pick a plan and bounds the search's time (one more statement)

- kit:        `kit.aio.database` (pwasyncio on asyncpg), models unbound
- sqlalchemy: SQLAlchemy 2 Core on `postgresql+asyncpg` (tables reflected, pgvector's SQLAlchemy type)
- raw:        an asyncpg pool, hand-written SQL, pgvector's asyncpg codec (the limit)

SQLAlchemy is a benchmark-only dependency (`pip install -e ".[bench]"`); missing, it is skipped with a
line. Prints the median ops/s of several rounds and the kit's ratios to each anchor.
Run: `python benchmarks/aio.py [--ops N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable

import numpy as np
from timing import on_tasks

from kit.config import load_settings
from kit.db import resolve_url

POOL = 10
TASKS = (1, 50)
# The tenant as the kit sends it: the organization, bound to the transaction (`kit.tenancy.statement_prefix`)
TENANT_SQL = ("SELECT set_config('kit.tenant', $1, true), "
              "set_config('kit.tenant_xact', extract(epoch FROM transaction_timestamp())::text, true)")
UPDATE_SQL = ("UPDATE org_credits SET balance = balance - 1 WHERE organization_id = $1 AND balance >= 1 "
              "RETURNING balance")
SEARCH_SQL = ("SELECT id, created_at, updated_at, source_id, organization_id, position, content, token_count, "
              "embedding, language, embedding <=> $2 AS distance FROM document_chunks "
              "WHERE organization_id = $1 AND embedding IS NOT NULL ORDER BY distance LIMIT 10")

Op = Callable[[], Awaitable[object]]


async def kit_stack(org_id, vector):
    """(ops, close) for kit.aio."""
    from dataclasses import replace

    import kit
    from kit.aio import AsyncDatabase
    from kit.models import DocumentChunk, Organization, OrgCredit

    db = AsyncDatabase(settings=replace(load_settings(), pool_max=POOL, pool_min=POOL))

    async def read():
        return await db.get(Organization.select().where(Organization.id == org_id))

    async def consume():
        return await db.run(OrgCredit.consume, org_id, 1)

    async def search():
        with kit.tenant(org_id):
            return await db.run(DocumentChunk.search, vector, org_id, k=10)

    return {"read": read, "consume": consume, "search": search}, db.close_pool


async def sqlalchemy_stack(url, org_id, vector):
    """(ops, close) for SQLAlchemy Core on asyncpg."""
    from pgvector.sqlalchemy import Vector  # noqa: F401 - registers the type for reflection
    from sqlalchemy import MetaData, select, text, update
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=POOL,
                                 max_overflow=0)
    meta = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(lambda sync: meta.reflect(sync, only=["organizations", "org_credits",
                                                                  "document_chunks"]))
    orgs, credits, chunks = (meta.tables[n] for n in ("organizations", "org_credits", "document_chunks"))
    tenant = text(TENANT_SQL.replace("$1", ":t"))
    columns = [c for c in chunks.c if c.name != "search_text"]
    distance = chunks.c.embedding.cosine_distance(vector).label("distance")
    nearest = (select(*columns, distance)
               .where(chunks.c.organization_id == org_id, chunks.c.embedding.is_not(None))
               .order_by("distance").limit(10))

    async def read():
        async with engine.connect() as conn:
            return (await conn.execute(select(orgs).where(orgs.c.id == org_id))).one()

    async def consume():
        async with engine.begin() as conn:
            await conn.execute(tenant, {"t": str(org_id)})
            return (await conn.execute(update(credits).where(credits.c.organization_id == org_id,
                                                             credits.c.balance >= 1)
                                       .values(balance=credits.c.balance - 1).returning(credits.c.balance))).one()

    async def search():
        async with engine.begin() as conn:
            await conn.execute(tenant, {"t": str(org_id)})
            return (await conn.execute(nearest)).all()

    return {"read": read, "consume": consume, "search": search}, engine.dispose


async def raw_stack(url, org_id, vector):
    """(ops, close) for an asyncpg pool and hand-written SQL."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL, init=register_vector)

    async def read():
        return await pool.fetchrow("SELECT * FROM organizations WHERE id = $1", org_id)

    async def consume():
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(TENANT_SQL, str(org_id))
            return await conn.fetchval(UPDATE_SQL, org_id)

    async def search():
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(TENANT_SQL, str(org_id))
            return await conn.fetch(SEARCH_SQL, org_id, vector)

    return {"read": read, "consume": consume, "search": search}, pool.close


async def main(ops: int, rounds: int) -> None:
    """Build the three stacks, then time each operation at 1 and 50 tasks, round after round."""
    import kit
    from kit.models import DocumentChunk, OrgCredit

    url = resolve_url(load_settings())
    with kit.all_tenants():
        org_id = (DocumentChunk.select(DocumentChunk.organization).group_by(DocumentChunk.organization)
                  .order_by(DocumentChunk.organization).first()).organization_id
    OrgCredit.grant(org_id, 10_000_000)
    vector = np.random.default_rng(1).standard_normal(1536).astype(np.float32)
    stacks = {"kit": await kit_stack(org_id, vector)}
    try:
        stacks["sqlalchemy"] = await sqlalchemy_stack(url, org_id, vector)
    except ImportError as exc:
        print(f"sqlalchemy: skipped ({exc}); pip install -e '.[bench]'")
    stacks["raw"] = await raw_stack(url, org_id, vector)
    results: dict[tuple[str, str, int], list[float]] = {}
    for run, _ in stacks.values():  # warm every pool and statement cache
        for op in run.values():
            await on_tasks(10, 20, op)
    for _ in range(rounds):
        for operation in ("read", "consume", "search"):
            for tasks in TASKS:
                for name, (run, _) in stacks.items():
                    per_task = max(1, ops // tasks) if tasks > 1 else ops
                    results.setdefault((operation, name, tasks), []).append(
                        await on_tasks(tasks, per_task, run[operation]))
    for _, close in stacks.values():
        await close()
    print(f"median ops/s over {rounds} rounds, pools of {POOL} connections")
    print(f"{'operation':<10}{'tasks':>6}" + "".join(f"{n:>12}" for n in stacks)
          + "".join(f"{'kit/' + n:>16}" for n in stacks if n != "kit"))
    for operation in ("read", "consume", "search"):
        for tasks in TASKS:
            medians = {n: statistics.median(results[(operation, n, tasks)]) for n in stacks}
            print(f"{operation:<10}{tasks:>6}" + "".join(f"{medians[n]:>12,.0f}" for n in stacks)
                  + "".join(f"{medians['kit'] / medians[n]:>16.2f}" for n in stacks if n != "kit"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=400, help="operations per round (split among the tasks)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.rounds))
