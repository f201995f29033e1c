"""ORM benchmark: a model read, list and write through the kit beside the raw drivers, stock peewee and SQLAlchemy 2.

The same operations against the same server (DATABASE_URL or the embedded default, migrated and
seeded with fixtures/dev.yaml), as the run-time role, pools of at most 10 connections:
- pk:        one organization by its primary key (7 columns)
- unique:    one organization by its unique slug
- list:      100 rows of a 2,000-row table, filtered by an indexed column
- insert:    one row (4 columns; the key comes back)
- update:    one column of one row, by key
- consume:   `OrgCredit.consume(org, 1)`: the tenant and the UPDATE ... RETURNING in one round trip
- increment: `Usage.increment(org, "bench")`: the tenant and the upsert ... RETURNING in one round trip
- search:    `DocumentChunk.search` as the tenant: the 10 nearest 1536-d chunks, vectors decoded to numpy

Paths, sync on 1 and 8 threads, asyncio on 1 and 50 tasks:
- raw:        psycopg2, a connection per thread, hand-written SQL (for consume, increment and search the
              same statements the kit sends, tenant included: the hand-written version of the operation)
- peewee:     stock peewee's `PooledPostgresqlExtDatabase` and plain models of the same tables
- sa:         SQLAlchemy 2 ORM, a Session per operation (its compiled cache on)
- sa-lambda:  the same with `lambda_stmt` (SQLAlchemy's cached-lambda form)
- kit:        the kit's models and `kit.db.database`
- asyncpg:    an asyncpg pool, hand-written SQL (the asyncio limit)
- kit-aio:    `kit.aio`'s database, the same models (`db.get_by_id`, `db.get`, `db.list`, `db.run`)

Prints median ops/s over several rounds and each path's ratio to its raw driver (raw/path: 1.00 is the
driver's own speed, 2.00 half of it), and the kit's speed-up over stock peewee and SQLAlchemy.
SQLAlchemy is a benchmark-only dependency (`pip install -e ".[bench]"`); missing, it is skipped.
Run: `python benchmarks/orm.py [--ops N] [--rounds R] [--only pk,unique,...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import peewee
import psycopg2
from playhouse.postgres_ext import DateTimeTZField, PooledPostgresqlExtDatabase
from timing import on_tasks, on_threads

import kit
from kit.config import load_settings
from kit.db import database, resolve_url
from kit.models import DocumentChunk, Organization, OrgCredit, Usage
from kit.models.base import BaseModel
from kit.roles import APP, OWNER
from kit.tenancy import statement_prefix

POOL = 10
THREADS = (1, 8)
TASKS = (1, 50)
OPERATIONS = ("pk", "unique", "list", "insert", "update", "consume", "increment", "search")
NOTES = 2000
RELEASE = "release"  # a path's own: what a thread does when its operations are done
ORG_COLUMNS = "id, created_at, updated_at, name, slug, logo, metadata"
NOTE_COLUMNS = "id, created_at, title, category, views"
SETUP_SQL = f"""
DROP TABLE IF EXISTS bench_notes;
CREATE TABLE bench_notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), created_at timestamptz NOT NULL
  DEFAULT now(), title text NOT NULL, category text NOT NULL, views integer NOT NULL DEFAULT 0);
