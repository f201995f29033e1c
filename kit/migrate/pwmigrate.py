"""The adapter `migrations/conf.py` hands to plain `pw_migrate`: the kit's database, locked, recording checksums.

`pw_migrate migrate` then behaves as `kit migrate` does where it matters: the run holds the migration
lock (`kit.migrate.lock`, session scope, taken before peewee-migrate reads the history), so runs of
either command at once apply each migration once; and each migration's transaction records the
sha256 of its file beside its history row, as `kit migrate` does. Behind a transaction-pooling
PgBouncer (`DATABASE_POOLER=pgbouncer`) the run's lock is `hold_lock`'s instead, and each migration's
transaction first checks that its holder is still there. Each migration waits for locks briefly and
is retried after a lock timeout (`kit.ddl`), as under `kit migrate`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click
import peewee
from peewee import DatabaseProxy
from peewee_migrate.logs import logger as peewee_migrate_logger
from peewee_migrate.router import BaseRouter, Router

from kit.config import mask_password
from kit.db import database
from kit.ddl import limit_lock_waits, run_ddl
from kit.errors import KitError, describe
from kit.migrate import history
from kit.migrate.autogen import register
from kit.migrate.executor import require_extension
from kit.migrate.loader import default_directory, load
from kit.migrate.lock import LOCK_KEY, check_held, hold_lock, lock_session
from kit.migrate.steps import applying, forget_steps, run_steps
from kit.models import project_models
from kit.project import find_root
from kit.telemetry import operation


class RecordingDatabase(DatabaseProxy):
    """The kit's database as peewee-migrate sees it: each transaction also records missing checksums."""

    __slots__ = ("obj", "_callbacks", "_Model", "directory", "holder")

    def __init__(self, target: Any, directory: Path, holder: Any = None) -> None:
        super().__init__()
        self.initialize(target)
        self.directory = directory
        self.holder = holder  # behind a pooler: the connection whose transaction holds the migration lock

    @contextlib.contextmanager
    def transaction(self, *args: Any, **kwargs: Any) -> Iterator[None]:  # type: ignore[override]  # used as peewee's is
        """peewee-migrate's transaction around one migration, which also records its checksum before commit."""
        with self.obj.transaction(*args, **kwargs):
            if self.holder is not None:
                check_held(self.holder, "the migration lock")
            limit_lock_waits(self.obj)  # each migration's lock waits are brief; `_retry_lock_timeouts` retries
            yield
            history.record_missing_checksums(self.obj, {f.name: f.checksum for f in load(self.directory)})


def _directory() -> Path:
    """The migrations directory pw_migrate was given (`--directory`), else the kit's default."""
    context = click.get_current_context(silent=True)
    given = context.params.get("directory") if context is not None else None
    return Path(given).absolute() if given else default_directory()


def _scan_project_models() -> None:
    """Make `pw_migrate create --auto` (no `--auto-source`) use the project's models (`[tool.kit] models`)."""
    original = BaseRouter.create
    if getattr(original, "kit_models", False):
        return

    def create(self: BaseRouter, name: str = "auto", *, auto: Any = False) -> str | None:
        made = original(self, name, auto=project_models() if auto is True else auto)
        if made:
            _report_created(cast(Router, self), made)
        return made

    create.kit_models = True  # type: ignore[attr-defined]
    BaseRouter.create = create  # type: ignore[method-assign]


def _report_created(router: Router, name: str) -> None:
    """Say which file `pw_migrate create` wrote and what `kit migrate lint` finds in it (on stderr)."""
    from kit.migrate.lint import check, has_rows, index_table_in, volatile_in
    from kit.migrate.render import render

    say = lambda line: print(f"kit: {line}", file=sys.stderr)  # noqa: E731
    say(f"wrote {Path(router.migrate_dir) / name}.py")
    try:
        findings = check(name, render(router, name), has_rows(database), volatile_in(database),
                         index_table_in(database))
    except Exception as exc:  # noqa: BLE001 - the file is written either way; say why it was not checked
        say(f"not linted ({describe(exc)})")
        return
    for finding in findings:
        say(f"lint: {finding.describe()}")
    if not findings:
        say("lint: nothing that stalls traffic on a table with rows")


