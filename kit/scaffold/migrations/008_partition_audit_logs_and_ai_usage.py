"""Peewee migrations -- 008_partition_audit_logs_and_ai_usage.py.

audit_logs and ai_usage grow without bound: make each range-partitioned by month on created_at
(`kit.partitions`), moving every row inside this migration's transaction. The primary key becomes
(id, created_at); indexes, foreign keys and the append-only triggers are re-created, and every
partition refuses UPDATE, DELETE and TRUNCATE as the table did. Partitions are made for every month
that has rows and three months ahead, plus a default partition; `kit maintain` keeps them ahead.
"""

import peewee as pw
from peewee_migrate import Migrator

from kit.partitions import partition_table, unpartition_table

TABLES = ("audit_logs", "ai_usage")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Partition audit_logs and ai_usage by month, moving their rows."""
    for table in TABLES:
        migrator.run(partition_table, database, table, "created_at")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to plain tables, moving their rows."""
    for table in TABLES:
        migrator.run(unpartition_table, database, table)
