"""What a migration will run, rendered from its queued operations without running any.

`render(router, name)` replays the migrations before `name` (peewee-migrate's fake mode: no SQL),
queues `name`'s operations and renders each: peewee's schema operations as their SQL, a step that
runs after the migration's transaction (`kit.migrate.steps`) as `AFTER_COMMIT` + its SQL, a Python
function (`migrator.run(f)`) as `PYTHON_STEP` + its name. `rendered(op)` gives one operation's
statements with their parameters, which `kit.migrate.operations` rewrites into safe forms.
"""

from __future__ import annotations

from typing import Any, cast

from peewee import Context, Database, Node, Proxy
from peewee_migrate import Migrator
from peewee_migrate.router import Router
from playhouse.migrate import Operation

from kit.migrate.loader import load

AFTER_COMMIT = "-- after commit: "  # a step run after the migration's transaction
PYTHON_STEP = "-- python: "  # a Python function: only its code knows what it runs

__all__ = ["AFTER_COMMIT", "PYTHON_STEP", "render", "rendered"]


def render(router: Router, name: str) -> list[str]:
    """The SQL migration `name` will run, from the schema the ones before it leave (nothing is run)."""
    migrator = Migrator(router.database)
    names = [m.name for m in load(router.migrate_dir)]
    for before in names[: names.index(name)]:
        router.run_one(before, migrator, fake=True)
    migrate, _ = router.read(name)
    migrate(migrator, router.database, fake=False)  # queues its operations; nothing runs
    statements = []
    for op in migrator.__ops__:
        try:
            statements += [sql for sql, _ in rendered(op, router.database)]
        except Exception as exc:  # noqa: BLE001 - an operation that reads the live schema (a foreign key's name)
            name = getattr(getattr(op, "fn", None), "__name__", type(op).__name__)
            statements.append(f"{PYTHON_STEP}{name} (it reads the schema it runs on: {exc})")
    migrator.__ops__ = []
    return statements


def rendered(op: Any, database: Database | Proxy) -> list[tuple[str, tuple]]:
    """The statements (SQL, parameters) of one queued operation."""
    if isinstance(op, Operation):
        return rendered(op.fn(op.migrator, *op.args, **op.kwargs), database)
    if isinstance(op, Context):
        sql, params = op.query()
        return [(sql, tuple(params))]
    if isinstance(op, Node):
        sql, params = database.get_sql_context().sql(op).query()
        return [(sql, tuple(params))]
    if isinstance(op, list | tuple):
        return [item for part in op for item in rendered(part, database)]
    if isinstance(op, str):
        return [(op, ())]
    after = getattr(op, "after_commit", None)  # kit.migrate.steps.Deferred
    if after is not None:
        return [(AFTER_COMMIT + after.sql, after.params)]
    model = getattr(op, "__self__", None)
    if getattr(op, "__name__", "") == "create_table" and isinstance(model, type):  # migrator.create_model
        model = cast(Any, model)  # a peewee Model class: its `_schema` is not in peewee's stubs
        return [(model._schema._create_table(safe=True).query()[0], ()),
                *((ctx.query()[0], ()) for ctx in model._schema._create_indexes(safe=True))]
    target = getattr(op, "func", op)
    for cell in getattr(target, "__closure__", None) or ():  # migrator.run(f, ...) queues a lambda calling f
        if callable(cell.cell_contents) and not isinstance(cell.cell_contents, type):
            target = cell.cell_contents
            break
    return [(f"{PYTHON_STEP}{getattr(target, '__qualname__', repr(target))}", ())]