INSERT INTO bench_notes (title, category) SELECT 'note ' || i, 'c' || (i % 20) FROM generate_series(1, {NOTES}) i;
CREATE INDEX ON bench_notes (category);
GRANT SELECT, INSERT, UPDATE, DELETE ON bench_notes TO {APP};
"""
SQL = {
    "pk": f"SELECT {ORG_COLUMNS} FROM organizations WHERE id = %s LIMIT 1",
    "unique": f"SELECT {ORG_COLUMNS} FROM organizations WHERE slug = %s LIMIT 1",
    "list": f"SELECT {NOTE_COLUMNS} FROM bench_notes WHERE category = %s LIMIT 100",
    "insert": "INSERT INTO bench_notes (created_at, title, category, views) VALUES (%s, %s, %s, %s) RETURNING id",
    "update": "UPDATE bench_notes SET views = %s WHERE id = %s",
    "consume": "UPDATE org_credits SET balance = balance - %s, updated_at = %s WHERE organization_id = %s "
               "AND balance >= %s RETURNING balance",
    "increment": "INSERT INTO usage (created_at, updated_at, organization_id, metric, period_start, quantity) "
                 "VALUES (now(), now(), %s, 'bench', %s, %s) ON CONFLICT (organization_id, metric, period_start) "
                 "DO UPDATE SET quantity = usage.quantity + EXCLUDED.quantity, updated_at = now() RETURNING quantity",
    "search": "SELECT id, created_at, updated_at, source_id, organization_id, position, content, token_count, "
              "embedding, language, embedding <=> %s AS distance FROM document_chunks WHERE organization_id = %s "
              "AND embedding IS NOT NULL ORDER BY distance LIMIT 10",
}
# psycopg2 by hand as the kit sends it: the vectors in binary (vector_send), the search's own time limit first
RAW_SEARCH = ("SET LOCAL statement_timeout = 5000; " + SQL["search"].replace(
    "token_count, embedding,", "token_count, vector_send(embedding),"))


class Note(BaseModel):
    """The benchmark's own table, on the kit."""

    title = peewee.TextField()
    category = peewee.TextField()
    views = peewee.IntegerField(default=0)

    class Meta:
        table_name = "bench_notes"


class Given:
    """What every path reads and writes: one organization, a note, a vector."""

    def __init__(self) -> None:
        with kit.all_tenants():
            org = (DocumentChunk.select(DocumentChunk.organization).group_by(DocumentChunk.organization)
                   .order_by(DocumentChunk.organization).first()).organization
        self.org_id: uuid.UUID = org.id
        self.slug: str = org.slug
        self.note_id = Note.select(Note.id).first().id
        self.vector = np.random.default_rng(1).standard_normal(1536).astype(np.float32)
        self.period = dt.date.today().replace(day=1)
        OrgCredit.grant(self.org_id, 100_000_000)


def raw_path(url: str, given: Given) -> dict[str, Callable[[], Any]]:
    """psycopg2, a connection per thread, hand-written SQL."""
    from pgvector.psycopg2 import register_vector

    local, spare = threading.local(), []

    def cursor() -> Any:
        cur = getattr(local, "cur", None)
        if cur is None:
            cur = spare.pop() if spare else None
            if cur is None:
                conn = psycopg2.connect(url, application_name="bench-raw")
                conn.autocommit = True
                register_vector(conn)
                cur = conn.cursor()
            local.cur = cur
        return cur

    def release() -> None:  # a thread's connection goes to the next thread that runs
        cur = getattr(local, "cur", None)
        if cur is not None:
            local.cur = None
            spare.append(cur)

    tenant = statement_prefix(given.org_id)

    def fetch(sql: str, params: tuple[Any, ...]) -> Any:
        cur = cursor()
        cur.execute(sql, params)
        return cur.fetchall()

    return {
        "pk": lambda: fetch(SQL["pk"], (str(given.org_id),)),
        "unique": lambda: fetch(SQL["unique"], (given.slug,)),
        "list": lambda: fetch(SQL["list"], ("c3",)),
        "insert": lambda: fetch(SQL["insert"], (dt.datetime.now(dt.UTC), "new", "c99", 0)),
        "update": lambda: cursor().execute(SQL["update"], (7, str(given.note_id))),
        "consume": lambda: fetch(tenant + SQL["consume"], (1, dt.datetime.now(dt.UTC), str(given.org_id), 1)),
        "increment": lambda: fetch(tenant + SQL["increment"], (str(given.org_id), given.period, 1)),
        "search": lambda: [row[:8] + (np.frombuffer(row[8], ">f4", offset=4).astype(np.float32),) + row[9:]
                           for row in fetch(tenant + RAW_SEARCH, (given.vector, str(given.org_id)))],
        RELEASE: release,
    }


class JSONText(peewee.TextField):
    """JSON kept as text, parsed on the way out: the anchors do what the kit's `Organization.metadata` does."""

    def python_value(self, value: Any) -> Any:
        """The JSON text parsed."""
        return None if value is None else json.loads(value)


