"""The statement cache: a peewee query's SQL rendered once per shape, then only bound to new values.

peewee renders a query's SQL from its tree on every call (some 50 nested `sql()` calls for a point
read), which costs more than the round trip it prepares. Here the tree is walked once per call
instead, into a *shape* (everything that decides the SQL text) and its *values* (what becomes a
parameter); a shape seen before gets its SQL from the cache and only its values converted.

**What the shape is.** Every node type the walk knows lists each of its attributes as structure
(in the key by value: an operator, an alias, a glue string), as children (walked: nodes, and plain
values that become parameters), or as not part of the SQL (the rows a query remembers, its
database). Fields, models and tables are in the key by identity (kept alive by the entry, so an
identity is never reused while a key holds it) and by their column or table name. None, a list's
length and a value's kind (a model instance, a nested query) are structure too, since peewee writes
`IS NULL`, `IN (%s, %s)` and `0 = 1` from them.

**Why a cached statement is right (the rule fails closed).**
- A node of a type the walk does not know, an attribute it does not list, a subclass with its own
  `__sql__`: the query is rendered by peewee as before, never cached (`unfit`).
- A shape is filled by peewee's own rendering, in a context that records every value it turns into
  a parameter and the converter it used. Only when those are exactly the walk's values, in its order
  and by identity, and none was written into the SQL text, is the shape cached: what the walk calls a
  value was a parameter, and nothing else was. Identity cannot tell apart two places holding one object
  (a small int used twice): there the walk's order, which lists every node's children in the order
  peewee writes them, is what keeps each place's value its own (tested with such values).
- A hit converts the new values with the recorded converters; one that converts to SQL (a node) is
  rendered by peewee instead. So a cached statement never carries a value of an earlier call.
- Keys are per database object (`ShapedStatements._shapes`), so no statement crosses databases;
  `init()` (another server, role or pooler) empties the cache.
- With `KIT_SHAPES_VERIFY=1` every hit is also rendered by peewee and compared (the test suite runs so).

**What invalidates it.** A model's field added, removed or renamed, or its table renamed, changes the
key (new field objects, column or table names); a migration that adds a column changes nothing the
cached SQL names. The tenant, the time limit and search settings ride before the statement
(`kit.db.contract`), never inside it, so a context change needs no new entry.

**Memory bound.** At most `MAX_SHAPES` (500) entries per database, least recently used evicted
first; an entry holds SQL text, converters and the fields, models and tables of its key, never a value.

**How to see it.** `database.shape_stats()`: hits, fills, unfit (rendered by peewee, with the last
reason), evictions, entries; the `kit.db.shapes` logger says at DEBUG why a shape was not cached.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from peewee import (  # type: ignore[attr-defined]  # is_model: not in its stubs
    SQL,
    Alias,
    Cast,
    Column,
    Context,
    Entity,
    Expression,
    Field,
    ForUpdate,
    Function,
    Join,
    Model,
    ModelBase,
    ModelDelete,
    ModelInsert,
    ModelSelect,
    ModelUpdate,
    Negated,
    Node,
    NodeList,
    OnConflict,
    Ordering,
    QualifiedNames,
    StringExpression,
    Value,
    is_model,
)

from kit.db.prepared import Prepared, bind

log = logging.getLogger("kit.db.shapes")

MAX_SHAPES = 500  # entries per database (SQLAlchemy's compiled cache keeps 500 too)
VERIFY = os.environ.get("KIT_SHAPES_VERIFY", "") not in ("", "0")

_MULTI = (list, tuple, set, frozenset)
_LEAF = "?"  # a value's place in a key: the value itself is a parameter, never part of the key
_INSTANCE = "?model"  # a model instance's place: a parameter too (its key), of this model
_QUERY_STATE = ("_cursor_wrapper", "_database", "_row_type", "_constructor", "_read_in", "_return_cursor",
                "_as_rowcount", "_hash", "_join_ctx", "_joins")  # how rows come back, not what the SQL says


class Unfit(Exception):
    """This query's shape cannot be cached (the reason is the message); peewee renders it."""


class _Spec:
    """One node type: its attributes that are structure (in the key), children (walked) and not SQL."""

    __slots__ = ("allowed", "children", "structure")

    def __init__(self, structure: tuple[str, ...] = (), children: tuple[Any, ...] = (),
                 ignored: tuple[str, ...] = ()) -> None:
        self.structure = structure
        self.children = children  # (name, sorted): `sorted` for a dict of columns written in column order
        self.allowed = frozenset(structure + tuple(children) + ignored)


