"""A project's own models get their Python defaults as database defaults, as the kit's do."""

from __future__ import annotations

from peewee import BooleanField, IntegerField, TextField

from kit.models.base import TimestampedModel


class Gadget(TimestampedModel):
    """A user's own model, defined after the kit's."""

    size = IntegerField(default=3)
    label = TextField(default="it's")
    active = BooleanField(default=True)
    notes = TextField(null=True)

    class Meta:
        table_name = "gadgets"


def defaults(field) -> list[str]:
    return [c.sql for c in field.constraints or [] if getattr(c, "sql", "").startswith("DEFAULT ")]


def test_each_python_default_is_the_columns_database_default_once():
    assert defaults(Gadget.size) == ["DEFAULT 3"]
    assert defaults(Gadget.label) == ["DEFAULT 'it''s'"]
    assert defaults(Gadget.active) == ["DEFAULT true"]
    assert defaults(Gadget.notes) == []
    assert "DEFAULT 3" in Gadget._schema._create_table().query()[0]
