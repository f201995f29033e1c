"""Migration operations peewee-migrate lacks, used by generated migrations as `kit_ops`.

    kit_ops.add_index(migrator, "document_chunks", "embedding", method="hnsw", metric="cosine", m=16,
                      quantize="halfvec")
    kit_ops.add_index(migrator, "feature_flags", "organization", "key", unique=True, nulls_distinct=False,
                      name="feature_flags_organization_key")
    kit_ops.add_index(migrator, "orders", "placed_at", concurrently=True)   # a table with rows: CONCURRENTLY
    kit_ops.add_fields(migrator, "orders", owner=pw.ForeignKeyField(...))  # foreign key NOT VALID, then validated
    kit_ops.add_not_null(migrator, "orders", "owner")                     # a validated CHECK, then SET NOT NULL
    kit_ops.add_check(migrator, "orders", "total_positive", "total > 0")  # NOT VALID, then validated
    kit_ops.drop_index(migrator, "document_chunks", "document_chunks_embedding_hnsw_cosine_m16_efc64")
    kit_ops.set_constraints(migrator, "plans", "status", ["CHECK (status IN ('draft', 'live'))", "DEFAULT 'draft'"])
    kit_ops.keep_updated_at(migrator, "users", "organizations")
    kit_ops.grant_access(migrator, "projects")                      # the run-time roles' privileges
    kit_ops.tenant_policies(migrator, "projects", "organization_id")  # row-level security (`kit.roles`)

Each updates the migrator's picture of the models (so later generated migrations diff against it)
and queues the DDL, which runs with the migration's other operations, in its transaction; the safe
forms (`kit.migrate.safe`) also queue steps that run after it commits (`kit.migrate.steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from peewee import SQL, ForeignKeyField, ModelIndex
from peewee_migrate import Migrator

from kit.migrate.render import rendered
from kit.migrate.safe import safe_forms
from kit.migrate.steps import defer
from kit.roles import APP, AUTH, TenantRule, drop_policy_statements, grant_statements, policy_statements, roles_required
from kit.vector import HNSWIndex, IVFFlatIndex

VECTOR_METHODS = {"hnsw": HNSWIndex, "ivfflat": IVFFlatIndex}


def build_index(model: Any, fields: tuple[str, ...], *, name: str | None = None, unique: bool = False,
                nulls_distinct: bool | None = None, method: str | None = None, metric: str | None = None,
                quantize: str | None = None, **parameters: int) -> ModelIndex:
    """The index object for `model` described by the arguments of `add_index`."""
    resolved = [model._meta.fields.get(f) or model._meta.columns[f] for f in fields]  # a field's name or column
    if method in VECTOR_METHODS:
        return VECTOR_METHODS[method](resolved[0], metric=metric or "cosine", name=name, quantize=quantize,
                                      **parameters)
    return ModelIndex(model, resolved, unique=unique, nulls_distinct=nulls_distinct, name=name, using=method)


def add_index(migrator: Migrator, table: str, *fields: str, concurrently: bool = False, **options: Any) -> None:
    """Create an index `migrator.add_index` cannot express (vector, NULLS NOT DISTINCT, USING); `concurrently`:
    built CONCURRENTLY after the migration's transaction (`kit.migrate.steps`), for a table with rows."""
    model = migrator.orm[table]
    index = build_index(model, fields, **options)
    model._meta.indexes.append(index)
    sql, params = migrator.__migrator__.make_context().sql(index).query()
    if concurrently:
        _safely(migrator, lambda: migrator.sql(sql, *params))
    else:
        migrator.sql(sql, *params)


def add_fields(migrator: Migrator, table: str, **fields: Any) -> None:
    """`migrator.add_fields` in forms that do not stall a table with rows (`kit.migrate.safe`): a foreign key
    NOT VALID then validated, indexes CONCURRENTLY, a NOT NULL column filled in batches then checked."""
    _safely(migrator, lambda: migrator.add_fields(table, **fields))


def change_fields(migrator: Migrator, table: str, **fields: Any) -> None:
    """`migrator.change_fields`, minus the ALTER ... TYPE to the same type it sends when only NULL or an index
    changed (an exclusive lock for nothing: the `add_not_null` / index lines written beside it do the work)."""
    from peewee_migrate.auto import compare_fields

    model = migrator.orm[table]
    for name, field in fields.items():
        old = model._meta.fields.get(name)
        model._meta.add_field(name, field)  # the picture of the model, as migrator.change_fields would leave it
        same_column = (old is not None and field.column_name == old.column_name
                       and not isinstance(field, ForeignKeyField) and not isinstance(old, ForeignKeyField)
                       and set(compare_fields(field, old)) <= {"null", "index", "unique"})
        if same_column:
            field.null = old.null  # the add_not_null / drop_not_null line that follows changes it
        else:
            _safely(migrator, partial(migrator.change_fields, table, **{name: field}))


