"""The conventions every kit model follows: UUID keys made by the database, timestamps with time zone.

- `id`: a UUID primary key with `DEFAULT gen_random_uuid()` (PostgreSQL 13+), returned on insert.
- `created_at` / `updated_at`: `timestamptz NOT NULL DEFAULT now()`; `save()` sets `updated_at`.
- Tables are snake_case and plural (`Meta.table_name`); every model uses `kit.db.database` and reads
  vector columns in binary (`kit.vector.VectorModel`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import operator
from collections.abc import Callable
from functools import reduce
from typing import Any

from peewee import SQL, Check, Model, ModelRaw, ModelSelect, TextField, UUIDField
from playhouse.postgres_ext import DateTimeTZField, TSVectorField

from kit.copy.writer import database_default
from kit.db import database
from kit.db.bridge import ModelMetadata
from kit.db.clean import only_reads
from kit.db.prepared import Param, Prepared
from kit.db.rows import ModelRows, not_found
from kit.db.shapes import FieldList, Unfit
from kit.errors import TenantError
from kit.roles import tenant_rule
from kit.tenancy import (
    context_key,
    id_of,  # noqa: F401 - re-exported: the models' own spelling
)
from kit.vector import VectorModel


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def now_default() -> list[Any]:
    """The column constraint `DEFAULT now()`, for timestamps set by the database as well as by Python."""
    return [SQL("DEFAULT now()")]


def prepared(model: Any, build: Callable[[Any], Any]) -> Prepared:
    """`build(model)`'s query as a `Prepared` statement, made once per model class (and again when it changes)."""
    statements = model.__dict__.get("_kit_prepared")
    if statements is None:
        statements = {}
        model._kit_prepared = statements
    statement = statements.get(build)
    if statement is None or not statement.unchanged():  # the model changed at run time: made again
        statement = statements[build] = Prepared(build(model))
    return statement


def _by_id(model: Any) -> Any:
    """The row with a given primary key, as `Model.get_by_id` asks for it (peewee's `paginate(1, 1)`)."""
    return model.select().where(model._meta.primary_key == Param("pk")).limit(Param("limit")).offset(Param("offset"))


def _by_id_routed(model: Any) -> Any:
    """`_by_id` with the tenant's column named too: the row's shard on Citus (the policy confines it already)."""
    return (model.select().where((routing_field(model) == Param("tenant")) & (model._meta.primary_key == Param("pk")))
            .limit(Param("limit")).offset(Param("offset")))


def routing_field(model: Any) -> Any:
    """The field whose value is the tenant's for every row the tenant may read (None: no such field).

    A model whose own NOT NULL column names its organization, and whose reads are not open to every
    tenant: inside `kit.tenant(org)` the policy lets it read exactly the rows with that column = org,
    so naming it in a query changes no result, and lets Citus send the query to the tenant's shard
    instead of every shard (docs/scaling.md).
    """
    rule = tenant_rule(model)
    if rule is None or rule.parent is not None or "select" in rule.open:  # a parent's tenant, or open to all
        return None
    field = model._meta.fields[model._meta.tenant]
    return None if field.null or field is model._meta.primary_key else field


def returned(query: Any, field: Any) -> list[Any]:
    """`field`'s value in each row a write gives back (`RETURNING field`), without a model instance per row."""
    convert = field.python_value
    rows = query.model._meta.database.execute(query.returning(field)).fetchall()
    return [convert(row[0]) for row in rows]


def one_of(column: str, values: tuple[str, ...]) -> Any:
    """A CHECK constraint: `column` takes only the listed values."""
    listed = ", ".join(f"'{v}'" for v in values)
    return Check(f"{column} IN ({listed})")


class JSONTextField(TextField):
    """JSON kept as text: a dict (or any JSON value) in Python, a JSON string to other clients.

    For columns another client reads as a string (Better Auth's `organization.metadata`).
    """

    def db_value(self, value: Any) -> Any:
        """The value as JSON text."""
        return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        """The JSON text parsed."""
        return None if value is None else json.loads(value)


def _sql_literal(field: Any, value: Any) -> str | None:
    if value is dict:
        return "'{}'::jsonb"
    if value is list:
        return "'[]'::jsonb"
    if callable(value):
        return None  # computed in Python only (utcnow already has DEFAULT now())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def mirror_defaults(model: type[Model]) -> None:
    """Give every column whose field has a Python default the same default in the database.

    Rows written by other clients of the same tables (Better Auth, psql, another service) then get
    the values the models would have given them. Every model on `BaseModel` gets this as its fields
    are added (`ModelMetadata`); this is for other models.
    """
    for field in model._meta.sorted_fields:
        mirror_default(field)


