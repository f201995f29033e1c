"""Peewee migrations -- 001_enable_vector.py.

pgvector: the `vector` and `halfvec` types, their operators and index methods. pgcrypto is not
needed: gen_random_uuid() is built into PostgreSQL 13+.
"""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator

with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext  # noqa: F401


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Enable the vector extension."""
    migrator.sql("CREATE EXTENSION IF NOT EXISTS vector")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the vector extension."""
    migrator.sql("DROP EXTENSION IF EXISTS vector")
