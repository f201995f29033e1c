"""Rows to model instances by a plan made once per shape, not worked out again for every query.

peewee's `ModelObjectCursorWrapper` matches the cursor's columns to the selected fields and their
converters on every query, then builds each instance through `Model.__init__`, one `setattr` (a
descriptor call) per column. `ModelRows` keeps that match (peewee's own `_resolve_model_columns`)
as a plan keyed by the model and the selected fields (a SELECT list holding other expressions, which
each query makes anew, is resolved by peewee every time), and builds an
instance by filling its data directly when that is provably what `__init__` would do: the model
keeps peewee's `__init__`, and every column is a field read through peewee's plain accessors.
Anything else (a column that is not a field, an accessor of its own, a constructor that is not the
model) goes through peewee's path unchanged.

A plan names no value. At most `MAX_PLANS` plans are kept (the oldest forgotten first); a field
added to or removed from a model changes its key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from peewee import FieldAccessor, ForeignKeyAccessor, Model, ModelObjectCursorWrapper

from kit.db.shapes import FieldList, is_plain_field

MAX_PLANS = 500
_PLAIN_ACCESSORS = (FieldAccessor, ForeignKeyAccessor)


class _Plan:
    """How one shape's columns become an instance (peewee's resolution, kept)."""

    __slots__ = ("columns", "convert", "converters", "direct", "fields", "keep", "ncols", "no_convert",
                 "unique_columns")

    def __init__(self, wrapper: ModelObjectCursorWrapper, keep: Any) -> None:
        self.columns = wrapper.columns
        self.fields = wrapper.fields
        self.converters = wrapper.converters
        self.no_convert = wrapper.no_convert
        self.convert = wrapper.convert
        self.ncols = wrapper.ncols
        self.unique_columns = wrapper.unique_columns
        self.keep = keep
        self.direct = _direct(wrapper)


def _direct(wrapper: ModelObjectCursorWrapper) -> tuple[tuple[int, str], ...] | None:
    """(index, name) per column when an instance may be filled directly; None when `__init__` must run."""
    model = wrapper.constructor
    if not wrapper.is_model or model is not wrapper.model or model.__init__ is not Model.__init__:
        return None
    names = wrapper.unique_columns
    if len(set(names)) != len(names):
        return None
    for name in names:
        if name not in model._meta.fields or type(model.__dict__.get(name)) not in _PLAIN_ACCESSORS:
            return None
    return tuple(enumerate(names))


def _only_fields(select: Any) -> bool:
    """Whether every selected node is a field rendering one column, so the plan follows from the nodes alone.

    peewee names and converts such a column by its field, never by what the cursor calls it.
    """
    return bool(select) and all(is_plain_field(type(node)) for node in select)


_plans: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()
_lock = threading.Lock()


class ModelRows(ModelObjectCursorWrapper):
    """peewee's model-instance rows, by a plan kept per shape (see the module)."""

    def initialize(self) -> None:
        """Take this shape's plan, or make it with peewee's own resolution."""
        model = self.model
        meta = model._meta
        select = self.select
        key: tuple[Any, ...]
        if type(select) is FieldList:  # a model's default columns: one object per list of fields, kept by the plan
            key = (id(model), id(self.constructor), len(meta.fields), len(meta.combined), id(select), len(select))
        elif _only_fields(select):
            key = (id(model), id(self.constructor), len(meta.fields), len(meta.combined), tuple(map(id, select)))
        else:  # an expression is made anew by each query: a plan keyed by it would serve no other, only crowd out
            super().initialize()
            self._direct = None
            return
        plan = _plans.get(key)
        if plan is None:
            super().initialize()
            plan = _Plan(self, (model, self.constructor, list(select), select))
            with _lock:
                _plans[key] = plan
                while len(_plans) > MAX_PLANS:
                    _plans.popitem(last=False)
        else:
            self.columns, self.fields, self.converters = plan.columns, plan.fields, plan.converters
            self.no_convert, self.convert, self.ncols = plan.no_convert, plan.convert, plan.ncols
            self.unique_columns = plan.unique_columns
        self._direct = plan.direct

    def process_row(self, row: Any) -> Any:
        """One row as an instance: filled directly by the plan, else as peewee builds it."""
        direct = self._direct
        if direct is None:
            return super().process_row(row)
        converters = self.converters
        data = {}
        for index, name in direct:
            convert = converters[index]
            data[name] = row[index] if convert is None else convert(row[index])
        obj = self.constructor.__new__(self.constructor)
        obj.__data__ = data
        obj._dirty = set()
        obj.__rel__ = {}
        return obj


def not_found(query: Any) -> Exception:
    """The model's `DoesNotExist` for a query that found no row, in peewee's words."""
    bound = getattr(query, "_kit_bound", None)  # a prepared statement's: written with its values in place
    sql, params = bound[0].substituted(query.model._meta.database, bound[1]) if bound else query.sql()
    return query.model.DoesNotExist(f"{query.model} instance matching query does not exist:\nSQL: {sql}\n"
                                    f"Params: {params}")


def plan_count() -> int:
    """How many row plans are kept."""
    return len(_plans)


__all__ = ["MAX_PLANS", "ModelRows", "not_found", "plan_count"]
