"""Teaches peewee-migrate's generator (`pw_migrate create --auto`) the kit's fields and indexes.

Out of the box it writes unknown fields as a bare `pw.Field()`, drops column constraints (CHECKs and
database defaults such as `DEFAULT gen_random_uuid()`), and cannot write index objects (HNSW and
IVFFlat indexes, NULLS NOT DISTINCT). `register()` adds, without forking it:

- `VectorField` / `HalfVectorField` written as `kit_vector.VectorField(dimensions=...)`;
- every field's `constraints=[...]` written as `pw.SQL(...)` nodes, and `BinaryJSONField(index=...)`
  always written (its default is a GIN index);
- index objects (`Model.add_index(...)`) written as `kit_ops.add_index(...)` calls
  (`kit.migrate.operations`), after the table they belong to, and dropped with `kit_ops.drop_index`;
- on a table that exists (and may hold rows), the safe forms `kit migrate lint` asks for: new
  indexes `kit_ops.add_index(..., concurrently=True)`, new columns `kit_ops.add_fields(...)` (a
  foreign key NOT VALID then validated, a NOT NULL column filled in batches), NOT NULL
  `kit_ops.add_not_null(...)`; what runs after the transaction is `kit.migrate.steps`;
- a changed CHECK or database default on an existing column (which it does not see) written as
  `kit_ops.set_constraints(...)`;
- a new table with an `updated_at` column followed by `kit_ops.keep_updated_at(...)`, the trigger
  that keeps it current whoever writes the table;
- every new table followed by `kit_ops.grant_access(...)` (the run-time roles' privileges), and one
  whose model has `Meta.tenant` by `kit_ops.tenant_policies(...)` (its row-level security, `kit.roles`);
- the imports these need at the top of each new migration file.

Models bound to another database than PostgreSQL are left to peewee-migrate as it is (`on_postgresql`).
`migrations/conf.py` calls it, so `pw_migrate create --auto kit.models` just works.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import peewee as pw
import peewee_migrate.router as pw_router
import peewee_migrate.template as pw_template
from peewee_migrate import auto
from playhouse.postgres_ext import BinaryJSONField

from kit.migrate.schema import constraint_sql
from kit.roles import TenantRule, tenant_rule
from kit.vector import FixedBitField, HalfVectorField, SparseVectorField, VectorField, VectorIndex

IMPORTS = (
    "from decimal import ROUND_HALF_EVEN, Decimal  # noqa: F401 - DecimalField defaults and rounding\n\n"
    "import kit.migrate.operations as kit_ops  # noqa: F401\n"
    "import kit.vector as kit_vector  # noqa: F401\n"
)
_registered = False


def index_to_code(index: pw.ModelIndex, table: str, concurrently: bool = False) -> str:
    """A `kit_ops.add_index(...)` call that recreates `index` (`concurrently`: on a table that may hold rows)."""
    private: Any = index  # peewee's index options are private attributes its stubs do not declare
    args = [repr(table)]
    fields = [e for e in private._expressions if isinstance(e, pw.Field)]
    if isinstance(index, VectorIndex):
        args.append(repr(index.field.name))
        options = {"method": index.method, "metric": index.metric, **index.parameters}
        if index.quantize:
            options["quantize"] = index.quantize
    else:
        args.extend(repr(f.name) for f in fields)
        options = {"unique": private._unique}
        if private._nulls_distinct is not None:
            options["nulls_distinct"] = private._nulls_distinct
        if private._using:
            options["method"] = private._using
    options["name"] = private._name
    if concurrently:
        options["concurrently"] = True
    args.extend(f"{key}={value!r}" for key, value in options.items())
    return f"kit_ops.add_index(migrator, {', '.join(args)})"


def access_to_code(model: Any) -> str:
    """A `kit_ops.grant_access(...)` call giving the run-time roles what they need on the model's table."""
    meta = model._meta
    options = "".join(f", {name}=True" for name in ("append_only", "better_auth") if getattr(meta, name, False))
    return f"kit_ops.grant_access(migrator, {meta.table_name!r}{options})"