def peewee_path(url: str, given: Given) -> tuple[dict[str, Callable[[], Any]], Callable[[], None]]:
    """Stock peewee: a pooled database and plain models of the same tables."""
    db = PooledPostgresqlExtDatabase(url, max_connections=POOL, timeout=10, application_name="bench-peewee")

    class Plain(peewee.Model):
        id = peewee.UUIDField(primary_key=True)
        created_at = DateTimeTZField(default=lambda: dt.datetime.now(dt.UTC))

        class Meta:
            database = db

    class POrg(Plain):
        updated_at = DateTimeTZField()
        name = peewee.TextField()
        slug = peewee.TextField(unique=True)
        logo = peewee.TextField(null=True)
        metadata = JSONText(null=True)  # parsed, as the kit's model does (the same work per row)

        class Meta:
            table_name = "organizations"

    class PNote(Plain):
        title = peewee.TextField()
        category = peewee.TextField()
        views = peewee.IntegerField(default=0)

        class Meta:
            table_name = "bench_notes"

    PNote.id.default = None
    PNote._meta.primary_key.constraints = None
    return {
        "pk": lambda: POrg.get_by_id(given.org_id),
        "unique": lambda: POrg.get(POrg.slug == given.slug),
        "list": lambda: list(PNote.select().where(PNote.category == "c3").limit(100)),
        "insert": lambda: PNote.insert(created_at=dt.datetime.now(dt.UTC), title="new", category="c99",
                                       views=0).execute(),
        "update": lambda: PNote.update(views=7).where(PNote.id == given.note_id).execute(),
        RELEASE: db.close,
    }, db.close_all


def sqlalchemy_paths(url: str, given: Given) -> tuple[dict[str, dict[str, Callable[[], Any]]], Callable[[], None]]:
    """SQLAlchemy 2 ORM, a Session per operation: plain statements, and the lambda_stmt form."""
    from sqlalchemy import JSON, DateTime, Integer, Text, Uuid, create_engine, insert, lambda_stmt, select, update
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), pool_size=POOL,
                           max_overflow=0)

    class Base(DeclarativeBase):
        pass

    class SOrg(Base):
        __tablename__ = "organizations"
        id = mapped_column(Uuid, primary_key=True)
        created_at = mapped_column(DateTime(timezone=True))
        updated_at = mapped_column(DateTime(timezone=True))
        name = mapped_column(Text)
        slug = mapped_column(Text)
        logo = mapped_column(Text)
        metadata_ = mapped_column("metadata", JSON)  # parsed, as the kit's model does

    class SNote(Base):
        __tablename__ = "bench_notes"
        id = mapped_column(Uuid, primary_key=True)
        created_at = mapped_column(DateTime(timezone=True))
        title = mapped_column(Text)
        category = mapped_column(Text)
        views = mapped_column(Integer)

    org_id, slug, note_id = given.org_id, given.slug, given.note_id

    def run(build: Callable[[Session], Any], commit: bool = False) -> Callable[[], Any]:
        def op() -> Any:
            with Session(engine) as session:
                result = build(session)
                if commit:
                    session.commit()
                return result
        return op

    def new_note() -> dict[str, Any]:
        return {"created_at": dt.datetime.now(dt.UTC), "title": "new", "category": "c99", "views": 0}

    plain = {
        "pk": run(lambda s: s.execute(select(SOrg).where(SOrg.id == org_id)).scalar_one()),
        "unique": run(lambda s: s.execute(select(SOrg).where(SOrg.slug == slug).limit(1)).scalar_one()),
        "list": run(lambda s: s.scalars(select(SNote).where(SNote.category == "c3").limit(100)).all()),
        "insert": run(lambda s: s.execute(insert(SNote).values(**new_note()).returning(SNote.id)).scalar_one(),
                      commit=True),
        "update": run(lambda s: s.execute(update(SNote).where(SNote.id == note_id).values(views=7)), commit=True),
    }
    lambdas = {
        "pk": run(lambda s: s.execute(lambda_stmt(lambda: select(SOrg).where(SOrg.id == org_id))).scalar_one()),
        "unique": run(lambda s: s.execute(
            lambda_stmt(lambda: select(SOrg).where(SOrg.slug == slug).limit(1))).scalar_one()),
        "list": run(lambda s: s.scalars(
            lambda_stmt(lambda: select(SNote).where(SNote.category == "c3").limit(100))).all()),
        "update": run(lambda s: s.execute(
            lambda_stmt(lambda: update(SNote).where(SNote.id == note_id).values(views=7))), commit=True),
    }
    return {"sa": plain, "sa-lambda": lambdas}, engine.dispose


