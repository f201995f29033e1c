"""Test setup: a real PostgreSQL (DATABASE_URL, else the embedded server) and a database of the suite's own.

The suite creates `kit_test_<pid>_<random>` on that server (as the superuser, which does nothing else),
migrates it as the owner `kit_owner` with the project's migrations, points `kit.db.database` at it as
the run-time role `kit_app`, as an application runs, and drops it at the end, so a developer's seeded
data is never touched. What a test sets up beside the application (its own tables) it makes as the
owner (`helpers.owner_tables`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Every statement the cache serves is also rendered by peewee and compared (`kit.db.shapes`): the whole
# suite is the cache's test that it never says other than peewee would.
os.environ.setdefault("KIT_SHAPES_VERIFY", "1")

import helpers
import psycopg2
import pytest
from helpers import admin_execute, with_dbname

from kit import embedded, migrate, roles
from kit.config import load_settings
from kit.db import PooledDatabase, database, resolve_url
from kit.roles import ADMIN, APP, DOOR, OWNER

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"


@pytest.fixture(scope="session")
def admin_url() -> str:
    """A superuser's URL on the server under test: makes and drops the suite's databases, nothing else."""
    settings = load_settings()
    return os.environ.get("KIT_TEST_ADMIN_URL") or embedded.start(settings.data_dir, ADMIN)


@pytest.fixture(scope="session")
def server_url() -> str:
    """The run-time role's URL of the developer's database on the server under test (never written to)."""
    return resolve_url(load_settings(), APP)


@pytest.fixture(scope="session")
def door_server_url() -> str:
    """The door's URL (`kit_door`, for `all_tenants()`) of the developer's database on the server under test."""
    return resolve_url(load_settings(), DOOR)


@pytest.fixture(scope="session")
def owner_server_url() -> str:
    """The owner's URL of the developer's database on the server under test (never written to)."""
    return resolve_url(load_settings(), OWNER)


def make_database(admin_url: str, prefix: str) -> str:
    """A new database owned by kit_owner, with the kit's roles and pgvector (as the embedded server makes it)."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin_execute(admin_url, f'CREATE DATABASE "{name}" OWNER {OWNER}')
    roles.bootstrap(with_dbname(admin_url, name))
    return name


@pytest.fixture(scope="session")
def test_db_url(admin_url: str, server_url: str, owner_server_url: str, door_server_url: str):
    """A fresh database for this test run, migrated by the owner, used as the app role; dropped afterwards."""
    name = make_database(admin_url, "kit_test")
    url, owner = with_dbname(server_url, name), with_dbname(owner_server_url, name)
    helpers.SUITE_OWNER_URL[:] = [owner]
    try:
        database.configure(owner, owner=True)
        migrate.apply(database, MIGRATIONS, say=lambda _: None)  # the schema, built the way operators build it
        database.close_all()
        door = with_dbname(door_server_url, name)
        database.configure(url, door_url=door)  # the suite runs as the application does: kit_app
        yield url
    finally:
        database.close_all()
        for owner_database in helpers._owner:
            owner_database.close_all()
        admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def owner_url(test_db_url: str, owner_server_url: str) -> str:
    """The owner's URL of the suite's database (DDL, and what a test sets up beside the application)."""
    return with_dbname(owner_server_url, urlsplit(test_db_url).path.lstrip("/"))


@pytest.fixture(scope="session")
def door_url(test_db_url: str, door_server_url: str) -> str:
    """The door's URL of the suite's database (`kit_door`: what `all_tenants()` connects as)."""
    return with_dbname(door_server_url, urlsplit(test_db_url).path.lstrip("/"))


@pytest.fixture(scope="session")
def test_admin_url(test_db_url: str, admin_url: str) -> str:
    """The superuser's URL of the suite's database: for watching and killing sessions from outside."""
    return with_dbname(admin_url, urlsplit(test_db_url).path.lstrip("/"))


def pytest_collection_modifyitems(config, items) -> None:
    """Tests under tests/unit/ form the unit tier (`pytest -m unit`): pure rules, no server.

    Through PgBouncer (`tests/through-pgbouncer`, DATABASE_POOLER=pgbouncer) the unit tier and the
    tests marked `once` are left out: what they try never goes through a pooler (pure rules,
    packaging, a loader's memory), and the direct run has run them.
    """
    for item in items:
        if "unit" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.unit)
    if os.environ.get("DATABASE_POOLER") == "pgbouncer":
        once = [item for item in items if item.get_closest_marker("unit") or item.get_closest_marker("once")]
        if once:
            config.hook.pytest_deselected(items=once)
            items[:] = [item for item in items if item not in once]


@pytest.fixture(autouse=True)
def _use_test_database(request):
    if request.node.get_closest_marker("unit"):
        yield  # the unit tier needs no server
        return
    request.getfixturevalue("test_db_url")
    yield
    if not database.is_closed() and not database.in_transaction():
        database.close()


@pytest.fixture(scope="module", autouse=True)
def _models_bound_back():
    """After each module, the kit's models are bound to `kit.db.database` again, or the module fails to say so.

    A module may bind them elsewhere for its own tests (`bind_ctx` around a fixture's yield); left bound
    (bind_ctx entered from overlapping threads restores the wrong one), later modules would run on
    that database, the owner's perhaps, whose reads pass row-level security.
    """
    yield
    from kit.models import ALL_MODELS

    bound = sorted(m.__name__ for m in ALL_MODELS if m._meta._database is not database)
    if bound:
        for model in ALL_MODELS:
            model.bind(database, bind_refs=False, bind_backrefs=False)
        pytest.fail(f"the kit's models were left bound to another database by this module: {bound[:5]}")


@pytest.fixture
def monitor(test_admin_url: str):
    """A plain psycopg2 connection (the superuser's) for looking at the server from outside the pool."""
    conn = psycopg2.connect(test_admin_url, application_name="kit-test-monitor")
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


def _owner_database(admin_url: str, owner_server_url: str, migrated: bool):
    """A database of its own and a kit Database on it as the owner; dropped when the generator ends."""
    from kit.db import Database
    from kit.testing import template

    # Cloned from the template the kit's pytest plugin makes, migrated once. Through a pooler, the template
    # is migrated on the server directly (the owner, by the admin's socket): a pooler would keep server
    # connections to it, and a database in use cannot be cloned. The clone is then used through the pooler.
    builder = owner_server_url
    if os.environ.get("DATABASE_POOLER") == "pgbouncer":
        parts = urlsplit(admin_url)
        builder = None if parts.password else urlunsplit(parts._replace(netloc=f"{OWNER}@{parts.netloc.split('@')[-1]}"))
    if migrated and builder:
        name = template.clone(admin_url, template.ensure_template(admin_url, builder, MIGRATIONS), "suite")
    else:
        name = make_database(admin_url, "kit_scratch")
    db = Database()
    url = with_dbname(owner_server_url, name)
    db.configure(url, owner=True)
    db.scratch_url = url
    try:
        if migrated and not builder:  # a password-protected admin URL: the owner's is not known, migrated here
            migrate.apply(db, MIGRATIONS, say=lambda _: None)
        yield db
    finally:
        db.close_all()
        admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_database(admin_url: str, owner_server_url: str):
    """A database of its own with the project's migrations applied, as the owner (a clone of the migrated template)."""
    yield from _owner_database(admin_url, owner_server_url, migrated=True)


@pytest.fixture
def fresh_database(admin_url: str, owner_server_url: str):
    """An empty database of its own (pgvector, no tables) and a kit Database on it as the owner, as migrations run."""
    yield from _owner_database(admin_url, owner_server_url, migrated=False)
