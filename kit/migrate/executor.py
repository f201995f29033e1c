"""Applies migrations safely, reports their state, verifies them and lets an operator reconcile history.

- `apply`: pending migrations, one transaction each (schema change, history row and checksum
  together), each under the migration lock (`kit.migrate.lock`, transaction-scoped) and re-checked
  against the history once the lock is held, so concurrent runs apply each migration once. A
  connection lost mid-run (a killed backend, a crashed server) is one sentence.
- `status`: applied, pending, edited after apply, applied but missing, unchecked (recorded without a
  checksum, e.g. by an older `pw_migrate` setup; adopted by the next `apply`).
- `verify`: every problem with the files, the history and the live schema, as sentences.
- `resolve`: record a migration applied by hand (after checking the schema has what it creates), or
  forget one that was rolled back by hand.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from peewee import Database
from peewee_migrate import Migrator
from peewee_migrate.router import Router

from kit.ddl import limit_lock_waits, run_ddl
from kit.errors import (
    DatabaseUnavailable,
    KitError,
    MigrationError,
    describe,
    sqlstate,
)
from kit.migrate import history, schema
from kit.migrate.loader import MigrationFile, load
from kit.migrate.lock import LOCK_KEY, hold_lock, locked
from kit.migrate.steps import applying, forget_steps, run_steps, unfinished
from kit.models import project_models
from kit.roles import tenant_policy_problems
from kit.telemetry import operation

IGNORED_MODELS = ["basemodel", "timestampedmodel", "vectormodel"]  # abstract bases in kit.models, not tables



@dataclass(frozen=True)
class State:
    """One migration's state: applied, pending, edited, missing or unchecked."""

    name: str
    state: str
    detail: str = ""


def require_primary(database: Database) -> None:
    """Stop with a sentence when the server is a read-only replica: migrations change the primary."""
    if database.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]:
        raise MigrationError(f"the database at {database.database} is a read-only replica (in recovery): "
                             "migrations run on the primary; point DATABASE_OWNER_URL at the primary; nothing was done")


def require_extension(database: Database, name: str = "vector") -> None:
    """Stop with a sentence when the server cannot take migrations: a replica, or no `name` (the kit needs pgvector)."""
    require_primary(database)
    found = database.execute_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %s)", (name,)
    ).fetchone()[0]
    if not found:
        raise MigrationError(
            f"this PostgreSQL server has no {name} extension to enable: install pgvector on it, or use the "
            "pgvector/pgvector:pg16 image (docker compose up -d), or unset DATABASE_URL for the embedded server"
        )


def router_for(database: Database, directory: Path) -> Router:
    """peewee-migrate's router for `directory` on `database` (MigrationError when there is no such directory)."""
    if not Path(directory).is_dir():
        raise MigrationError(
            f"no migrations directory at {directory}; run from the project root or set KIT_MIGRATIONS_DIR"
        )
    return Router(database, migrate_dir=directory, ignore=IGNORED_MODELS)




@contextlib.contextmanager
def _reported(database: Database, doing: str) -> Iterator[None]:
    """Turn a lost connection while `doing` into one MigrationError sentence."""
    try:
        yield
    except (peewee.DatabaseError, peewee.InterfaceError) as exc:
        if isinstance(exc, KitError) and not isinstance(exc, DatabaseUnavailable) or database.is_connection_usable():
            raise  # a lost connection (DatabaseUnavailable, SessionLost) is said in the migration's words below
        raise MigrationError(
            f"lost the connection to the database while {doing} ({describe(exc)}); the server rolled back the "
            "transaction in progress, so nothing of it remains: run the command again once the server is back"
        ) from exc


def status(database: Database, directory: Path) -> list[State]:
    """Every migration's state, applied ones first in the order they were applied."""
    history.ensure_tables(database)
    files = {f.name: f for f in load(directory)}
    done = history.applied(database)
    states = []
    for entry in done:
        file = files.get(entry.name)
        if file is None:
            states.append(State(entry.name, "missing", "applied, but its file is gone"))
        elif entry.checksum is None:
            states.append(State(entry.name, "unchecked", "applied without a checksum"))
        elif entry.checksum != file.checksum:
            states.append(State(entry.name, "edited", "the file changed after it was applied"))
        else:
            states.append(State(entry.name, "applied", f"{entry.migrated_at:%Y-%m-%d %H:%M:%S}"))
    applied_names = {e.name for e in done}
    last_applied = max(applied_names, default="")
    for name in files:
        if name not in applied_names:
            detail = f"sorts before {last_applied}, which is already applied" if name < last_applied else ""
            states.append(State(name, "pending", detail))
    return states


