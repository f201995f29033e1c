"""Migration operations peewee-migrate lacks, used by generated migrations as `kit_ops`.

    kit_ops.add_index(migrator, "document_chunks", "embedding", method="hnsw", metric="cosine", m=16)
    kit_ops.add_index(migrator, "feature_flags", "organization", "key", unique=True, nulls_distinct=False,
                      name="feature_flags_organization_key")
    kit_ops.drop_index(migrator, "document_chunks", "document_chunks_embedding_hnsw_cosine_m16_efc64")
    kit_ops.set_constraints(migrator, "plans", "status", ["CHECK (status IN ('draft', 'live'))", "DEFAULT 'draft'"])

Each updates the migrator's picture of the models (so later generated migrations diff against it)
and queues the DDL, which runs with the migration's other operations, in its transaction.
"""

from __future__ import annotations

from typing import Any

from peewee import SQL, ModelIndex
from peewee_migrate import Migrator

from kit.vector import HNSWIndex, IVFFlatIndex

VECTOR_METHODS = {"hnsw": HNSWIndex, "ivfflat": IVFFlatIndex}


def build_index(model: Any, fields: tuple[str, ...], *, name: str | None = None, unique: bool = False,
                nulls_distinct: bool | None = None, method: str | None = None, metric: str | None = None,
                **parameters: int) -> ModelIndex:
    """The index object for `model` described by the arguments of `add_index`."""
    resolved = [model._meta.fields[f] for f in fields]
    if method in VECTOR_METHODS:
        return VECTOR_METHODS[method](resolved[0], metric=metric or "cosine", name=name, **parameters)
    return ModelIndex(model, resolved, unique=unique, nulls_distinct=nulls_distinct, name=name, using=method)


def add_index(migrator: Migrator, table: str, *fields: str, **options: Any) -> None:
    """Create an index that `migrator.add_index` cannot express (vector, NULLS NOT DISTINCT, USING)."""
    model = migrator.orm[table]
    index = build_index(model, fields, **options)
    model._meta.indexes.append(index)
    sql, params = migrator.__migrator__.make_context().sql(index).query()
    migrator.sql(sql, *params)


def drop_index(migrator: Migrator, table: str, name: str) -> None:
    """Drop an index created by `add_index`, by name."""
    model = migrator.orm[table]
    model._meta.indexes = [i for i in model._meta.indexes if getattr(i, "_name", None) != name]
    migrator.sql(f'DROP INDEX IF EXISTS "{name}"')


DROP_COLUMN_CHECKS = """
DO $$
DECLARE found record;
BEGIN
    FOR found IN
        SELECT con.conname FROM pg_constraint con
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attname = {column}
        WHERE con.conrelid = {table}::regclass AND con.contype = 'c' AND con.conkey = ARRAY[a.attnum]
    LOOP
        EXECUTE format('ALTER TABLE %%I DROP CONSTRAINT %%I', {table_name}, found.conname);
    END LOOP;
END
$$
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def set_constraints(migrator: Migrator, table: str, column: str, constraints: list[str]) -> None:
    """Give a column exactly these column constraints: its CHECKs and DEFAULT (SQL texts, as the model says).

    The column's existing single-column CHECKs are dropped and these added; the DEFAULT is set or dropped.
    """
    model = migrator.orm[table]
    field = model._meta.columns[column]
    field.constraints = [SQL(c) for c in constraints] or None
    migrator.sql(DROP_COLUMN_CHECKS.format(column=_literal(column), table=_literal(f'"{table}"'),
                                           table_name=_literal(table)))
    default = None
    for constraint in constraints:
        text = constraint.strip()
        if text.upper().startswith("CHECK"):
            migrator.sql(f'ALTER TABLE "{table}" ADD {text}'.replace("%", "%%"))
        elif text.upper().startswith("DEFAULT "):
            default = text[len("DEFAULT "):]
    if default is None:
        migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP DEFAULT')
    else:
        migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {default}'.replace("%", "%%"))