def mirror_default(field: Any) -> None:
    """Give one field with a Python default the same default in the database (once)."""
    if field.default is None or database_default(field):
        return
    literal = _sql_literal(field, field.default)
    if literal is not None:
        field.constraints = [*(field.constraints or []), SQL(f"DEFAULT {literal}")]


ModelMetadata.mirror = staticmethod(mirror_default)


class GeneratedTSVectorField(TSVectorField):
    """A `tsvector` the database computes from the row (GENERATED ALWAYS AS ... STORED): never written.

    Left out of the default SELECT (ask for it by name), of fixtures and of dumps.
    """

    generated = True

    def __init__(self, expression: str, **kwargs: Any) -> None:
        self.expression = expression
        kwargs.setdefault("constraints", [SQL(f"GENERATED ALWAYS AS ({expression}) STORED")])
        super().__init__(null=True, index=False, **kwargs)


def is_generated(field: Any) -> bool:
    """Whether the database computes this column (it is never written)."""
    return getattr(field, "generated", False)


_DEFAULT_SELECTS: dict[type, tuple[list[Any], Any]] = {}


def _overrides(model: Any, method: str) -> bool:
    """Whether `model` has a classmethod `method` of its own instead of `BaseModel`'s."""
    return getattr(model, method).__func__ is not getattr(BaseModel, method).__func__


def _default_select(model: Any) -> Any:
    """A new `model.select()` of its default columns (all but generated ones).

    Built once per model and cloned after (peewee's clone copies what a query changes in place); built
    again when the model's fields change (peewee makes a new `sorted_fields` list then).
    """
    fields = model._meta.sorted_fields
    known = _DEFAULT_SELECTS.get(model)
    if known is None or known[0] is not fields:
        base: Any = KitSelect(model, [f for f in fields if not is_generated(f)], is_default=True)
        try:
            base._returning = FieldList(base._returning)  # walked once for the statement cache (`kit.db.shapes`)
        except Unfit:
            pass
        known = _DEFAULT_SELECTS[model] = (fields, base)
    select = known[1].clone()
    select._database = model._meta.database  # as peewee sets it: the database now (`bind`, `kit.aio`'s run())
    return select


class _RowsOfOneContext:
    """A query whose remembered rows belong to the tenant context they were read in.

    peewee keeps a query's rows once it has run, and iterating it again serves them from memory. A
    query object kept and iterated again in another tenant context (or through `all_tenants()`) runs
    again there instead, so one organization's rows are never served to another's context.
    """

    _read_in: Any = None
    _cursor_wrapper: Any  # peewee's (a mixin over its query classes' private execution methods)

    def _forget_other_contexts_rows(self) -> None:
        if self._cursor_wrapper is not None and self._read_in != context_key():
            self._cursor_wrapper = None

    def _ensure_execution(self) -> None:
        self._forget_other_contexts_rows()
        super()._ensure_execution()  # type: ignore[misc]

    def __iter__(self) -> Any:
        self._forget_other_contexts_rows()
        return super().__iter__()  # type: ignore[misc]

    def _execute(self, database: Any) -> Any:
        self._forget_other_contexts_rows()
        rows = super()._execute(database)  # type: ignore[misc]
        self._read_in = context_key()
        return rows


class KitSelect(_RowsOfOneContext, ModelSelect):
    """peewee's model SELECT, its remembered rows bound to the tenant context they were read in.

    Instances are built by a plan kept per shape (`kit.db.rows`).
    """

    def get(self, database: Any = None) -> Any:
        """peewee's `get`: the first row (`paginate(1, 1)`, as peewee writes it), or the model's `DoesNotExist`."""
        clone = self.paginate(1, 1)
        clone._cursor_wrapper = None
        return clone._first(database)

    def _first(self, database: Any = None) -> Any:
        """The first row of this query, run as it is (or the model's `DoesNotExist`)."""
        rows = self.execute(database)
        try:
            return rows.iterate()  # the first row, as `rows[0]` would give it
        except StopIteration:
            raise not_found(self) from None

    def _get_model_cursor_wrapper(self, cursor: Any) -> Any:
        query: Any = self  # peewee's private query state, which its stubs do not declare
        if len(query._from_list) == 1 and not query._joins:
            return ModelRows(cursor, self.model, query._returning, self.model)
        return super()._get_model_cursor_wrapper(cursor)  # type: ignore[misc]