def policies_to_code(rule: TenantRule) -> str:
    """A `kit_ops.tenant_policies(...)` call that makes the table's row-level security."""
    options = "".join(f", {name}={getattr(rule, name)!r}" for name in ("parent", "open", "null", "better_auth")
                      if getattr(rule, name))
    return f"kit_ops.tenant_policies(migrator, {rule.table!r}, {rule.column!r}{options})"


# The database a router is generating a migration for (set by `Router.create` while it runs).
_generating_for: ContextVar[Any] = ContextVar("kit_autogen_database", default=None)


def on_postgresql(model: Any) -> bool:
    """Whether the kit's additions apply to `model`: bound to PostgreSQL, or unbound and generated for PostgreSQL.

    A model bound to another database (SQLite, MySQL) gets peewee-migrate's own output, untouched: the
    kit's operations (triggers, policies, CONCURRENTLY) are PostgreSQL's. An unbound model takes the
    database of the router generating the migration; generated with no router (peewee-migrate's
    `diff_model` called directly), it gets peewee-migrate's own output too.
    """
    database = model._meta.database
    if database is None:
        database = _generating_for.get()
    if isinstance(database, pw.DatabaseProxy):
        database = database.obj
    return isinstance(database, pw.PostgresqlDatabase)


def _constraint_texts(field: Any) -> list[str]:
    """A field's column constraints (CHECKs, DEFAULT) as SQL texts."""
    return [constraint_sql(c) or str(c) for c in field.constraints or []]


def _is_index_object(index: Any) -> bool:
    return isinstance(index, pw.ModelIndex)


