"""Partial vector indexes for big tenants: each tenant over a size gets an HNSW graph of its own rows.

One shared graph serves small tenants badly (`kit.vector.search` ranks those exactly instead) and
big ones slowly: to find 10 rows of a tenant owning 10% of the table, the shared graph is read about
ten times further than an unfiltered search. A partial index `... WHERE organization_id = '<id>'`,
built like the model's own vector index, lets the planner search only that tenant's graph: as fast
as an unfiltered search of a table that size (`python benchmarks/search.py`).

    ensure_tenant_indexes(DocumentChunk.embedding, DocumentChunk.organization)  # run by `kit maintain`

creates one for each tenant with at least `min_rows` rows (default `OWN_GRAPH_FROM`, where a graph of
its own starts to beat an exact scan; `nearest` then uses it) and drops those of tenants that fell
below half of it.
Indexes are built CONCURRENTLY (writes go on meanwhile), named `<table>_tenant_<12 hex>` (a hash of
the field and the tenant), and left out of the drift check (`TENANT_INDEX`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from peewee import Database, Field

from kit.ddl import run_concurrently
from kit.errors import ArgumentError, KitError, LockBusy
from kit.vector.fields import Distances
from kit.vector.indexes import HNSWIndex, VectorIndex
from kit.vector.search import OWN_GRAPH_FROM, TENANT_INDEX, forget

TENANT_INDEXES_SQL = """
SELECT i.relname, x.indisvalid,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = x.indexrelid) AS building
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = %s::regclass AND i.relname ~ %s
"""


@dataclass
class TenantIndexes:
    """What `ensure_tenant_indexes` did: index names created, dropped and kept."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def tenant_index_name(vector: Distances, tenant_value: Any) -> str:
    """The name of the partial index for one tenant: `<table>_tenant_<12 hex>`."""
    digest = hashlib.sha256(f"{vector.column_name}\0{tenant_value}".encode()).hexdigest()[:12]
    return f"{vector.model._meta.table_name}_tenant_{digest}"


def declared_index(vector: Distances) -> VectorIndex:
    """The vector index the model declares on `vector` (the one tenant indexes copy)."""
    found = [i for i in vector.model._meta.indexes if isinstance(i, VectorIndex) and i.field is vector]
    if not found:
        raise ArgumentError(f"{vector.label} has no vector index declared on its model; declare one "
                         f"(Model.add_index(HNSWIndex(...))) for tenant indexes to copy")
    return found[0]


@dataclass
class TenantIndexPlan:
    """What upkeep should do to one table's tenant indexes: drop these, build those (name to tenant value)."""

    drop: list[str]  # small tenants' indexes, and any left invalid by an interrupted build
    build: dict[str, Any]
    kept: list[str]
    valid: set[str]  # of `drop`, those that were in use (reported as dropped)


def plan_tenant_indexes(counts: dict[Any, int], found: list[tuple[str, bool, bool]], vector: Distances,
                        min_rows: int) -> TenantIndexPlan:
    """Decide from the tenants' row counts and the indexes found (name, valid, being built): a planner, no SQL."""
    wanted = {tenant_index_name(vector, value): value for value, rows in counts.items() if rows >= min_rows}
    keep = {tenant_index_name(vector, value) for value in counts}  # big, or not yet under half
    existing = {name for name, valid, _ in found if valid}
    building = {name for name, _, busy in found if busy}  # another run is building it: leave it be
    return TenantIndexPlan(
        drop=sorted({name for name, _, _ in found} - (existing & keep) - building),
        build={name: value for name, value in sorted(wanted.items()) if name not in existing | building},
        kept=sorted(existing & keep), valid=existing)


def ensure_tenant_indexes(vector: Distances, tenant: Field, min_rows: int = OWN_GRAPH_FROM,
                          database: Database | None = None) -> TenantIndexes:
    """Create the partial indexes of tenants with `min_rows` rows or more; drop those under half of it."""
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 2:
        raise ArgumentError(f"min_rows must be a whole number of rows, 2 or more, got {min_rows!r}")
    database = database or vector.model._meta.database
    base = declared_index(vector)
    if not isinstance(base, HNSWIndex):
        raise ArgumentError(f"tenant indexes copy an HNSW index; {vector.label}'s is {base.method}")
    table = vector.model._meta.table_name
    counts = dict(database.execute_sql(
        f'SELECT "{tenant.column_name}", count(*) FROM "{table}" WHERE "{vector.column_name}" IS NOT NULL '
        f'GROUP BY 1 HAVING count(*) >= %s', (max(1, min_rows // 2),)).fetchall())
    found = database.execute_sql(TENANT_INDEXES_SQL, (f'"{table}"', f"^{TENANT_INDEX.pattern}$")).fetchall()
    plan = plan_tenant_indexes(counts, found, vector, min_rows)
    done = TenantIndexes(kept=plan.kept)
    for name in plan.drop:
        _drop(database, table, name, "dropping index")
        if name in plan.valid:
            done.dropped.append(name)
    for name, value in plan.build.items():
        index = HNSWIndex(vector, metric=base.metric, m=base.parameters["m"],
                          ef_construction=base.parameters["ef_construction"], quantize=base.quantize,
                          name=name, where=tenant == value)
        _build(database, table, name, index)
        done.created.append(name)
    if done.created or done.dropped:
        forget()  # this process plans by them at once; others within COUNT_TTL
    return done


def _drop(database: Database, table: str, name: str, doing: str) -> None:
    run_concurrently(database, f"{table}: {doing} {name}", f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def _build(database: Database, table: str, name: str, index: HNSWIndex) -> None:
    """Build one tenant index without blocking writes; once more if an interruption left it invalid."""
    index.concurrently = True  # writes go on while it builds (outside any transaction block)
    for _attempt in range(2):
        try:
            run_concurrently(database, f"{table}: building tenant index {name}",
                             *database.get_sql_context().sql(index).query())
        except LockBusy:
            _drop(database, table, name, "dropping invalid index")
            raise
        # A build interrupted (a killed backend, a re-sent statement) leaves an invalid index behind,
        # which IF NOT EXISTS would then accept: check, and build it once more.
        valid = database.execute_sql("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
                                     (f'"{name}"',)).fetchone()[0]
        if valid:
            return
        _drop(database, table, name, "dropping invalid index")
    raise KitError(f"the tenant index {name} on {table} could not be built (twice interrupted); "
                   f"run `kit maintain` again")


__all__ = ["TENANT_INDEX", "TenantIndexPlan", "TenantIndexes", "declared_index", "ensure_tenant_indexes",
           "plan_tenant_indexes", "tenant_index_name"]