class KitRaw(_RowsOfOneContext, ModelRaw):
    """peewee's raw model query, its remembered rows bound to the tenant context they were read in.

    Run again in another context only when it provably only reads (`kit.db.clean.only_reads`): a raw
    statement that may write is refused there instead of being written a second time.
    """

    _sql: str  # peewee's: the raw statement

    def _forget_other_contexts_rows(self) -> None:
        if self._cursor_wrapper is not None and self._read_in != context_key() and not only_reads(self._sql):
            raise TenantError("this raw query ran in another tenant context, and it may write, so it is not run "
                              "again here: make a new query (Model.raw(...)) in this context; nothing was sent")
        super()._forget_other_contexts_rows()


class BaseModel(VectorModel):
    """A row with a database-made UUID key and a creation time."""

    id = UUIDField(primary_key=True, constraints=[SQL("DEFAULT gen_random_uuid()")])
    created_at = DateTimeTZField(default=utcnow, constraints=now_default())

    class Meta:
        database = database
        model_metadata_class = ModelMetadata  # inside `kit.aio`'s run(), the asyncio database (`kit.db.bridge`)
        created_column = "created_at"  # set once, when the row is inserted (loaders leave it alone)
        updated_column = None  # set on every change
        append_only = False  # True: rows are never updated or deleted (the application may INSERT and SELECT)
        tenant = None  # the field naming the row's organization: row-level security (`kit.roles`)
        tenant_open = ()  # commands every context may run on every row, whatever its tenant
        tenant_null = ()  # commands allowed on rows whose tenant is NULL
        better_auth = False  # one of Better Auth's tables: its role reaches every row
        citus = None  # on Citus (`kit.distribute`): "reference" or "local"; None: distributed if a tenant table

    @classmethod
    def select(cls, *fields: Any) -> Any:
        """Like `Model.select`; the default columns leave out generated ones (full-text vectors)."""
        if fields:
            return KitSelect(cls, fields)
        return _default_select(cls)

    @classmethod
    def get(cls, *query: Any, **filters: Any) -> Any:
        """peewee's `Model.get`: the one row matching `query` (the WHERE set on one new query, not on copies of it)."""
        if filters or not query or (len(query) == 1 and isinstance(query[0], int) and cls._meta.auto_increment) \
                or _overrides(cls, "select"):  # a `select()` of the model's own: peewee's
            return super().get(*query, **filters)
        select = _default_select(cls)  # a new query of the model's own making, changed in place, not copied:
        select._where = reduce(operator.and_, query)  # what `where(*query)` sets
        select._limit, select._offset = 1, 0  # and what `get()`'s `paginate(1, 1)` sets
        return select._first()

    @classmethod
    def get_by_id(cls, pk: Any) -> Any:
        """peewee's `Model.get_by_id`: the row with this primary key, or the model's `DoesNotExist`."""
        query = cls.kit_by_id(pk)
        if query is None:
            return super().get_by_id(pk)
        return query._first(cls._meta.database)

    @classmethod
    def kit_by_id(cls, pk: Any) -> Any:
        """The prepared read of the row with this key, bound to it, as `get_by_id` sends it (None: peewee's runs)."""
        if _overrides(cls, "select") or _overrides(cls, "get") \
                or not cls._meta.primary_key or cls._meta.composite_key:  # a select() or get() of its own: peewee's
            return None
        tenant, _ = context_key()
        if tenant is not None and routing_field(cls) is not None:
            return prepared(cls, _by_id_routed).bound(tenant=tenant, pk=pk, limit=1, offset=0)
        return prepared(cls, _by_id).bound(pk=pk, limit=1, offset=0)

    @classmethod
    def raw(cls, sql: str, *params: Any) -> Any:
        """Like `Model.raw`, its rows bound to the tenant context they were read in."""
        return KitRaw(cls, sql, params)


class TimestampedModel(BaseModel):
    """A row that also records when it last changed: `save()` sets `updated_at`."""

    updated_at = DateTimeTZField(default=utcnow, constraints=now_default())

    class Meta:
        updated_column = "updated_at"

    def save(self, *args: Any, **kwargs: Any) -> int:
        """Save the row, setting `updated_at` to now."""
        self.updated_at = utcnow()
        only = kwargs.get("only")
        if only is not None:
            kwargs["only"] = [*only, type(self).updated_at]
        return super().save(*args, **kwargs)

    @classmethod
    def update(cls, __data: Any = None, **update: Any) -> Any:
        """An UPDATE query that also sets `updated_at` to now, unless the caller sets it."""
        data = dict(__data or {}, **update)
        if not any(getattr(key, "name", key) == "updated_at" for key in data):
            data[cls.updated_at] = utcnow()
        return super().update(data)
