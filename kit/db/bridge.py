"""Which database a model's statements go to: the asyncio one inside its `run()`, else the model's own.

`kit.aio.AsyncDatabase.run()` marks the current context (its greenlet shares the task's context) with
itself and the sync database it stands in for; `ModelMetadata.database` reads that mark, so a model
bound to `kit.db.database` runs on the asyncio database there and on its own everywhere else (other
threads and tasks, and plain sync code), with nothing bound or unbound process-wide. Kept apart from
`kit.aio` so that sync code imports no asyncio driver.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from peewee import Metadata

_standing_in: ContextVar[tuple[Any, Any] | None] = ContextVar("kit_standing_in", default=None)


def stand_in(replacement: Any, replaced: Any) -> Token:
    """From now on in this context, models bound to `replaced` use `replacement`; `leave(token)` ends it."""
    return _standing_in.set((replacement, replaced))


def leave(token: Token) -> None:
    """End what `stand_in` began."""
    _standing_in.reset(token)


class ModelMetadata(Metadata):
    """peewee's model metadata, whose `database` is the asyncio database inside its `run()` (see the module).

    It also gives each field with a Python default the same default in the database as the field is
    added (`kit.models.base.mirror_defaults`), for a project's own models as for the kit's.
    """

    def add_field(self, field_name: str, field: Any, set_attribute: bool = True) -> None:
        """Add a field, its Python default mirrored as a database default."""
        super().add_field(field_name, field, set_attribute)
        if self.mirror is not None:
            self.mirror(field)

    mirror: Any = None  # set by kit.models.base: the function that adds a field's database default

    @property
    def database(self) -> Any:
        """The database this model's statements go to in the current context."""
        pair = _standing_in.get()
        own = self._database
        return pair[0] if pair is not None and pair[1] is own else own

    @database.setter
    def database(self, value: Any) -> None:
        self._database = value
