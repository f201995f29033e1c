"""The conventions every kit model follows: UUID keys made by the database, timestamps with time zone.

- `id`: a UUID primary key with `DEFAULT gen_random_uuid()` (PostgreSQL 13+), returned on insert.
- `created_at` / `updated_at`: `timestamptz NOT NULL DEFAULT now()`; `save()` sets `updated_at`.
- Tables are snake_case and plural (`Meta.table_name`); every model uses `kit.db.database` and reads
  vector columns in binary (`kit.vector.VectorModel`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from peewee import SQL, Check, UUIDField
from playhouse.postgres_ext import DateTimeTZField

from kit.db import database
from kit.vector import VectorModel


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def now_default() -> list[Any]:
    """The column constraint `DEFAULT now()`, for timestamps set by the database as well as by Python."""
    return [SQL("DEFAULT now()")]


def one_of(column: str, values: tuple[str, ...]) -> Any:
    """A CHECK constraint: `column` takes only the listed values."""
    listed = ", ".join(f"'{v}'" for v in values)
    return Check(f"{column} IN ({listed})")


class BaseModel(VectorModel):
    """A row with a database-made UUID key and a creation time."""

    id = UUIDField(primary_key=True, constraints=[SQL("DEFAULT gen_random_uuid()")])
    created_at = DateTimeTZField(default=utcnow, constraints=now_default())

    class Meta:
        database = database


class TimestampedModel(BaseModel):
    """A row that also records when it last changed: `save()` sets `updated_at`."""

    updated_at = DateTimeTZField(default=utcnow, constraints=now_default())

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
        if not any(key in ("updated_at", cls.updated_at) for key in data):
            data[cls.updated_at] = utcnow()
        return super().update(data)