def verify(database: Database, directory: Path, models: list[Any] | None = None) -> list[str]:
    """Every problem with the migrations and the live schema, as sentences saying what and how to fix."""
    problems = []
    states = status(database, directory)
    for item in states:
        if item.state == "edited":
            problems.append(f"{item.name} was edited after it was applied: restore the file as applied and "
                            "put the change in a new migration")
        elif item.state == "missing":
            problems.append(f"{item.name} is applied but its file is missing: restore it from version control, "
                            f"or run `kit migrate resolve {item.name} --rolled-back` if it was undone by hand")
        elif item.state == "pending" and item.detail:
            problems.append(f"{item.name} is out of order: it {item.detail}; rename it to sort after the "
                            "applied migrations")
    pending = [s.name for s in states if s.state == "pending"]
    steps = unfinished(database)
    if pending:
        problems.append(f"{len(pending)} migration(s) pending ({', '.join(pending)}): run `kit migrate`")
    elif steps:
        problems.append(f"{len(steps)} step(s) after a migration's transaction not done "
                        f"(first: {steps[0].describe()}): run `kit migrate` to finish them")
    else:
        if models is None:
            models = project_models()
        for drift in schema.compare(database, models):
            problems.append(f"schema drift: {drift}")
        problems += tenant_policy_problems(lambda sql, params: database.execute_sql(sql, params).fetchone(), models)
    return problems


def apply(database: Database, directory: Path, say: Callable[[str], None] = print) -> list[str]:
    """Apply pending migrations, each in its own transaction under the migration lock; return the names applied."""
    with database.connection_context(), _reported(database, "checking the migration history"):
        require_extension(database)
        files = {f.name: f for f in load(directory)}
        with locked(database, say):
            history.ensure_tables(database)
            blocking = [s for s in status(database, directory)
                        if s.state in ("edited", "missing") or (s.state == "pending" and s.detail)]
            if blocking:
                reasons = "; ".join(f"{s.name}: {s.state}{' (' + s.detail + ')' if s.detail else ''}"
                                    for s in blocking)
                raise MigrationError(f"refusing to migrate: {reasons}. Run `kit migrate verify` for how to fix each.")
            for name in history.record_missing_checksums(database, {n: f.checksum for n, f in files.items()}):
                say(f"adopted {name} (applied without a checksum): checksum recorded")
        _finish_steps(database, say)  # a run killed after a migration committed left its steps to do
        router = router_for(database, directory)
        applied = []
        for name in router.diff:
            if _apply_one(database, router, files[name], say):
                applied.append(name)
                _finish_steps(database, say)
        return applied


def _finish_steps(database: Database, say: Callable[[str], None]) -> None:
    """Run the steps after the migrations' transactions not done yet, under the migration lock."""
    if not unfinished(database):
        return
    holder = hold_lock(database, LOCK_KEY, "another migration run", say)
    try:
        run_steps(database, say)
    finally:
        holder.close()


def _apply_one(database: Database, router: Router, file: MigrationFile, say: Callable[[str], None]) -> bool:
    """Apply one migration in its own locked transaction; False when another run applied it meanwhile.

    Its lock waits are brief and retried (`kit.ddl.run_ddl`): a retry starts the transaction again
    from the migration lock, with peewee-migrate's picture of the schema rebuilt from the history.
    """
    name = file.name

    def attempt() -> bool:
        with locked(database, say):
            if name in {entry.name for entry in history.applied(database)}:
                router.run_one(name, router.migrator, fake=True)  # follow the other run's schema
                return False
            limit_lock_waits(database)  # after the migration lock: another run may hold that one long
            with applying(name):  # the steps it records after its transaction are its own
                router.run_one(name, router.migrator, fake=False)
            history.record_checksum(database, name, file.checksum)
        return True

    with _reported(database, f"applying {name}"), operation("kit.migrate.apply", **{"kit.migration.name": name}):
        try:
            applied = run_ddl(database, f"applying {name}", attempt, transaction=False, say=say,
                              on_retry=lambda: router.__dict__.pop("migrator", None))
        except peewee.DatabaseError as exc:
            if isinstance(exc, KitError) or not database.is_connection_usable():
                raise
            first = describe(exc)
            hint = ""
            if 'extension "vector"' in first:
                hint = " (this server lacks pgvector: install it, or use the pgvector/pgvector:pg16 image)"
            raise MigrationError(f"{name} failed and was rolled back, nothing of it remains: {first}{hint}") from exc
    if applied:
        say(f"applied {name}")
    return applied


def rollback(database: Database, directory: Path, count: int = 1, say: Callable[[str], None] = print) -> list[str]:
    """Roll back the last `count` applied migrations, newest first, each in its own locked transaction."""
    with database.connection_context(), _reported(database, "rolling back"):
        require_primary(database)
        with locked(database, say):
            history.ensure_tables(database)
        router = router_for(database, directory)
        undone: list[str] = []
        current: list[str] = []  # the migration being rolled back, for the sentence if it fails

        def attempt() -> str | None:
            with locked(database, say):
                done = router.done
                if not done:
                    return None
                current[:] = [done[-1]]
                limit_lock_waits(database)
                router.rollback()
                database.execute_sql(f"DELETE FROM {history.CHECKSUM_TABLE} WHERE name = %s", (done[-1],))
                forget_steps(database, done[-1])
                return done[-1]

        for _ in range(count):
            try:
                name = run_ddl(database, "rolling back", attempt, transaction=False, say=say,
                               on_retry=lambda: router.__dict__.pop("migrator", None))
            except peewee.DatabaseError as exc:
                if isinstance(exc, KitError) or not database.is_connection_usable():
                    raise  # the kit's own sentence, or a lost connection (`_reported`)
                raise _rollback_refused(current[0] if current else "a migration", undone, exc) from None
            if name is None:
                break
            say(f"rolled back {name}")
            undone.append(name)
        return undone