def kit_path(given: Given) -> dict[str, Callable[[], Any]]:
    """The kit's models on `kit.db.database`."""
    def search() -> Any:
        with kit.tenant(given.org_id):
            return DocumentChunk.search(given.vector, given.org_id, k=10)

    return {
        "pk": lambda: Organization.get_by_id(given.org_id),
        "unique": lambda: Organization.get(Organization.slug == given.slug),
        "list": lambda: list(Note.select().where(Note.category == "c3").limit(100)),
        "insert": lambda: Note.insert(created_at=dt.datetime.now(dt.UTC), title="new", category="c99",
                                      views=0).execute(),
        "update": lambda: Note.update(views=7).where(Note.id == given.note_id).execute(),
        "consume": lambda: OrgCredit.consume(given.org_id, 1),
        "increment": lambda: Usage.increment(given.org_id, "bench", 1),
        "search": search,
        RELEASE: database.close,
    }


async def asyncpg_path(url: str, given: Given) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any]]:
    """An asyncpg pool and hand-written SQL."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL, init=register_vector)

    def numbered(sql: str) -> str:
        parts = sql.split("%s")
        return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    tenant = statement_prefix(given.org_id).rstrip("; ")

    async def in_tenant(sql: str, *params: Any) -> Any:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(tenant)
            return await conn.fetch(numbered(sql), *params)

    return {
        "pk": lambda: pool.fetchrow(numbered(SQL["pk"]), given.org_id),
        "unique": lambda: pool.fetchrow(numbered(SQL["unique"]), given.slug),
        "list": lambda: pool.fetch(numbered(SQL["list"]), "c3"),
        "insert": lambda: pool.fetchval(numbered(SQL["insert"]), dt.datetime.now(dt.UTC), "new", "c99", 0),
        "update": lambda: pool.execute(numbered(SQL["update"]), 7, given.note_id),
        "consume": lambda: in_tenant(SQL["consume"], 1, dt.datetime.now(dt.UTC), given.org_id, 1),
        "increment": lambda: in_tenant(SQL["increment"], given.org_id, given.period, 1),
        "search": lambda: in_tenant(SQL["search"], given.vector, given.org_id),
    }, pool.close


def kit_aio_path(given: Given) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any]]:
    """`kit.aio`'s database and the same models."""
    from kit.aio import AsyncDatabase

    db = AsyncDatabase(settings=replace(load_settings(), pool_max=POOL, pool_min=POOL))

    def search() -> Any:
        with kit.tenant(given.org_id):
            return DocumentChunk.search(given.vector, given.org_id, k=10)

    return {
        "pk": lambda: db.get_by_id(Organization, given.org_id),
        "unique": lambda: db.get(Organization.select().where(Organization.slug == given.slug)),
        "list": lambda: db.list(Note.select().where(Note.category == "c3").limit(100)),
        "insert": lambda: db.run(lambda: Note.insert(created_at=dt.datetime.now(dt.UTC), title="new",
                                                     category="c99", views=0).execute()),
        "update": lambda: db.run(lambda: Note.update(views=7).where(Note.id == given.note_id).execute()),
        "consume": lambda: db.run(OrgCredit.consume, given.org_id, 1),
        "increment": lambda: db.run(Usage.increment, given.org_id, "bench", 1),
        "search": lambda: db.run(search),
    }, db.close_pool


def setup(owner_url: str) -> None:
    """Make the benchmark's table (as the owner: the run-time role creates nothing)."""
    conn = psycopg2.connect(owner_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SETUP_SQL)
    conn.close()


