"""`kit maintain`: the upkeep a growing database needs, idempotent and safe to run from cron.

Today: the partial vector index of each big tenant (`kit.vector.tenants`), for every model whose
`Meta.tenant_index` names its tenant column (`document_chunks`: `organization`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from peewee import Database, Model

from kit.migrate.lock import check_held, hold_lock
from kit.vector.indexes import VectorIndex
from kit.vector.search import OWN_GRAPH_FROM
from kit.vector.tenants import ensure_tenant_indexes

LOCK_KEY = 0x6B69745F6D6E74  # "kit_mnt": one run at a time (two CREATE INDEX CONCURRENTLY on a table deadlock)


def maintain(database: Database, models: Iterable[type[Model]], say: Callable[[str], None] = print,
             min_rows: int = OWN_GRAPH_FROM) -> None:
    """Bring every model's run-time objects up to date (tenant indexes), saying what changed.

    Runs take turns on an advisory lock held by a transaction of its own (`hold_lock`: index builds
    run outside transactions, and this works behind PgBouncer too); a second run waits and says so,
    then finds little to do.
    """
    holder = hold_lock(database, LOCK_KEY, "another kit maintain", say)
    try:
        with database.connection_context():
            _maintain(database, models, say, min_rows, lambda: check_held(holder, "the kit maintain lock"))
    finally:
        holder.close()


def _maintain(database: Database, models: Iterable[type[Model]], say: Callable[[str], None], min_rows: int,
              still_locked: Callable[[], None]) -> None:
    for model in models:
        tenant_name = getattr(model._meta, "tenant_index", None)
        if not tenant_name:
            continue
        tenant = model._meta.fields[tenant_name]
        for index in [i for i in model._meta.indexes if isinstance(i, VectorIndex)]:
            still_locked()
            done = ensure_tenant_indexes(index.field, tenant, min_rows=min_rows, database=database)
            say(f"{model._meta.table_name}.{index.field.column_name}: tenant indexes: {len(done.created)} created, "
                f"{len(done.dropped)} dropped, {len(done.kept)} kept (tenants of {min_rows:,} rows or more "
                f"by {tenant.column_name})")
