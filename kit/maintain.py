"""`kit maintain`: the upkeep a growing database needs, idempotent and safe to run from cron.

- monthly partitions made ahead, for every model whose `Meta.partition_by` names its partition
  column (`audit_logs`, `ai_usage`), and with a retention (`--retain TABLE=MONTHS`) the old ones
  detached or dropped (`kit.partitions`);
- the partial vector index of each big tenant (`kit.vector.tenants`), for every model whose
  `Meta.tenant_index` names its tenant column (`document_chunks`: `organization`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from peewee import Database, Model

from kit.errors import ArgumentError
from kit.migrate.lock import check_held, hold_lock
from kit.partitions import default_warning, describe, ensure_partitions, is_partitioned, retire_partitions
from kit.telemetry import operation
from kit.vector.indexes import VectorIndex
from kit.vector.search import OWN_GRAPH_FROM
from kit.vector.tenants import ensure_tenant_indexes

LOCK_KEY = 0x6B69745F6D6E74  # "kit_mnt": one run at a time (two CREATE INDEX CONCURRENTLY on a table deadlock)


def maintain(database: Database, models: Iterable[type[Model]], say: Callable[[str], None] = print,
             min_rows: int = OWN_GRAPH_FROM, retain: dict[str, int] | None = None, drop: bool = False) -> None:
    """Bring every model's run-time objects up to date (tenant indexes), saying what changed.

    Runs take turns on an advisory lock held by a transaction of its own (`hold_lock`: index builds
    run outside transactions, and this works behind PgBouncer too); a second run waits and says so,
    then finds little to do.
    """
    with operation("kit.maintain"):
        _run(database, list(models), say, min_rows, retain, drop)


def _run(database: Database, models: list[type[Model]], say: Callable[[str], None], min_rows: int,
         retain: dict[str, int] | None, drop: bool) -> None:
    partitioned = {m._meta.table_name: m for m in models if getattr(m._meta, "partition_by", None)}
    unknown = sorted(set(retain or {}) - set(partitioned))
    if unknown:
        raise ArgumentError(f"--retain names {unknown[0]}, which is not a partitioned table "
                            f"(those are: {', '.join(sorted(partitioned)) or 'none'}); nothing was done")
    with database.connection_context():  # configured (from the environment) before the lock's own connection
        if database.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise ArgumentError(f"{database.database} is a read-only replica: kit maintain changes the schema, "
                                "so run it against the primary; nothing was done")
        holder = hold_lock(database, LOCK_KEY, "another kit maintain", say)
    try:
        with database.connection_context():
            still_locked = lambda: check_held(holder, "the kit maintain lock")  # noqa: E731
            for table, model in partitioned.items():
                if not is_partitioned(database, table):
                    say(f"{table}: not partitioned yet (run the migrations); skipped")
                    continue
                still_locked()
                column, keep = cast(Any, model._meta).partition_by, (retain or {}).get(table)
                done = ensure_partitions(database, table, column, keep=keep, say=say)
                if keep is not None:
                    retired = retire_partitions(database, table, keep, drop=drop, column=column, say=say)
                    done.retired, done.in_default = retired.retired, retired.in_default
                say(describe(done, table))
                warning = default_warning(done, table)
                if warning:
                    say(warning)
            _maintain(database, models, say, min_rows, still_locked)
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
