"""Prepared statements: a peewee query built once with named `Param`s, its SQL rendered once per database.

The statement cache (`kit.db.shapes`) saves peewee's rendering but still builds and walks the query
on every call. A hot path that runs one statement over and over (the kit's `OrgCredit.consume`,
`Usage.increment`) can skip both: build the query once, with a `Param` where each call's value goes,
and run it with the values by name::

    CONSUME = Prepared(OrgCredit.update({OrgCredit.balance: OrgCredit.balance - Param("amount"),
                                         OrgCredit.updated_at: fn.now()})
                       .where(OrgCredit.organization == Param("org")).returning(OrgCredit.balance))
    CONSUME.execute(org=org_id, amount=5).fetchall()

**Why it is right by construction.**
- Every value in the query is a `Param`. A value written into the query (`LIMIT 10`, a constant in a
  comparison, a model default that peewee computes while rendering, such as `created_at`'s `utcnow()`)
  would be fixed at the first call and sent again at every later one, so preparing refuses it with
  `ArgumentError`: write it as SQL (`fn.now()`) or as a `Param`.
- Each `Param` takes the converter peewee would have used for a value in its place (the column's
  `db_value` in an INSERT or UPDATE, the compared field's in a comparison), recorded when peewee
  renders the query; a call converts its values with those, so they are parameters, never SQL text.
- A call runs a copy of the query (`bound`) through the database's `execute`, the same contract as any
  query (tenant checks, routing, time limits, telemetry); only the rendering is skipped. A copy changed
  since it was bound (a query method called on it) is refused before anything is sent.
- The SQL lives in each database's statement cache (`kit.db.shapes`), so it never crosses databases
  and `init()` to another server forgets it; with `KIT_SHAPES_VERIFY=1` every call is also rendered
  by peewee with the values in place of the `Param`s and compared.
- A call with a name missing or one the query does not have is an `ArgumentError`; nothing is sent.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from peewee import Context, Field, ModelBase, Node

from kit.errors import ArgumentError


class Param(Node):
    """A named value of a prepared statement, given at each call (`Prepared.execute(name=value)`)."""

    def __init__(self, name: str, converter: Any = None) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ArgumentError(f"a Param's name must be an identifier, got {name!r}")
        self.name = name
        self.converter = converter

    def __sql__(self, ctx: Any) -> Any:
        if isinstance(ctx, _Preparing):
            return ctx.param(self)
        value = ctx.given.get(self.name, _MISSING) if isinstance(ctx, _Substituting) else _MISSING
        if value is _MISSING:
            raise ArgumentError(f"Param {self.name!r} has a value only when its statement runs "
                                "(Prepared.execute); nothing was sent")
        return ctx.value(value, self.converter or None)


_MISSING = object()
_RUN_STATE = frozenset(("_cursor_wrapper", "_database", "_read_in", "_hash"))  # running state, not SQL


def _same(a: Any, b: Any) -> bool:
    """The same object, or a container peewee's `clone()` copied holding the same objects."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(a[key] is b[key] for key in a)
    return False


