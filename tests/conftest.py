"""Test setup: a real PostgreSQL (DATABASE_URL, else the embedded server) and a database of the suite's own.

The suite creates `kit_test_<pid>_<random>` on that server, migrates it with the project's migrations,
points `kit.db.database` at it, and drops it at the end, so a developer's seeded data is never touched.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psycopg2
import pytest
from helpers import admin_execute, with_dbname

from kit import embedded, migrate
from kit.config import load_settings
from kit.db import PooledDatabase, database

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"


@pytest.fixture(scope="session")
def server_url() -> str:
    """URL of the developer's database on the server under test (never written to by the suite)."""
    settings = load_settings()
    return settings.database_url or embedded.start(settings.data_dir)


@pytest.fixture(scope="session")
def test_db_url(server_url: str):
    """A fresh database for this test run, with pgvector installed, dropped afterwards."""
    name = f"kit_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin_execute(server_url, f'CREATE DATABASE "{name}"')
    url = with_dbname(server_url, name)
    try:
        database.configure(url)
        migrate.apply(database, MIGRATIONS, say=lambda _: None)  # the schema, built the way operators build it
        yield url
    finally:
        database.close_all()
        admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _use_test_database(test_db_url: str):
    yield
    if not database.is_closed() and not database.in_transaction():
        database.close()


@pytest.fixture
def monitor(test_db_url: str):
    """A plain psycopg2 connection for looking at the server from outside the pool."""
    conn = psycopg2.connect(test_db_url, application_name="kit-test-monitor")
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def make_pool(test_db_url):
    """Build PooledDatabase objects (or a subclass, `cls=`) on the test database, each with its own application_name."""
    made = []

    def make(*args, cls=PooledDatabase, **settings):
        name = f"kit-pool-test-{secrets.token_hex(4)}"
        pool = cls(test_db_url, *args, application_name=name, **settings)
        pool.app_name = name
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close_all()


@pytest.fixture
def fresh_database(server_url: str):
    """An empty database of its own (no extension, no tables) and a kit Database pointed at it."""
    from kit.db import Database

    name = f"kit_scratch_{os.getpid()}_{secrets.token_hex(3)}"
    admin_execute(server_url, f'CREATE DATABASE "{name}"')
    db = Database()
    url = with_dbname(server_url, name)
    db.configure(url)
    db.scratch_url = url
    try:
        yield db
    finally:
        db.close_all()
        admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