_WRAPPED = ("_coerce", "_converter")
_SPECS: dict[type, _Spec] = {
    Expression: _Spec(("op", "flat", "_coerce"), ("lhs", "rhs")),
    StringExpression: _Spec(("op", "flat", "_coerce"), ("lhs", "rhs")),
    NodeList: _Spec(("glue", "parens", "_coerce"), ("nodes",)),
    Alias: _Spec(("_alias", *_WRAPPED), ("node",)),
    Negated: _Spec(_WRAPPED, ("node",)),
    Cast: _Spec(("_cast", *_WRAPPED), ("node",)),
    QualifiedNames: _Spec(("_scope", *_WRAPPED), ("node",)),
    Ordering: _Spec(("direction", "collation", "nulls", *_WRAPPED), ("node",)),
    Function: _Spec(("name", "_python_value", "_coerce"), ("arguments", "_order_by", "_filter")),
    Entity: _Spec(("_path",)),
    Column: _Spec(("name",), ("source",)),
    Join: _Spec(("join_type", "_alias"), ("lhs", "rhs", "_on")),
    ForUpdate: _Spec(("_expr", "_nowait", "_skip_locked"), ("_of",)),
    OnConflict: _Spec(("_action", "_conflict_constraint"),
                      ("_conflict_target", "_conflict_where", "_preserve", "_update", "_where")),
    SQL: _Spec(("sql",), ("params",)),
    ModelSelect: _Spec(("model", "_is_default", "_alias", "_lateral", "_simple_distinct"),
                       ("_cte_list", "_distinct", "_returning", "_from_list", "_where", "_group_by", "_having",
                        "_windows", "_order_by", "_limit", "_offset", "_for_update"), _QUERY_STATE),
    ModelUpdate: _Spec(("model", "table"), ("_cte_list", "_update", "_from", "_where", "_order_by", "_limit",
                                             "_offset", "_returning"), _QUERY_STATE),
    ModelDelete: _Spec(("model", "table"), ("_cte_list", "_where", "_order_by", "_limit", "_offset", "_returning"),
                       _QUERY_STATE),
    ModelInsert: _Spec(("model", "table"), ("_cte_list", "_columns", "_insert", "_on_conflict", "_returning",
                                             "_where", "_order_by", "_limit", "_offset"), _QUERY_STATE),
}
# Children are listed in the order peewee writes them (for PostgreSQL). The fill's check matches values to
# parameters by identity, which cannot tell two positions holding the same object (a small int, a
# string used twice) apart: the order itself is what keeps them apart, tested with such values in
# tests/unit/test_shapes.py.
_SORTED_DICTS = {(ModelUpdate, "_update"), (ModelInsert, "_insert")}  # rendered in column order, not dict order
for _kind_, _spec_ in _SPECS.items():
    _spec_.children = tuple((name, (_kind_, name) in _SORTED_DICTS) for name in _spec_.children)
_spec_of_type: dict[type, _Spec | None] = {}


def spec_of(kind: type) -> _Spec | None:
    """The walk's spec for a node type: its own, or a registered base's when it renders the same (None: unknown)."""
    try:
        return _spec_of_type[kind]
    except KeyError:
        pass
    found = _SPECS.get(kind)
    if found is None:
        for base in kind.__mro__[1:]:
            spec = _SPECS.get(base)
            if spec is not None and getattr(kind, "__sql__", None) is getattr(base, "__sql__", None) \
                    and _same_rows(kind, base):
                found = spec
                break
    _spec_of_type[kind] = found
    return found


def _same_rows(kind: type, base: type) -> bool:
    """A query subclass is walked as its base only when it renders through the same methods."""
    return all(getattr(kind, name, None) is getattr(base, name, None)
               for name in ("__sql_selection__", "_apply_ordering", "_simple_insert", "_generate_insert",
                            "get_default_data", "_set_table_alias", "apply_returning"))


