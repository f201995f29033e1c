"""What has been applied: peewee-migrate's `migratehistory` (name, date), and the kit's checksums beside it.

`kit_migration_checksums` holds the sha256 of each migration file when it was applied, written in the
migration's own transaction by `kit migrate` and by plain `pw_migrate` (through `migrations/conf.py`).
Migrations applied by some other means have no row until a `kit migrate` adopts them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import Database

HISTORY_TABLE = "migratehistory"
CHECKSUM_TABLE = "kit_migration_checksums"
STEPS_TABLE = "kit_migration_steps"  # kit.migrate.steps: what runs after a migration's transaction


@dataclass(frozen=True)
class Applied:
    """One applied migration as the database remembers it."""

    name: str
    migrated_at: dt.datetime
    checksum: str | None


def ensure_tables(database: Database) -> None:
    """Create the history tables if they are missing (as peewee-migrate and the kit would)."""
    database.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL,"
        " migrated_at TIMESTAMP NOT NULL)"
    )
    database.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL,"
        " recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )


def applied(database: Database) -> list[Applied]:
    """Applied migrations in the order they were applied, with their recorded checksums."""
    cursor = database.execute_sql(
        f"SELECT h.name, h.migrated_at, c.sha256 FROM {HISTORY_TABLE} h"
        f" LEFT JOIN {CHECKSUM_TABLE} c ON c.name = h.name ORDER BY h.id"
    )
    return [Applied(*row) for row in cursor.fetchall()]


def record_checksum(database: Database, name: str, checksum: str) -> None:
    """Remember the checksum of an applied migration."""
    database.execute_sql(
        f"INSERT INTO {CHECKSUM_TABLE} (name, sha256) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, recorded_at = now()",
        (name, checksum),
    )


def record_missing_checksums(database: Database, checksums: dict[str, str]) -> list[str]:
    """Record the checksum of every applied migration that has none and a file in `checksums`; return their names."""
    adopted = [e.name for e in applied(database) if e.checksum is None and e.name in checksums]
    for name in adopted:
        record_checksum(database, name, checksums[name])
    return adopted


def record_applied(database: Database, name: str, checksum: str) -> None:
    """Record a migration as applied (history row and checksum) without running it."""
    database.execute_sql(
        f"INSERT INTO {HISTORY_TABLE} (name, migrated_at) VALUES (%s, now() AT TIME ZONE 'utc')", (name,)
    )
    record_checksum(database, name, checksum)


def forget(database: Database, name: str) -> bool:
    """Remove a migration's history row and checksum; False if it was not recorded."""
    cursor = database.execute_sql(f"DELETE FROM {HISTORY_TABLE} WHERE name = %s", (name,))
    database.execute_sql(f"DELETE FROM {CHECKSUM_TABLE} WHERE name = %s", (name,))
    return cursor.rowcount > 0