def add_not_null(migrator: Migrator, table: str, *names: str) -> None:
    """`migrator.add_not_null` without a scan under an exclusive lock: a CHECK validated first, after commit."""
    _safely(migrator, lambda: migrator.add_not_null(table, *names))


def add_check(migrator: Migrator, table: str, name: str, expression: str) -> None:
    """Add CHECK (`expression`) named `name`: NOT VALID now (new rows obey at once), validated after the transaction."""
    _safely(migrator, lambda: migrator.sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" CHECK ({expression})'
                                           .replace("%", "%%")))


def _safely(migrator: Migrator, queue: Callable[[], Any]) -> None:
    """Queue what `queue` queues on `migrator`, rewritten into its safe forms (now, and steps after commit)."""
    first = len(migrator.__ops__)
    queue()
    queued = migrator.__ops__[first:]
    del migrator.__ops__[first:]
    now, later = safe_forms([item for op in queued for item in rendered(op, migrator.__database__)])
    for sql, params in now:
        migrator.sql(sql, *params)
    for step in later:
        defer(migrator, step)


def drop_index(migrator: Migrator, table: str, name: str) -> None:
    """Drop an index by name: one `add_index` made, or one a model's `Meta.indexes` declares as (fields, unique)."""
    model = migrator.orm[table]

    def named(entry: Any) -> str | None:
        if isinstance(entry, (tuple, list)):  # peewee's (fields, unique): the name peewee gives it
            entry = build_index(model, tuple(entry[0]))
        return getattr(entry, "_name", None)

    model._meta.indexes = [i for i in model._meta.indexes if named(i) != name]
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
        if text.upper().startswith(("CHECK", "CONSTRAINT ")):  # CHECK (...), or CONSTRAINT "name" CHECK (...)
            migrator.sql(f'ALTER TABLE "{table}" ADD {text}'.replace("%", "%%"))
        elif text.upper().startswith("DEFAULT "):
            default = text[len("DEFAULT "):]
    if default is None:
        migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP DEFAULT')
    else:
        migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {default}'.replace("%", "%%"))


TOUCH_FUNCTION = "kit_touch_updated_at"
TOUCH_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {TOUCH_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- An UPDATE that leaves updated_at as it was gets the time of its transaction; one that sets
    -- updated_at itself (the models' save(), Better Auth's onUpdate) keeps the value it set.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$
"""


def touch_trigger(table: str) -> str:
    """The name of the trigger that keeps `table.updated_at`."""
    return f"{table}_touch_updated_at"


def keep_updated_at(migrator: Migrator, *tables: str) -> None:
    """Have the database set `updated_at` on every UPDATE of these tables, whoever writes them."""
    migrator.sql(TOUCH_FUNCTION_SQL)
    for table in tables:
        migrator.sql(f'CREATE TRIGGER "{touch_trigger(table)}" BEFORE UPDATE ON "{table}"'
                     f" FOR EACH ROW EXECUTE FUNCTION {TOUCH_FUNCTION}()")


def drop_updated_at_triggers(migrator: Migrator, *tables: str) -> None:
    """Undo `keep_updated_at` for these tables (the shared function stays while any trigger uses it)."""
    for table in tables:
        migrator.sql(f'DROP TRIGGER IF EXISTS "{touch_trigger(table)}" ON "{table}"')


def grant_access(migrator: Migrator, table: str, *, append_only: bool = False, better_auth: bool = False) -> None:
    """Give the run-time roles their privileges on `table` (INSERT and SELECT only when append-only)."""
    migrator.sql(roles_required(APP, AUTH))  # a database without them: one sentence, not "role does not exist"
    for statement in grant_statements(table, append_only, better_auth):
        migrator.sql(statement)


def revoke_access(migrator: Migrator, table: str) -> None:
    """Take every privilege on `table` back from the run-time roles (undoes `grant_access`)."""
    migrator.sql(grant_statements(table)[0])


def tenant_policies(migrator: Migrator, table: str, column: str, *, parent: tuple[str, str] | None = None,
                    open: tuple[str, ...] = (), null: tuple[str, ...] = (), better_auth: bool = False) -> None:
    """Confine `table`'s rows to their organization with forced row-level security (`kit.roles`)."""
    rule = TenantRule(table, column, (parent[0], parent[1]) if parent else None, tuple(open), tuple(null), better_auth)
    migrator.sql(roles_required(APP, AUTH))
    for statement in policy_statements(rule):
        migrator.sql(statement)


def drop_tenant_policies(migrator: Migrator, table: str) -> None:
    """Undo `tenant_policies`: the table's policies dropped, its row-level security off."""
    for statement in drop_policy_statements(table):
        migrator.sql(statement)