_FIELD, _NODE, _VALUE, _MODEL, _MANY, _MAP, _NONE = "field", "node", "value", "model", "many", "map", "none"
_FIELDS = "fields"
_kinds: dict[type, str] = {}
_PLAIN = frozenset((str, int, float, bool))  # structure that is its own key
_FIELD_RENDERINGS = {Field.__sql__}  # a field's `__sql__` whose output is decided by the field and its place only


def renders_by_place(sql_method: Any) -> None:
    """Declare a field `__sql__` whose SQL depends only on the field and where it stands in the query.

    `kit.vector` declares `BinaryRead.__sql__` (a vector in the outermost SELECT list is read in binary):
    the place is part of the shape, so such fields are walked as plain ones.
    """
    _FIELD_RENDERINGS.add(sql_method)
    _kinds.clear()


class FieldList(list):
    """A list of plain fields whose walk is done once (a model's default SELECT list, shared by its queries).

    It stands for the walk of its fields for as long as it and they are unchanged: the same length,
    each field's column name the same object, each table the same.
    """

    __slots__ = ("metas", "names", "tables", "tokens")

    def __init__(self, fields: list[Any]) -> None:
        super().__init__(fields)
        walk = Walk()
        for field in fields:
            if not is_plain_field(type(field)):
                raise Unfit(f"{type(field).__name__} is not a plain field")
            walk._field(field)
        self.tokens = (list, len(fields), *walk.tokens)
        self.names = tuple(field.column_name for field in fields)
        self.tables = tuple(field.model._meta.table for field in fields)
        self.metas = tuple({id(f.model._meta): (f.model._meta, f.model._meta.table) for f in fields}.values())

    def unchanged(self) -> bool:
        """Whether the walk done at creation still holds (each model's fields and table, each column's name)."""
        names = self.names
        if len(self) != len(names):
            return False
        for meta, table in self.metas:
            if meta.table is not table:
                return False
        for field, name in zip(self, names, strict=True):
            if field.column_name is not name:
                return False
        return True


def is_plain_field(kind: type) -> bool:
    """Whether a node type is a field whose SQL is its column (or declared `renders_by_place`)."""
    return (_kinds.get(kind) or _kind(kind)) is _FIELD


def _kind(kind: type) -> str:
    """What the walk does with an object of this type (worked out once per type)."""
    try:
        return _kinds[kind]
    except KeyError:
        pass
    if kind is type(None):
        found = _NONE
    elif issubclass(kind, Model):
        found = _INSTANCE
    elif issubclass(kind, Field):
        if kind.__sql__ not in _FIELD_RENDERINGS:
            found = _NODE  # a field with SQL of its own: refused by `spec_of` unless registered
        else:
            found = _FIELD
    elif kind is Value:
        found = _VALUE
    elif issubclass(kind, Node):
        found = _NODE
    elif issubclass(kind, ModelBase):  # a model class itself
        found = _MODEL
    elif kind is FieldList:
        found = _FIELDS
    elif issubclass(kind, _MULTI):
        found = _MANY
    elif issubclass(kind, Mapping):
        found = _MAP
    else:
        found = _LEAF
    _kinds[kind] = found
    return found


