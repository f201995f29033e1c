"""The test databases: one template per set of migrations, migrated once, and a clone of it per run.

A template is named by a checksum of the migration files (`kit_tpl_<checksum>`): a run whose
migrations are the ones a template was made from clones it (`CREATE DATABASE ... TEMPLATE`, a file
copy on the server: well under a second), and a change to any migration makes a new one. Making a
template is serialized across processes (pytest-xdist workers, two runs at once) by an advisory
lock on the server, and published by a rename only once migrated, so no run ever clones a template
half made. Making one drops the templates of other sets of migrations no one is using (an old
branch's: a later run on it makes its template again). Each run (each xdist worker) gets
`kit_test_<worker>_<pid>_<random>`, dropped at its end.

What needs a superuser (creating and dropping databases, the kit's roles) goes through the admin
URL: KIT_TEST_ADMIN_URL, else the embedded server's superuser. The migrations run as the owner;
the tests connect as the application's role. A clone gets the kit's roles' grants on the database
again (a database's own privileges are not copied from its template), so it is as production has it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kit import roles
from kit.errors import ConfigError

TEMPLATE_PREFIX = "kit_tpl_"
CLONE_PREFIX = "kit_test_"
_LOCK = 0x6B69745F74706C  # "kit_tpl": one template made at a time on a server


def with_dbname(url: str, name: str) -> str:
    """The same server URL with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def checksum(directory: Path) -> str:
    """A checksum of the migration files in `directory` (names and contents, in order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.py")):
        if path.name == "conf.py":
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def migrate_as_owner(owner_url: str, directory: Path) -> None:
    """Apply `directory`'s migrations to the database at `owner_url`, as the owner (how a template is made)."""
    from kit import migrate
    from kit.db import Database

    owner = Database()
    owner.configure(owner_url, owner=True)
    try:
        migrate.apply(owner, directory, say=lambda _: None)
    finally:
        owner.close_all()


def _admin(url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url, application_name="kit-test-databases")
    conn.autocommit = True
    return conn


def _exists(cur: Any, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


def ensure_template(admin_url: str, owner_url: str, directory: Path,
                    migrate: Callable[[str, Path], None] = migrate_as_owner) -> str:
    """The template of `directory`'s migrations, made now (by `migrate(owner_url_of_it, directory)`) if missing."""
    name = TEMPLATE_PREFIX + checksum(directory)
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            if _exists(cur, name):
                return name
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
            try:
                if _exists(cur, name):  # made by another process while this one waited
                    return name
                building = f"{name}_{os.getpid()}_building"
                cur.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{building}" OWNER {roles.OWNER}')
                roles.bootstrap(with_dbname(admin_url, building))
                migrate(with_dbname(owner_url, building), directory)
                cur.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')  # published whole, or not at all
                _prune_templates(cur, keep=name)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    finally:
        conn.close()
    return name


def _prune_templates(cur: Any, keep: str) -> None:
    """Drop the templates of other sets of migrations, and builds a killed run left, that no one is using.

    Called under the template lock, so no build is under way; a template someone is connected to (a
    clone being copied from it) is kept, for a later run to drop.
    """
    import psycopg2

    cur.execute("SELECT datname FROM pg_database d WHERE starts_with(datname, %s) AND datname <> %s "
                "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",  # the server would
                (TEMPLATE_PREFIX, keep))  # wait 5 s for its users before refusing: one in use is skipped at once
    for (old,) in cur.fetchall():
        try:
            cur.execute(f'DROP DATABASE IF EXISTS "{old}"')  # no FORCE: one in use stays
        except psycopg2.errors.ObjectInUse:
            pass


def clone(admin_url: str, template: str, worker: str = "main") -> str:
    """A new database copied from `template` for one run (or one xdist worker); its name."""
    name = f"{CLONE_PREFIX}{worker}_{os.getpid()}_{secrets.token_hex(3)}"
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER {roles.OWNER}')
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))  # the roles are the server's: one bootstrap at a time
            try:
                roles.bootstrap(with_dbname(admin_url, name))  # a database's own privileges are not copied
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    finally:
        conn.close()
    return name


def drop(admin_url: str, name: str) -> None:
    """Drop a run's database (its connections closed by force)."""
    if not name.startswith((CLONE_PREFIX, TEMPLATE_PREFIX)):
        raise ConfigError(f"{name} is not a test database of the kit; not dropped")
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()
