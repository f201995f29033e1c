"""Steps a migration runs after its transaction commits: CONCURRENTLY builds, validations, batched backfills,
tables partitioned while their writers go on.

Some safe forms cannot run inside the migration's transaction (CREATE INDEX CONCURRENTLY refuses to),
and others must not (a VALIDATE in the transaction that added the constraint would scan under the
lock the ADD took). The migration's transaction records them in `kit_migration_steps`, with the
migration itself, so they are never lost; after it commits they run in order, each in a transaction
of its own under brief, retried lock waits (`kit.ddl`), and each is marked done as it ends.

Resumable: a run killed half-way leaves steps not done; the next `kit migrate` or `pw_migrate
migrate` runs them before anything else. Each is safe to run again: an index build first drops the
INVALID index a killed build leaves; validations and SET NOT NULL are idempotent; a backfill touches
only the rows still NULL. `kit migrate verify` names steps not done.

- `Deferred` / `defer(migrator, later)`: queue a step (used by `kit.migrate.operations`);
- `record(database, kind, ...)`: record one now (what `kit.ddl.after_commit` does inside `applying`);
- `applying(name)`: the migration whose transaction records steps;
- `run_steps(database, say)`: run what is not done; `unfinished(database)`: what is not done.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from peewee import Database, Proxy
from peewee_migrate import Migrator

from kit.ddl import recording, run_concurrently, run_ddl
from kit.errors import MigrationError
from kit.migrate.history import STEPS_TABLE
from kit.migrate.safe import Later
from kit.partitions import AHEAD_MONTHS, partition_online
from kit.telemetry import operation

__all__ = ["STEPS_TABLE", "Deferred", "Step", "applying", "defer", "forget_steps", "run_steps",
           "unfinished"]

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {STEPS_TABLE} (
    id bigserial PRIMARY KEY,
    migration text NOT NULL,
    kind text NOT NULL,
    name text,
    sql text NOT NULL,
    params jsonb NOT NULL DEFAULT '[]',
    done_at timestamptz
)"""
_current: contextvars.ContextVar[str] = contextvars.ContextVar("kit_migration", default="?")


@dataclass(frozen=True)
class Step:
    """A recorded step."""

    id: int
    migration: str
    kind: str
    name: str | None
    sql: str
    params: tuple

    def describe(self) -> str:
        """`011_x: CREATE INDEX CONCURRENTLY ... (after its transaction)`, shortened."""
        if self.kind == "partition":
            return f"{self.migration}: partition {self.name} by {self.sql}, copying its rows online"
        text = " ".join(self.sql.split())
        return f"{self.migration}: {text if len(text) <= 100 else text[:97] + '...'}"


class Deferred:
    """A queued operation that records a step in the migration's transaction (rendered by `kit.migrate.render`)."""

    __name__ = "record a step after the transaction"  # peewee-migrate logs each operation by its name

    def __init__(self, database: Database | Proxy, later: Later) -> None:
        self.database, self.after_commit = database, later

    def __call__(self) -> None:
        """Record the step (inside the migration's transaction: it lands with the migration or not at all)."""
        later = self.after_commit
        record(self.database, later.kind, later.name, later.sql, later.params)


def record(database: Database | Proxy, kind: str, name: str | None, sql: str, params: tuple = ()) -> None:
    """Record a step of the applying migration, in its transaction."""
    database.execute_sql(_CREATE)
    database.execute_sql(
        f"INSERT INTO {STEPS_TABLE} (migration, kind, name, sql, params) VALUES (%s, %s, %s, %s, %s)",
        (_current.get(), kind, name, sql, json.dumps(list(params), default=str)))


def defer(migrator: Migrator, later: Later) -> None:
    """Queue `later` to run after the migration's transaction commits."""
    migrator.__ops__.append(Deferred(migrator.__database__, later))


@contextlib.contextmanager
def applying(name: str) -> Iterator[None]:
    """Steps recorded inside this block belong to migration `name` (those of `kit.ddl.after_commit` too)."""
    token = _current.set(name)
    try:
        with recording(record):
            yield
    finally:
        _current.reset(token)


def unfinished(database: Database) -> list[Step]:
    """The steps recorded and not done, in order."""
    if not database.execute_sql("SELECT to_regclass(%s) IS NOT NULL", (STEPS_TABLE,)).fetchone()[0]:
        return []
    rows = database.execute_sql(f"SELECT id, migration, kind, name, sql, params FROM {STEPS_TABLE} "
                                "WHERE done_at IS NULL ORDER BY id").fetchall()
    return [Step(i, m, k, n, s, tuple(p)) for i, m, k, n, s, p in rows]


def forget_steps(database: Database, migration: str) -> None:
    """Drop the steps of `migration` not done (it is being rolled back: they would run against a schema gone)."""
    if database.execute_sql("SELECT to_regclass(%s) IS NOT NULL", (STEPS_TABLE,)).fetchone()[0]:
        database.execute_sql(f"DELETE FROM {STEPS_TABLE} WHERE migration = %s AND done_at IS NULL", (migration,))


def run_steps(database: Database, say: Callable[[str], None] = print) -> int:
    """Run the steps not done, in order, each marked done as it ends; return how many ran."""
    steps = unfinished(database)
    for step in steps:
        with operation("kit.migrate.step", **{"kit.migration.name": step.migration, "kit.migration.step": step.kind}):
            _run_step(database, step, say)
    return len(steps)


def _run_step(database: Database, step: Step, say: Callable[[str], None]) -> None:
    """Run one step after its migration's transaction and mark it done."""
    what = f"{step.migration}: a step after its transaction"
    if step.kind == "index":
        _build_index(database, what, step)
    elif step.kind == "backfill":
        rows = _backfill(database, what, step)
        say(f"{step.migration}: backfilled {rows:,} rows")
    elif step.kind == "sql":
        run_ddl(database, what, partial(database.execute_sql, step.sql, step.params))
    elif step.kind == "partition":  # `kit.partitions.partition_table` inside a migration, on a table with rows
        ahead = int(step.params[0]) if step.params else AHEAD_MONTHS
        rows = partition_online(database, step.name or "", step.sql, ahead, say=say)
        say(f"{step.migration}: {step.name} is partitioned by {step.sql}; {rows:,} rows copied while writes went on")
    else:
        raise MigrationError(f"{step.migration}: a step of unknown kind {step.kind!r} is recorded in "
                             f"{STEPS_TABLE} (id {step.id}); this kit cannot run it")
    database.execute_sql(f"UPDATE {STEPS_TABLE} SET done_at = now() WHERE id = %s", (step.id,))
    say(f"{step.describe()} (done after its transaction)")


def _build_index(database: Database, what: str, step: Step) -> None:
    """CREATE INDEX CONCURRENTLY, after dropping the INVALID index a killed build left under its name."""
    row = database.execute_sql("SELECT x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                               "WHERE c.relname = %s", (step.name,)).fetchone()
    if row is not None and row[0]:
        return
    if row is not None:
        run_concurrently(database, what, f'DROP INDEX CONCURRENTLY IF EXISTS "{step.name}"')
    run_concurrently(database, what, step.sql, step.params or None)


def _backfill(database: Database, what: str, step: Step) -> int:
    """Run a batched UPDATE until it changes no row, each batch its own short transaction; the rows changed."""
    total = 0
    while True:
        changed = run_ddl(database, what, lambda: database.execute_sql(step.sql, step.params).rowcount)
        total += changed
        if not changed:
            return total