class Walk:
    """One walk of a query tree: its key (`tokens`), its values in rendering order, the objects its key names."""

    __slots__ = ("keep", "tokens", "values")

    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.values: list[Any] = []
        self.keep: list[Any] = []

    def node(self, node: Any) -> None:
        """Walk one node (or refuse it: `Unfit`)."""
        kind = type(node)
        if (_kinds.get(kind) or _kind(kind)) is _FIELD:
            self._field(node)
            return
        spec = _spec_of_type.get(kind) or spec_of(kind)
        if spec is None:
            raise Unfit(f"{kind.__name__} is not a node the statement cache knows")
        attrs = node.__dict__
        if not spec.allowed.issuperset(attrs):
            raise Unfit(f"{kind.__name__} has attributes the statement cache does not know: "
                        f"{sorted(set(attrs) - spec.allowed)}")
        tokens = self.tokens
        tokens.append(kind)
        for name in spec.structure:
            given = getattr(node, name, None)
            tokens.append(given if given is None or type(given) in _PLAIN else self._structure(given))
        for name, in_column_order in spec.children:
            child = attrs[name] if name in attrs else getattr(node, name, None)
            if child is None:
                tokens.append(None)
            elif in_column_order and isinstance(child, Mapping):
                self._sorted_dict(child)
            else:
                self.value(child)

    def _field(self, field: Any) -> None:
        """A plain field: in the key by identity, with its column and table (both kept alive by the entry)."""
        table = field.model._meta.table
        self.tokens.append((id(field), field.column_name, id(table), field._coerce))
        self.keep += (field, table)

    def value(self, value: Any) -> None:
        """Walk a child: a node, a model, a sequence or dict of children, None, or a value (a parameter)."""
        kind = _kinds.get(type(value)) or _kind(type(value))
        if kind is _FIELD:
            self._field(value)
        elif kind is _LEAF:
            self.tokens.append(_LEAF)
            self.values.append(value)
        elif kind is _NODE:
            self.node(value)
        elif kind is _FIELDS:
            if value.unchanged():
                self.tokens += value.tokens
                self.keep += (*value, *value.tables)
            else:
                self._many(value)
        elif kind is _NONE:
            self.tokens.append(None)
        elif kind is _MANY:
            self._many(value)
        elif kind is _VALUE:
            self._value_node(value)
        elif kind is _INSTANCE:  # a model instance: peewee makes a parameter of it (its key)
            self.tokens += (_INSTANCE, type(value))
            self.values.append(value)
        elif kind is _MODEL:
            table = value._meta.table
            self.tokens += (Model, id(table))
            self.keep.append(table)
        else:
            self.tokens += (dict, len(value))
            for key, item in value.items():
                self._key(key)
                self.value(item)

    def _many(self, value: Any) -> None:
        self.tokens += (list if type(value) is FieldList else type(value), len(value))
        for item in value:
            self.value(item)

    def _value_node(self, node: Value) -> None:
        if not {"value", "converter", "multi", "values"}.issuperset(node.__dict__):
            raise Unfit("a Value with attributes the statement cache does not know")
        self.tokens += (Value, node.multi, self._structure(node.converter))
        if node.multi:
            self.value(node.values)
        else:
            self.tokens.append(_LEAF)
            self.values.append(node.value)

    def _key(self, key: Any) -> None:
        if isinstance(key, str):
            self.tokens.append(key)
        elif isinstance(key, Node):
            self.node(key)
        else:
            raise Unfit(f"a dict key of type {type(key).__name__}")

    def _sorted_dict(self, data: Mapping[Any, Any]) -> None:
        """An INSERT's or UPDATE's columns, walked in the order peewee writes them (by column)."""
        if not all(isinstance(key, Field) for key in data):
            raise Unfit("columns named by string")
        self.tokens += (dict, len(data))
        for key, item in sorted(data.items(), key=lambda pair: pair[0]._sort_key):
            self.node(key)
            if item is None:  # written as a parameter here (peewee wraps every plain value of a column)
                self.tokens.append(_LEAF)
                self.values.append(None)
            else:
                self.value(item)

    def _structure(self, value: Any) -> Any:
        """A structural attribute as a key token: hashable by value, or by identity (kept alive)."""
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if is_model(value):
            table = value._meta.table
            self.keep.append(table)
            return (Model, id(table))
        owner = getattr(value, "__self__", None)
        if owner is not None and hasattr(value, "__func__"):  # a bound method: made anew at each access
            self.keep.append(value)
            return (id(owner), id(value.__func__))
        if callable(value) or isinstance(value, Node):
            self.keep.append(value)
            return (type(value), id(value))
        raise Unfit(f"a structural attribute of type {type(value).__name__}")


class _Recording(Context):
    """peewee's rendering context, recording each value made a parameter and the converter it took."""

    __slots__ = ("converters", "raw", "unfit")

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.raw: list[Any] = []
        self.converters: list[Any] = []
        self.unfit: str | None = None

    def value(self, value: Any, converter: Any = None, add_param: bool = True) -> Any:
        """Record the value and its converter, then render it as peewee does."""
        used = converter if converter else (self.state.converter if converter is None else None)
        converted = used(value) if used else value
        if isinstance(converted, Node) or is_model(converted):
            self.unfit = self.unfit or "a value converts to SQL of its own"
        elif self.state.value_literals:
            self.unfit = self.unfit or "values are written into the SQL text"
        else:
            self.raw.append(value)
            self.converters.append(used)
        return super().value(value, converter, add_param)