class _Preparing(Context):
    """peewee's rendering context, recording each `Param` it meets and refusing any other value."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.slots: list[tuple[str, Any]] = []

    def param(self, param: Param) -> Any:
        """A parameter placeholder for `param`, with the converter peewee would use in its place."""
        self.slots.append((param.name, param.converter or self.state.converter))
        return Context.value(self, None, False)  # peewee's own placeholder, its value filled at each call

    def value(self, value: Any, converter: Any = None, add_param: bool = True) -> Any:
        """Any value that is not a `Param` would be fixed at the first call: refused."""
        raise ArgumentError(f"a prepared statement takes every value as a Param; it holds {value!r}, which would "
                            "be sent again at every call (write it as a Param, or as SQL such as fn.now())")


class _Substituting(Context):
    """peewee's rendering context with each `Param`'s value in its place (to verify a prepared statement)."""

    def __init__(self, given: Mapping[str, Any], **settings: Any) -> None:
        super().__init__(**settings)
        self.given = given


class Prepared:
    """A query built once with `Param`s; `execute(**values)` runs it with its SQL rendered once per database."""

    def __init__(self, query: Any) -> None:
        self._query = _params_take_their_columns(query.clone())
        self._query._database = None  # run on the model's database of the moment (`kit.aio`'s inside its run())
        self.model = query.model
        self._models = tuple(_state(model) for model in _models_in(query))

    def unchanged(self) -> bool:
        """Whether every model it names is as it was when prepared (no field added or removed, nothing renamed)."""
        for model, fields, table, names in self._models:
            meta = model._meta
            if meta.sorted_fields is not fields or meta.table is not table or len(fields) != len(names):
                return False
            for field, name in zip(fields, names, strict=True):
                if field.column_name is not name:
                    return False
        return True

    def execute(self, **values: Any) -> Any:
        """Run the statement with these values on the query's database; the driver's cursor."""
        return self.model._meta.database.execute(self.bound(**values))

    def first(self, **values: Any) -> Any:
        """A SELECT's first row, made as the query makes its rows (a model instance), or None."""
        rows = self.bound(**values).execute(self.model._meta.database)
        try:
            return rows.iterate()
        except StopIteration:
            return None

    def sql(self, database: Any = None, **values: Any) -> tuple[str, list[Any]]:
        """The SQL and parameters it sends with these values (on `database`, else the query's own)."""
        rendered: tuple[str, list[Any]] = (database or self.model._meta.database).sql_of(self.bound(**values))
        return rendered

    def bound(self, **values: Any) -> Any:
        """A copy of the query carrying these values, to run as it is (built upon, it is refused: `check_bound`)."""
        if not self.unchanged():
            raise ArgumentError(f"a model of this prepared statement ({self.model.__name__}...) changed since it was "
                                "prepared (a field added or removed, a column or table renamed); prepare it again; "
                                "nothing was sent")
        bound = self._query.clone()
        bound._kit_bound = (self, values)
        return bound

    def check_bound(self, bound: Any) -> None:
        """Refuse a bound copy changed since `bound()` made it: its prepared SQL would not be what it says."""
        mine = self._query.__dict__
        theirs = bound.__dict__
        if len(theirs) != len(mine) + 1 or not all(
                _same(theirs.get(name, _MISSING), value) for name, value in mine.items() if name not in _RUN_STATE):
            raise ArgumentError(f"a prepared statement of {self.model.__name__} was changed after it was bound "
                                "(a query method called on it); build a new Prepared instead; nothing was sent")

    def render(self, database: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The SQL and the (name, converter) of each parameter, as peewee renders the query for `database`."""
        ctx = _Preparing(**database.get_context_options())
        sql, _ = ctx.sql(self._query).query()
        return sql, tuple(ctx.slots)

    def substituted(self, database: Any, values: Mapping[str, Any],
                    context: Mapping[str, Any] | None = None) -> tuple[str, list[Any]]:
        """The SQL and parameters peewee renders with the values in place of the `Param`s."""
        bind(self.render(database)[1], values)  # every name given, no other
        options = {**database.get_context_options(), **(context or {})}
        rendered: tuple[str, list[Any]] = _Substituting(values, **options).sql(self._query).query()
        return rendered


def bind(slots: tuple[tuple[str, Any], ...], values: Mapping[str, Any]) -> list[Any]:
    """Each slot's value, converted as peewee would convert it there; every name given, no other."""
    names = {name for name, _ in slots}
    if names != values.keys():
        missing, unknown = sorted(names - values.keys()), sorted(values.keys() - names)
        raise ArgumentError("a prepared statement was run with " + "; ".join(
            part for part in (f"no value for {', '.join(missing)}" if missing else "",
                              f"values it does not take: {', '.join(unknown)}" if unknown else "") if part)
            + "; nothing was sent")
    return [convert(values[name]) if convert else values[name] for name, convert in slots]


def _models_in(node: Any) -> list[Any]:
    """Every model a query names (its own, joined, in subqueries, through fields), each once."""
    found: dict[Any, None] = {}
    seen: set[int] = set()
    todo = [node]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ModelBase):
            found[item] = None
        elif isinstance(item, Field):
            found[item.model] = None
        elif isinstance(item, Mapping):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += item
        elif isinstance(item, Node) and hasattr(item, "__dict__"):
            todo += item.__dict__.values()
    return list(found)


def _state(model: Any) -> tuple[Any, list[Any], Any, tuple[str, ...]]:
    """What a model's SQL depends on: its fields (the list itself), its table, each column's name."""
    meta = model._meta
    return model, meta.sorted_fields, meta.table, tuple(field.column_name for field in meta.sorted_fields)


def _params_take_their_columns(query: Any) -> Any:
    """A `Param` written as an INSERT's or UPDATE's column value takes that column's converter, as a value would."""
    if getattr(query, "_on_conflict", None) is not None:
        query._on_conflict = copy.copy(query._on_conflict)
    conflict = getattr(query, "_on_conflict", None)
    for holder, attr in ((query, "_insert"), (query, "_update"), (conflict, "_update")):
        data = getattr(holder, attr, None)
        if isinstance(data, Mapping):
            setattr(holder, attr, {
                key: Param(value.name, key.db_value)
                if isinstance(value, Param) and isinstance(key, Field) and value.converter is None else value
                for key, value in data.items()})
    return query


__all__ = ["Param", "Prepared", "bind"]