def register() -> None:
    """Install the kit's additions into peewee-migrate's generator (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    original_create = pw_router.BaseRouter.create

    def create(self: pw_router.BaseRouter, *args: Any, **kwargs: Any) -> str | None:
        token = _generating_for.set(self.database)  # an unbound model is generated for this database
        try:
            return original_create(self, *args, **kwargs)
        finally:
            _generating_for.reset(token)

    pw_router.BaseRouter.create = create  # type: ignore[method-assign]

    for module in ("kit.vector.fields", "kit.vector.sparse", "kit.vector.bit"):
        if module not in auto.PW_MODULES:
            auto.PW_MODULES = (*auto.PW_MODULES, module)  # type: ignore[misc,assignment]  # peewee-migrate's Final
    for field_class in (VectorField, HalfVectorField, SparseVectorField):
        auto.FIELD_MODULES_MAP[field_class.__name__] = "kit_vector"
        auto.FIELD_TO_PARAMS[field_class] = lambda f: {"dimensions": f.dimensions}
    auto.FIELD_MODULES_MAP[FixedBitField.__name__] = "kit_vector"
    auto.FIELD_TO_PARAMS[FixedBitField] = lambda f: {"max_length": f.max_length}
    original_parameters = auto.Column.get_field_parameters

    def get_field_parameters(self: auto.Column, *, change: bool = False) -> dict[str, Any]:
        params = original_parameters(self, change=change)
        constraints = getattr(self.field, "constraints", None)
        if constraints and not change:
            rendered = [constraint_sql(c) for c in constraints]
            if None not in rendered:  # else leave it to peewee-migrate, as it would be without the kit
                params["constraints"] = "[" + ", ".join(f"pw.SQL({sql!r})" for sql in rendered) + "]"
        return params

    auto.Column.get_field_parameters = get_field_parameters  # type: ignore[method-assign]
    # BinaryJSONField adds a GIN index unless told not to: always write the choice down.
    auto.FIELD_TO_PARAMS[BinaryJSONField] = lambda f: {"index": f.index}

    original_create_model = auto.create_model
    original_add_index = auto.add_index
    original_drop_index = auto.drop_index

    def create_model(model: Any, **kwargs: Any) -> str:
        if not on_postgresql(model):
            return original_create_model(model, **kwargs)
        meta = model._meta
        objects = [i for i in meta.indexes if _is_index_object(i)]
        saved = meta.indexes
        meta.indexes = [i for i in saved if not _is_index_object(i)]
        try:
            code = original_create_model(model, **kwargs)
        finally:
            meta.indexes = saved
        lines = [code, *(index_to_code(i, meta.table_name) for i in objects)]
        if "updated_at" in meta.columns:
            lines.append(f"kit_ops.keep_updated_at(migrator, {meta.table_name!r})")
        lines.append(access_to_code(model))
        rule = tenant_rule(model)
        if rule is not None:
            lines.append(policies_to_code(rule))
        return "\n".join(lines)

    def add_index(index: Any) -> str:  # an index added to a table that exists, and may hold rows
        if not on_postgresql(index._model):
            return original_add_index(index)
        if index in index._model._meta.indexes and _is_index_object(index):
            return index_to_code(index, index._model._meta.table_name, concurrently=True)
        code = original_add_index(index)
        return code.replace("migrator.add_index(", "kit_ops.add_index(migrator, ", 1)[:-1] + ", concurrently=True)"

    original_change_fields = auto.change_fields
    original_create_fields = auto.create_fields
    original_change_not_null = auto.change_not_null

    def create_fields(model: Any, *fields: Any, **kwargs: Any) -> str:  # columns added to a table that exists
        if not on_postgresql(model):
            return original_create_fields(model, *fields, **kwargs)
        return original_create_fields(model, *fields, **kwargs).replace("migrator.add_fields(",
                                                                        "kit_ops.add_fields(migrator, ", 1)

    def change_fields(model: Any, *fields: Any) -> str:
        code = original_change_fields(model, *fields)
        if not on_postgresql(model):
            return code
        return code.replace("migrator.change_fields(", "kit_ops.change_fields(migrator, ", 1)

    def change_not_null(model: Any, name: str, *, null: bool) -> str:
        if null or not on_postgresql(model):
            return original_change_not_null(model, name, null=null)
        return f"kit_ops.add_not_null(migrator, {model._meta.table_name!r}, {name!r})"

    def drop_index(index: Any) -> str:
        if on_postgresql(index._model) and index in index._model._meta.indexes and _is_index_object(index):
            return f"kit_ops.drop_index(migrator, {index._model._meta.table_name!r}, {index._name!r})"
        return original_drop_index(index)

    original_diff_model_fields = auto.diff_model_fields

    def diff_model_fields(model: Any, source: Any, **opts: Any) -> list[str]:
        changes = original_diff_model_fields(model, source, **opts)
        if not on_postgresql(model):
            return changes
        table = model._meta.table_name
        for field in model._meta.sorted_fields:  # a changed CHECK or DEFAULT on a column both have
            old = source._meta.fields.get(field.name)
            if old is not None and _constraint_texts(field) != _constraint_texts(old):
                changes.append(f"kit_ops.set_constraints(migrator, {table!r}, {field.column_name!r}, "
                               f"{_constraint_texts(field)!r})")
        return changes

    auto.create_model = create_model  # type: ignore[assignment]
    auto.create_fields = create_fields  # type: ignore[assignment]
    auto.change_fields = change_fields  # type: ignore[assignment]
    auto.change_not_null = change_not_null  # type: ignore[assignment]
    auto.add_index = add_index  # type: ignore[assignment]
    auto.drop_index = drop_index  # type: ignore[assignment]
    auto.diff_model_fields = diff_model_fields

    template = pw_template.TEMPLATE
    if IMPORTS not in template:
        template = template.replace("from peewee_migrate import Migrator\n",
                                    "from peewee_migrate import Migrator\n\n" + IMPORTS)
        pw_template.TEMPLATE = template
        pw_router.TEMPLATE = template
