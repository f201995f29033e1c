"""The reference of the models' columns, as Markdown: `kit models > docs/models.md` (CI checks it matches)."""

from __future__ import annotations

from typing import Any

import peewee
from peewee import ForeignKeyField, Model

from kit.migrate.schema import RENDERER, constraint_sql, normalize_type


def _type(field: peewee.Field) -> str:
    ctx = RENDERER.get_sql_context()
    target = field.rel_field if isinstance(field, ForeignKeyField) else field
    return normalize_type(ctx.sql(target.ddl_datatype(ctx)).query()[0])


def _default(field: peewee.Field) -> str:
    for constraint in field.constraints or []:
        text = constraint_sql(constraint) or ""
        if text.upper().startswith("DEFAULT "):
            return f"`{text[len('DEFAULT '):]}`"
    if callable(field.default):
        return f"`{getattr(field.default, '__name__', 'a function')}()` (Python)"
    if field.default is not None:
        return f"`{field.default!r}` (Python)"
    return ""


def _notes(field: peewee.Field) -> str:
    notes = []
    if field.primary_key:
        notes.append("primary key")
    if isinstance(field, ForeignKeyField):
        rule = f", on delete {field.on_delete.lower()}" if field.on_delete else ""
        notes.append(f"→ `{field.rel_model._meta.table_name}.{field.rel_field.column_name}`{rule}")
    if field.unique:
        notes.append("unique")
    elif field.index and not field.primary_key:
        notes.append("indexed")
    for constraint in field.constraints or []:
        text = constraint_sql(constraint) or ""
        if "CHECK" in text.upper():
            notes.append(f"`{text}`")
    return "; ".join(notes)


def markdown(models: list[type[Model]]) -> str:
    """Every model's table: its columns, types, nullability, defaults, keys and checks."""
    lines = ["# The models' columns", "",
             "Generated from the models by `kit models > docs/models.md`; the test suite checks it is current.", ""]
    for model in models:
        meta = model._meta
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += [f"## `{meta.table_name}` ({model.__module__}.{model.__name__})", ""]
        if doc:
            lines += [doc, ""]
        lines += ["| column | type | null | default | notes |", "|---|---|---|---|---|"]
        for field in meta.sorted_fields:
            cells: list[Any] = [f"`{field.column_name}`", f"`{_type(field)}`", "yes" if field.null else "",
                                _default(field), _notes(field)]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        indexes = [i for i in meta.fields_to_index() if len(getattr(i, "_expressions", [])) > 1
                   or type(i).__name__ != "ModelIndex"]
        for index in indexes:
            columns = ", ".join(getattr(e, "column_name", str(e)) for e in index._expressions)
            kind = "unique index" if index._unique else f"{(index._using or 'btree').lower()} index"
            lines.append(f"\n{kind} `{index._name}` on ({columns})")
        lines.append("")
    return "\n".join(lines)