class _Entry:
    """A cached shape: its SQL, each parameter's converter, and the objects its key names (kept alive)."""

    __slots__ = ("converters", "keep", "plain", "sql")

    def __init__(self, sql: str, converters: Sequence[Any], keep: list[Any]) -> None:
        self.sql = sql
        self.converters = tuple(converters)
        self.plain = not any(converters)
        self.keep = keep


class StatementCache:
    """SQL per query shape for one database, at most `size` entries, least recently used evicted."""

    def __init__(self, size: int = MAX_SHAPES) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.counts = {"hits": 0, "fills": 0, "unfit": 0, "evictions": 0}
        self.last_unfit: str | None = None

    def clear(self) -> None:
        """Forget every shape (the database was pointed elsewhere)."""
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, Any]:
        """Counts since start: hits, fills, unfit (with the last reason), evictions; and entries now."""
        return {**self.counts, "entries": len(self._entries), "max_entries": self.size,
                "last_unfit": self.last_unfit}

    def render(self, database: Any, query: Any, context: dict[str, Any]) -> tuple[str, list[Any]]:
        """`query`'s SQL and parameters: from the cache by shape, else rendered by peewee (and cached when fit)."""
        bound = getattr(query, "_kit_bound", None)
        if bound is not None:
            statement, values = bound
            return self._prepared(database, query, statement, values, context)
        if context or database.context_class is not Context:
            return database.get_sql_context(**context).sql(query).query()
        query = _defaults_given(query)
        walk = Walk()
        try:
            walk.node(query)
        except Unfit as exc:
            return self._unfit(database, query, str(exc))
        key = tuple(walk.tokens)
        entry = self._lookup(key)
        if entry is None:
            return self._fill(database, query, key, walk)
        params = _bound(entry, walk.values)
        if params is None:  # a value converted to SQL of its own: peewee writes this one
            return database.get_sql_context().sql(query).query()
        self.counts["hits"] += 1
        if VERIFY:
            _verify(database, query, entry.sql, params)
        return entry.sql, params

    def _fill(self, database: Any, query: Any, key: tuple[Any, ...], walk: Walk) -> tuple[str, list[Any]]:
        ctx = _Recording(**database.get_context_options())
        sql, params = ctx.sql(query).query()
        reason = ctx.unfit or _mismatch(walk.values, ctx.raw, params)
        if reason is not None:
            self.counts["unfit"] += 1
            self.last_unfit = reason
            log.debug("statement not cached (%s): %s", reason, sql)
            return sql, params
        self._store(key, _Entry(sql, ctx.converters, walk.keep))
        return sql, params

    def _lookup(self, key: tuple[Any, ...]) -> _Entry | None:
        """The entry for `key` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        return entry

    def _store(self, key: tuple[Any, ...], entry: _Entry) -> None:
        """Keep `entry` under `key`, forgetting the least recently used beyond the bound."""
        with self._lock:
            self._entries[key] = entry
            self.counts["fills"] += 1
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
                self.counts["evictions"] += 1

    def _prepared(self, database: Any, query: Any, prepared: Prepared, values: Mapping[str, Any],
                  context: dict[str, Any]) -> tuple[str, list[Any]]:
        """A prepared statement's SQL (rendered once per database) and this call's values, bound by name."""
        prepared.check_bound(query)
        if context or database.context_class is not Context:
            return prepared.substituted(database, values, context)
        key = (Prepared, id(prepared))
        entry = self._lookup(key)
        if entry is None:
            sql, slots = prepared.render(database)
            entry = _Entry(sql, slots, [prepared])  # its converters are (name, converter) slots
            self._store(key, entry)
        params = bind(entry.converters, values)
        if not _all_parameters(params):
            return prepared.substituted(database, values, context)  # a value converts to SQL: peewee writes it
        self.counts["hits"] += 1
        if VERIFY:
            fresh_sql, fresh_params = prepared.substituted(database, values, context)
            _verify_same(entry.sql, params, fresh_sql, fresh_params)
        return entry.sql, params

    def _unfit(self, database: Any, query: Any, reason: str) -> tuple[str, list[Any]]:
        self.counts["unfit"] += 1
        self.last_unfit = reason
        log.debug("statement not cached: %s", reason)
        return database.get_sql_context().sql(query).query()


def _defaults_given(query: Any) -> Any:
    """An INSERT of one row with the model's defaults for the columns it leaves out, as peewee would write them.

    peewee computes those defaults (`utcnow()`, say) while rendering, so they are values the walk
    cannot see; filled in first, the same way (a callable called once), they are ordinary values.
    """
    if type(query) is not ModelInsert:
        return query
    insert: Any = query  # peewee's private query state, which its stubs do not declare
    if not isinstance(insert._insert, Mapping) or insert._columns:
        return query
    given = insert._insert
    missing = [(field, value) for field, value in query.model._meta.defaults.items() if field not in given]
    if not missing:
        return query
    filled: Any = query.clone()
    filled._insert = {**given, **{field: value() if callable(value) else value for field, value in missing}}
    return filled


def _mismatch(walked: list[Any], recorded: list[Any], params: list[Any]) -> str | None:
    """Why the walk's values are not exactly the rendering's parameters (None: they are)."""
    if len(recorded) != len(params):
        return "parameters came from somewhere the walk cannot see"
    if len(walked) != len(recorded) or any(a is not b for a, b in zip(walked, recorded, strict=True)):
        return "the walk's values are not the rendering's parameters, in order"
    return None


def _bound(entry: _Entry, values: list[Any]) -> list[Any] | None:
    """The parameters for this call's values; None when one converts to SQL (not a parameter)."""
    if entry.plain:
        return values
    params = [convert(value) if convert else value for convert, value in zip(entry.converters, values, strict=True)]
    return params if _all_parameters(params) else None


