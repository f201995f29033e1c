"""Rows of any model, made by name with only what a test cares about: `make(Member, organization=org, role="admin")`.

Every column the test leaves out that the row cannot go without gets a value, the same for the
same seed:

- a foreign key: the row it points at, made the same way; an organization key takes the tenant
  context's organization when there is one (so a row made inside `with kit.tenant(org)` is `org`'s);
- a column a CHECK limits to a list (`status IN ('active', ...)`): the first value of the list;
- an email, a URL, a slug or any unique text: a value no other row of the run has;
- numbers, times, dates, booleans, JSON: a plain value of the type; a vector column a unit vector.

A value may be `fake("person.email")` (or `fake("address.city", locale="de")`): mimesis's data, as
a seed fixture's `!fake` gives it, drawn from the factory's seed (mimesis is the seed extra).

Columns with a default (in Python or in the database) and nullable ones are left to it. Rows go in
through the model (`Model.create`), so they land in the test's transaction and tenant context,
under row-level security like the application's own writes.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zlib
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import count
from typing import Any

import peewee

from kit.copy.writer import database_default
from kit.errors import ArgumentError
from kit.models.base import is_generated
from kit.tenancy import current_tenant
from kit.vector.sample import unit_vectors

__all__ = ["Factory", "Fake", "fake", "seed_of"]

_ONE_OF = re.compile(r"\bIN \('([^']*)'")  # a CHECK (column IN ('first', ...)): its first value


@dataclass(frozen=True)
class Fake:
    """A made-up value from mimesis, drawn when the row is made: `fake("person.email")`."""

    method: str
    locale: str | None = None
    arguments: dict[str, Any] = dataclass_field(default_factory=dict)


def fake(method: str, locale: str | None = None, **arguments: Any) -> Fake:
    """mimesis's `method` (`provider.method`, as a seed fixture's `!fake` names it), in `locale`, with `arguments`."""
    if not isinstance(method, str) or method.count(".") != 1:
        raise ArgumentError(f"fake({method!r}): name a mimesis provider and method, such as 'person.email'")
    return Fake(method, locale, arguments)


def seed_of(name: str) -> int:
    """A seed from a name (a test's id): the same rows for the same test, run after run."""
    return zlib.crc32(name.encode())


def _has_default(field: peewee.Field) -> bool:
    return bool(field.default is not None or field.null or field.primary_key or is_generated(field)
                or database_default(field))


def _first_allowed(field: peewee.Field) -> str | None:
    for constraint in field.constraints or ():
        found = _ONE_OF.search(str(getattr(constraint, "sql", constraint)))
        if found:
            return found[1]
    return None


class Factory:
    """Makes rows of any model; `seed` makes its values the same from run to run."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._numbers = count(1)
        self._tag = f"{seed % 100_000:05d}"
        self._generics: dict[str | None, Any] = {}

    def __call__(self, model: type[peewee.Model], **given: Any) -> Any:
        """One row of `model` with `given` values and made-up ones for the rest it needs (`make(Model, ...)`)."""
        return model.create(**self.values(model, **given))

    def many(self, model: type[peewee.Model], rows: int, **given: Any) -> list[Any]:
        """`rows` rows of `model`, each as `make` makes one."""
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ArgumentError(f"make_many({model.__name__}, {rows!r}): the number of rows must be 0 or more")
        return [self(model, **given) for _ in range(rows)]

    def values(self, model: type[peewee.Model], **given: Any) -> dict[str, Any]:
        """The values `make` would insert: `given`, then one for each column that needs one."""
        fields = model._meta.fields
        unknown = sorted(set(given) - set(fields) - {f.column_name for f in fields.values()})
        if unknown:
            raise ArgumentError(f"make({model.__name__}): it has no field {unknown[0]!r}; its fields: "
                                f"{', '.join(fields)}")
        number = next(self._numbers)
        values = {name: self._fake(value, number, name) if isinstance(value, Fake) else value
                  for name, value in given.items()}
        for field in model._meta.sorted_fields:
            if field.name not in values and not _has_default(field):
                values[field.name] = self._value(model, field, number)
        return values

    def _value(self, model: type[peewee.Model], field: peewee.Field, number: int) -> Any:
        table, name = model._meta.table_name, field.name
        if isinstance(field, peewee.ForeignKeyField):
            related = field.rel_model
            if related._meta.table_name == "organizations" and current_tenant() is not None:
                return current_tenant()
            return self(related)
        if hasattr(field, "dimensions") and hasattr(field, "dtype") and field.dimensions:
            return unit_vectors(self.seed * 1_000_003 + number, 1, field.dimensions, field.dtype)[0]
        allowed = _first_allowed(field)
        if allowed is not None:
            return allowed
        kind = field.field_type.upper()
        if kind in ("TEXT", "VARCHAR", "CHAR"):
            return self._text(table, name, number)
        made = self._plain(kind, number)
        if made is _NONE:
            raise ArgumentError(f"make({model.__name__}): cannot make up a value for {name} ({field.field_type}); "
                                f"give one: make({model.__name__}, {name}=...)")
        return made

    def _fake(self, spec: Fake, number: int, name: str) -> Any:
        try:
            from mimesis import Generic, Locale
        except ImportError:
            raise ArgumentError("fake() needs mimesis, the seed extra: pip install 'peewee-saas-kit[seed]'") from None
        generic = self._generics.get(spec.locale)
        if generic is None:
            try:
                generic = self._generics[spec.locale] = Generic(Locale(spec.locale) if spec.locale else Locale.EN)
            except ValueError:
                raise ArgumentError(f"fake({spec.method!r}): unknown mimesis locale {spec.locale!r}") from None
        generic.reseed(seed_of(f"{self.seed}/{number}/{name}"))
        provider, method = spec.method.split(".")
        made = getattr(getattr(generic, provider, None), method, None)
        if not callable(made):
            raise ArgumentError(f"fake({spec.method!r}): mimesis has no {provider}.{method}")
        return made(**spec.arguments)

    def _text(self, table: str, name: str, number: int) -> str:
        unique = f"{table.replace('_', '-')}-{self._tag}-{number}"
        if "email" in name:
            return f"{unique}@example.test"
        if "url" in name:
            return f"https://example.test/{unique}"
        return unique

    @staticmethod
    def _plain(kind: str, number: int) -> Any:
        now = dt.datetime.now(dt.UTC)
        return {
            "INT": number, "INTEGER": number, "BIGINT": number, "SMALLINT": number, "DECIMAL": 0, "NUMERIC": 0,
            "FLOAT": 0.0, "DOUBLE": 0.0, "REAL": 0.0, "BOOL": False, "BOOLEAN": False,
            "TIMESTAMPTZ": now + dt.timedelta(days=1), "DATETIME": now + dt.timedelta(days=1),
            "TIMESTAMP": now + dt.timedelta(days=1), "DATE": now.date().replace(day=1),
            "UUID": uuid.UUID(int=number), "JSONB": {}, "JSON": {},
        }.get(kind, _NONE)


_NONE = object()  # no plain value for this type