def _retry_lock_timeouts() -> None:
    """Make each migration pw_migrate applies or rolls back retry after a lock timeout, as `kit migrate` does."""
    original = BaseRouter.run_one
    if getattr(original, "kit_retries", False):
        return

    def run_one(self: BaseRouter, name: str, migrator: Any, *, fake: bool = True, downgrade: bool = False,
                force: bool = False) -> str:
        if fake or not isinstance(self.database, RecordingDatabase):
            return original(self, name, migrator, fake=fake, downgrade=downgrade, force=force)

        def rebuild() -> None:  # the failed attempt changed peewee-migrate's picture of the schema: redo it
            fresh = self.migrator_class(self.database)
            for done in self.done:
                original(self, done, fresh)
            migrator.orm, migrator.__ops__ = fresh.orm, []

        def attempt() -> str:
            with applying(name):
                return original(self, name, migrator, fake=False, downgrade=downgrade, force=force)

        say = lambda line: print(f"kit: {line}", file=sys.stderr)  # noqa: E731
        with operation("kit.migrate.rollback" if downgrade else "kit.migrate.apply", **{"kit.migration.name": name}):
            done = run_ddl(self.database.obj, f"{'rolling back' if downgrade else 'applying'} {name}", attempt,
                           transaction=False, on_retry=rebuild, say=say)
        if downgrade:
            forget_steps(self.database.obj, name)
        else:
            run_steps(self.database.obj, say)  # the run holds the migration lock throughout
        return done

    run_one.kit_retries = True  # type: ignore[attr-defined]
    BaseRouter.run_one = run_one  # type: ignore[method-assign]


class _OneLine(logging.Filter):
    """peewee-migrate logs a failed migration with its traceback: keep the sentence and the error's first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fold the exception into the message, without the traceback."""
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            first = describe(error)
            record.msg = f"{record.getMessage()}: {first}; its transaction was rolled back"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _one_line_errors() -> None:
    """Known failures of a `pw_migrate` run end as one sentence on stderr and exit 1, not a traceback."""
    logger = peewee_migrate_logger  # a filter on a parent logger would not see its records
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
    default = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        if isinstance(error, KitError | peewee.DatabaseError):
            first = describe(error)
            print(f"pw_migrate: error: {mask_password(first)}", file=sys.stderr)
            return
        default(kind, error, trace)

    sys.excepthook = hook


_installed = False


def install_hooks() -> None:
    """Teach peewee-migrate the kit's ways: its fields and indexes, retried lock waits, one-line errors."""
    global _installed
    if _installed:  # once a process: each hook wraps peewee-migrate's own function
        return
    _installed = True
    register()
    _scan_project_models()
    _retry_lock_timeouts()
    _one_line_errors()


def database_for_pw_migrate() -> RecordingDatabase:
    """Connect, check pgvector, take the migration lock for this run and return the database pw_migrate uses."""
    install_hooks()
    root = find_root(_directory())  # `--directory` names the project, wherever pw_migrate runs from
    if root is not None:
        os.environ.setdefault("KIT_PROJECT_ROOT", str(root))
    database.configure_owner()  # migrations run as the owner (DATABASE_OWNER_URL), never as the app role
    database.connect(reuse_if_open=True)  # connect now, so a bad setting is one sentence, not a traceback
    require_extension(database)
    say = lambda line: print(f"kit: {line}", file=sys.stderr)  # noqa: E731
    holder = None
    if database.pooler:  # a session lock means nothing behind transaction pooling
        global _holder
        holder = _holder = hold_lock(database, LOCK_KEY, "another migration run", say)  # until the process ends
    else:
        lock_session(database, say=say)
    with database.atomic():
        history.ensure_tables(database)
    run_steps(database, say)  # a run killed after a migration committed left its steps to do
    return RecordingDatabase(database, _directory(), holder)


_holder: Any = None  # the lock's connection, kept for the process's life (plain pw_migrate has no end hook)