def _rollback_refused(name: str, undone: list[str], exc: BaseException) -> MigrationError:
    """A migration's rollback the database refused, in one sentence: what was undone, what was not, and why."""
    before = f"rolled back {', '.join(undone)}; " if undone else ""
    need = (" needs a privilege the owner does not have (what an admin installed, such as an extension, is the "
            "admin's to drop)" if sqlstate(exc) == "42501" else " failed")
    return MigrationError(f"{before}rolling back {name}{need}: {describe(exc)}; its transaction was rolled back, "
                          f"so {name} is still applied and nothing of its rollback remains")


# -- operator recovery ------------------------------------------------------------------------------

_SQL_OBJECTS = [
    (re.compile(r"CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(\w+)", re.I),
     "extension", "SELECT 1 FROM pg_extension WHERE extname = %s"),
    (re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+\"?(\w+)", re.I),
     "function", "SELECT 1 FROM pg_proc WHERE proname = %s"),
    (re.compile(r"CREATE\s+TRIGGER\s+\"?(\w+)", re.I),
     "trigger", "SELECT 1 FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal"),
    (re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(\w+)", re.I),
     "index", "SELECT 1 FROM pg_class WHERE relname = %s AND relkind = 'i'"),
]


def _expected_by(router: Router, file: MigrationFile) -> tuple[list[Any], list[str]]:
    """The models a migration leaves behind (state after it) that it touched, and its raw SQL."""
    before = Migrator(router.database)
    names = [m.name for m in load(router.migrate_dir)]
    for name in names[: names.index(file.name)]:
        router.run_one(name, before, fake=True)
    snapshot = {m._meta.table_name: _signature(m) for m in before.orm}
    migrate, _ = router.read(file.name)
    migrate(before, router.database, fake=False)  # queues operations; nothing runs
    statements = []
    for op in before.__ops__:
        args = getattr(op, "args", ())
        if args and isinstance(args[0], str):
            statements.append(args[0])
        elif hasattr(op, "sql") and isinstance(getattr(op, "sql", None), str):
            statements.append(op.sql)
    before.__ops__ = []
    touched = [m for m in before.orm if snapshot.get(m._meta.table_name) != _signature(m)]
    return touched, statements


def _signature(model: Any) -> tuple:
    fields = tuple((f.column_name, type(f).__name__, f.null) for f in model._meta.sorted_fields)
    indexes = tuple(sorted(i._name for i in model._meta.fields_to_index()))
    return fields, indexes


def by_prefix(name: str, known: list[str]) -> str:
    """The migration `name` stands for: itself, or the one name it starts (`005` for `005_add_x`)."""
    if name in known:
        return name
    matches = [k for k in known if k.startswith(name)]
    if len(matches) > 1:
        raise MigrationError(f"{name} could be any of {', '.join(matches)}: give more of the name")
    return matches[0] if matches else name


def resolve(database: Database, directory: Path, name: str, *, applied: bool) -> str:
    """Mark `name` applied (after checking the schema already has what it creates) or rolled back."""
    require_primary(database)
    history.ensure_tables(database)
    files = {f.name: f for f in load(directory)}
    recorded = {e.name for e in history.applied(database)}
    name = by_prefix(name, sorted(set(files) | recorded))
    if applied:
        if name not in files:
            known = ", ".join(files) or "none"
            raise MigrationError(f"no migration named {name} in {directory} (known: {known})")
        already = MigrationError(f"{name} is already recorded as applied")
        if name in recorded:
            raise already
        router = router_for(database, directory)
        touched, statements = _expected_by(router, files[name])
        missing = schema.compare(database, touched, report_extra=False)
        for statement in statements:
            for pattern, kind, probe in _SQL_OBJECTS:
                for object_name in pattern.findall(statement):
                    if database.execute_sql(probe, (object_name,)).fetchone() is None:
                        missing.append(f"{kind} {object_name} does not exist")
        if missing:
            raise MigrationError(
                f"refusing to record {name} as applied; the database lacks what it creates: " + "; ".join(missing)
            )
        with locked(database, lambda _: None):
            if name in {e.name for e in history.applied(database)}:
                raise already
            history.record_applied(database, name, files[name].checksum)
        return f"recorded {name} as applied (its tables, columns, indexes and objects are present)"
    if name not in recorded:
        raise MigrationError(f"{name} is not recorded as applied; nothing to resolve")
    with locked(database, lambda _: None):
        history.forget(database, name)
    return f"forgot {name}: it is pending again"