def _all_parameters(params: list[Any]) -> bool:
    """Whether every converted value is a parameter (none converted to SQL of its own: a node, a model)."""
    return not any(type(param) not in _PARAMETERS and (isinstance(param, Node) or is_model(param))
                   for param in params)


_PARAMETERS = frozenset((str, int, float, bool, bytes, type(None), decimal.Decimal, uuid.UUID, datetime.datetime,
                         datetime.date, datetime.time, datetime.timedelta))  # never SQL: no check needed


def _verify(database: Any, query: Any, sql: str, params: list[Any]) -> None:
    """KIT_SHAPES_VERIFY: the cached statement is exactly what peewee renders, or fail loudly."""
    fresh_sql, fresh_params = database.get_sql_context().sql(query).query()
    _verify_same(sql, params, fresh_sql, fresh_params)


def _verify_same(sql: str, params: list[Any], fresh_sql: str, fresh_params: list[Any]) -> None:
    if fresh_sql != sql or len(fresh_params) != len(params) or any(
            not _same(a, b) for a, b in zip(fresh_params, params, strict=True)):
        raise AssertionError(f"statement cache disagrees with peewee: {sql!r} {params!r} vs {fresh_sql!r} "
                             f"{fresh_params!r}")


def _same(a: Any, b: Any) -> bool:
    """Two parameters are the same value (arrays compared whole, driver adapters by what they adapt)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if hasattr(a, "adapted"):  # psycopg2's Binary, Json...: equal when what they wrap is
        return _same(a.adapted, b.adapted)
    try:
        same = a == b
        return bool(same.all()) if hasattr(same, "all") else bool(same)
    except (TypeError, ValueError):
        return repr(a) == repr(b)


class ShapedStatements:
    """A peewee database whose `execute(query)` takes its SQL from the statement cache (sync and asyncio alike)."""

    _shapes: StatementCache | None = None
    execute_sql: Callable[..., Any]  # the database's this is mixed into

    @property
    def shapes(self) -> StatementCache:
        """This database's statement cache (made on first use)."""
        shapes = self._shapes
        if shapes is None:
            shapes = self._shapes = StatementCache()
        return shapes

    def sql_of(self, query: Any, **context: Any) -> tuple[str, list[Any]]:
        """A query's SQL and parameters, by the statement cache's rules."""
        return self.shapes.render(self, query, context)

    def execute(self, query: Any, commit: Any = None, **context: Any) -> Any:
        """Run a peewee query (peewee's `Database.execute`, its SQL from the statement cache)."""
        sql, params = self.sql_of(query, **context)
        return self.execute_sql(sql, params)

    def shape_stats(self) -> dict[str, Any]:
        """The statement cache's counts (`StatementCache.stats`)."""
        return self.shapes.stats()


__all__ = ["MAX_SHAPES", "FieldList", "ShapedStatements", "StatementCache", "Unfit", "Walk", "is_plain_field",
           "renders_by_place"]