def report(results: dict[tuple[str, str, int], list[float]], paths: list[str], raw_of: dict[str, str],
           levels: dict[str, tuple[int, ...]], operations: tuple[str, ...]) -> None:
    """Print medians, each path's ratio to its raw driver and the kit's speed-up over the other ORMs."""
    print("median ops/s; ratio = raw driver ops/s / path ops/s (1.00 = the driver's own speed)")
    for operation in operations:
        print(f"\n{operation}")
        for level in sorted({n for p in paths for n in levels[p]}):
            row = {p: statistics.median(results[(operation, p, level)]) for p in paths
                   if (operation, p, level) in results}
            if not row:
                continue
            cells = []
            for path, ops in row.items():
                raw = row.get(raw_of[path])
                ratio = f" ({raw / ops:.2f}x)" if raw and path != raw_of[path] else ""
                cells.append(f"{path} {ops:,.0f}{ratio}")
            kit_ops = row.get("kit")
            faster = [f"kit/{p} {kit_ops / row[p]:.2f}" for p in ("peewee", "sa", "sa-lambda") if kit_ops and p in row]
            print(f"  {level:>2}: " + "; ".join(cells) + ("  | " + ", ".join(faster) if faster else ""))


def main(ops: int, rounds: int, operations: tuple[str, ...]) -> None:
    """Set up, warm every path, then time each operation round after round, paths interleaved."""
    settings = load_settings()
    url = resolve_url(settings)
    setup(resolve_url(settings, OWNER))
    database.configure()
    given = Given()
    sync: dict[str, dict[str, Callable[[], Any]]] = {"raw": raw_path(url, given)}
    closers: list[Callable[[], Any]] = []
    ops_peewee, close = peewee_path(url, given)
    sync["peewee"] = ops_peewee
    closers.append(close)
    try:
        sa, close = sqlalchemy_paths(url, given)
        sync.update(sa)
        closers.append(close)
    except ImportError as exc:
        print(f"sqlalchemy: skipped ({exc}); pip install -e '.[bench]'")
    sync["kit"] = kit_path(given)
    results: dict[tuple[str, str, int], list[float]] = {}
    for path in sync.values():
        for operation, op in path.items():
            if operation != RELEASE:
                on_threads(2, 200, op, path.get(RELEASE, lambda: None))
    for _ in range(rounds):
        for operation in operations:
            for threads in THREADS:
                for name, path in sync.items():
                    if operation in path:
                        results.setdefault((operation, name, threads), []).append(
                            on_threads(threads, max(1, ops // threads), path[operation],
                                       path.get(RELEASE, lambda: None)))
    for close in closers:
        close()
    asyncio.run(run_async(url, given, ops, rounds, operations, results))
    paths = [*sync, "asyncpg", "kit-aio"]
    raw_of = {p: "raw" for p in sync} | {"asyncpg": "asyncpg", "kit-aio": "asyncpg"}
    levels = {p: THREADS for p in sync} | {"asyncpg": TASKS, "kit-aio": TASKS}
    print(f"{rounds} rounds of {ops} operations; threads {THREADS} (sync), tasks {TASKS} (asyncio)")
    report(results, paths, raw_of, levels, operations)


async def run_async(url: str, given: Given, ops: int, rounds: int, operations: tuple[str, ...],
                    results: dict[tuple[str, str, int], list[float]]) -> None:
    """The asyncio paths, timed like the sync ones (tasks 1 and 50)."""
    raw, close_raw = await asyncpg_path(url, given)
    kit_ops, close_kit = kit_aio_path(given)
    paths = {"asyncpg": raw, "kit-aio": kit_ops}
    for path in paths.values():
        for op in path.values():
            await on_tasks(10, 20, op)
    for _ in range(rounds):
        for operation in operations:
            for tasks in TASKS:
                for name, path in paths.items():
                    results.setdefault((operation, name, tasks), []).append(
                        await on_tasks(tasks, max(1, ops // tasks), path[operation]))
    await close_raw()
    await close_kit()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=800, help="operations per round (split among the threads or tasks)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(OPERATIONS), help="operations to run, comma-separated")
    args = parser.parse_args()
    main(args.ops, args.rounds, tuple(o for o in args.only.split(",") if o))
