"""Small helpers shared by the tests."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest


def with_dbname(url: str, name: str) -> str:
    """The same server URL with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def admin_execute(url: str, *statements: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def scalar(conn, sql: str, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def backend_pid(db) -> int:
    """The server process behind `db`'s connection in this thread (one statement on it)."""
    return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


def wait_until(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def ended(url: str, pid: int, timeout: float = 5.0) -> bool:
    """Wait until the server process `pid` has ended (a terminated backend exits a moment after it is told)."""
    return wait_until(lambda: not query(url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), timeout)


def query(url: str, sql: str, params=()):
    """Run `sql` on its own autocommit connection to `url`; the rows, or None."""
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def kit_replica(*args: str):
    """Run `kit db replica ARGS` against the embedded server (DATABASE_URL left out)."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_OWNER_URL")}
    return subprocess.run([sys.executable, "-m", "kit.cli", "db", "replica", *args], env=environ,
                          capture_output=True, text=True, timeout=300)


def _pooler() -> str | None:
    from kit.config import load_settings

    return load_settings().pooler


# For tests that watch or kill the server's own sessions behind a connection: through a transaction-pooling
# PgBouncer a client connection has no server session of its own (PgBouncer lends one per transaction).
observes_server_sessions = pytest.mark.skipif(
    bool(_pooler()), reason="watches the server session behind a connection, which PgBouncer lends per transaction")


SUITE_OWNER_URL: list[str] = []  # the owner's URL of the suite's database (set by conftest's test_db_url)
_owner: list = []


def owner_database():
    """The suite's database as its owner (`kit_owner`): DDL, upkeep, the migration history, as the commands run."""
    if not _owner:
        from kit.db import Database

        owner = Database()
        owner.configure(SUITE_OWNER_URL[0], owner=True)
        _owner.append(owner)
    return _owner[0]


@contextmanager
def as_owner(*models):
    """The block's statements of the kit's models and `models` go to the owner's connection; yields that database.

    It binds the models for the whole process (peewee's `bind_ctx`): enter it from one thread at a time,
    never from threads that overlap (the last to leave would leave the models bound to the owner).
    """
    from kit.models import ALL_MODELS

    owner = owner_database()
    with owner.bind_ctx([*ALL_MODELS, *models]):
        yield owner


def create_owned(*models) -> None:
    """Create the models' tables as the owner and grant the app role its access, as a migration would."""
    from kit.roles import model_access_statements

    with as_owner(*models) as owner:
        owner.create_tables(models)
        for model in models:
            for statement in model_access_statements(model):
                owner.execute_sql(statement)


def drop_owned(*models) -> None:
    """Drop tables made by `create_owned`."""
    with as_owner(*models) as owner:
        owner.drop_tables(models)


def owner_query(url: str, sql: str, params=()):
    """`query` as the owner of `url`'s database (kit_owner on the same server), for a test's own tables."""
    return query(url.replace("kit_app@", "kit_owner@", 1), sql, params)


def as_admin(url: str) -> str:
    """The same server and database as the superuser (the embedded server's, or PgBouncer's: a test's control)."""
    return url.replace("kit_app@", "postgres@", 1).replace("kit_owner@", "postgres@", 1)


class Writer(threading.Thread):
    """Records an audit row every 20 ms on a connection of its own; `longest` is the slowest insert."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(url, application_name="kit-test-writer")
        self.conn.autocommit = True
        self.stop, self.longest, self.written, self.errors = threading.Event(), 0.0, 0, []

    def run(self) -> None:
        with self.conn.cursor() as cursor:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    cursor.execute("INSERT INTO audit_logs (action) VALUES ('tick')")
                    self.written += 1
                except psycopg2.Error as exc:  # reported by the test
                    self.errors.append(exc)
                self.longest = max(self.longest, time.monotonic() - started)
                time.sleep(0.02)
        self.conn.close()

    def writes(self, rows: int = 5, timeout: float = 10.0) -> bool:
        """Wait until `rows` more rows are written than now: the writer is writing."""
        target = self.written + rows
        return wait_until(lambda: self.written >= target or bool(self.errors), timeout)


def limited_database(url: str, statement_timeout_ms: int, pool_max: int = 4):
    """A kit `Database` on `url` with its own statement time limit (close it with `close_all()`)."""
    from dataclasses import replace

    from kit.config import load_settings
    from kit.db import Database

    db = Database()
    db.configure(url, settings=replace(load_settings(), statement_timeout_ms=statement_timeout_ms,
                                       pool_max=pool_max, pool_min=0))
    return db


def migrate_up_to(db, last: str, scratch) -> None:
    """Apply the project's migrations up to and including `last` (`"007"`) to `db`, from a copy in `scratch`."""
    import shutil
    from pathlib import Path

    from kit import migrate

    early = Path(scratch) / f"migrations_to_{last}"
    early.mkdir()
    for path in sorted((Path(__file__).resolve().parent.parent / "migrations").glob("0*.py")):
        if path.name[:3] <= last:
            shutil.copy(path, early / path.name)
    migrate.apply(db, early, say=lambda _: None)


def table_rows(db, table: str) -> list[tuple]:
    """Every row of `table` by id: (id, created_at, the rest as JSON): what a rebuilt table must keep."""
    return db.execute_sql(f"SELECT id::text, created_at, to_jsonb(t) - 'id' - 'created_at' FROM {table} t "
                          "ORDER BY id").fetchall()
