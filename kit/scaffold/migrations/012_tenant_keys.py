"""Peewee migrations -- 012_tenant_keys.py.

Every table of an organization's rows is keyed by `(organization_id, id)`, and its other unique keys
and its foreign keys to another such table go through `organization_id` too: what Citus needs to
keep each organization's rows, and the keys between them, within one shard (docs/scaling.md). On one
server nothing changes for the code: ids stay unique UUIDs and the models keep `id` as their key.

On tables with rows, after the migration's transaction (`kit.migrate.steps`): each new key is built
CONCURRENTLY, then made the primary key by a swap that only touches the catalog (resumable: a swap
already done is not done again); `document_chunks` references its source through the organization,
validated without blocking writes. `ai_usage` is partitioned, and PostgreSQL builds a partitioned
table's key only in one statement, under its lock: that one is rebuilt in the migration's transaction.
"""

import peewee as pw
from peewee_migrate import Migrator

import kit.migrate.operations as kit_ops
from kit.migrate.safe import Later
from kit.migrate.steps import defer

TABLES = ("members", "invitations", "customers", "subscriptions", "usage", "org_credits", "document_sources",
          "document_chunks", "webhook_endpoints", "webhook_deliveries")
SOURCE_FK = "document_chunks_source_id_fkey"
CHUNK_SOURCE_FK = "document_chunks_organization_id_source_id_fkey"
LOOKUPS = (("customers", "provider_customer_id", "customer_provider_customer_id"),
           ("subscriptions", "provider_subscription_id", "subscription_provider_subscription_id"))


def _lookup(table: str, unique: bool) -> pw.TextField:
    """The provider id column of `table` as the picture has it (a subscription may have none yet)."""
    if table == "subscriptions":
        return pw.TextField(index=not unique, unique=unique, null=True)
    return pw.TextField(index=not unique, unique=unique)


def _swap(table: str) -> str:
    """The primary key made of the key built beside it, unless a run killed after the swap already made it."""
    return (f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index WHERE indrelid = '{table}'::regclass AND indisprimary "
            f"AND indnatts = 1) THEN ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD CONSTRAINT {table}_pkey "
            f"PRIMARY KEY USING INDEX {table}_pkey_next; END IF; END $$")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Key every organization's table by (organization_id, id), and its unique and foreign keys through it."""
    for table in TABLES:
        defer(migrator, Later("index", f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {table}_pkey_next ON {table} "
                                       "(organization_id, id)", name=f"{table}_pkey_next"))
    # a chunk's source through the organization, on the source's new key, before the old key it used goes
    defer(migrator, Later("sql", f"ALTER TABLE document_chunks ADD CONSTRAINT {CHUNK_SOURCE_FK} FOREIGN KEY "
                                 "(organization_id, source_id) REFERENCES document_sources (organization_id, id) "
                                 "ON DELETE CASCADE NOT VALID"))
    defer(migrator, Later("sql", f"ALTER TABLE document_chunks VALIDATE CONSTRAINT {CHUNK_SOURCE_FK}"))
    defer(migrator, Later("sql", f"ALTER TABLE document_chunks DROP CONSTRAINT IF EXISTS {SOURCE_FK}"))
    for table in TABLES:
        defer(migrator, Later("sql", _swap(table)))
    migrator.sql("ALTER TABLE ai_usage DROP CONSTRAINT ai_usage_pkey, "
                 "ADD CONSTRAINT ai_usage_pkey PRIMARY KEY (organization_id, id, created_at)")
    # unique keys through the organization: the new ones built, then the old ones dropped (a short lock, retried)
    kit_ops.add_index(migrator, "customers", "organization", "provider_customer_id", unique=True, concurrently=True)
    kit_ops.add_index(migrator, "subscriptions", "organization", "provider_subscription_id", unique=True,
                      concurrently=True)
    kit_ops.add_index(migrator, "document_chunks", "organization", "source", "position", unique=True,
                      concurrently=True)
    chunks = migrator.orm["document_chunks"]  # the picture: the old key is gone (its drop is a step below)
    chunks._meta.indexes = [i for i in chunks._meta.indexes if not (isinstance(i, (tuple, list)) and
                                                                     tuple(i[0]) == ("source", "position"))]
    defer(migrator, Later("sql", 'DROP INDEX IF EXISTS "documentchunk_source_id_position"'))
    for table, column, name in LOOKUPS:  # still looked up by the webhook path: kept as a plain index
        kit_ops.change_fields(migrator, table, **{column: _lookup(table, unique=False)})
        defer(migrator, Later("sql", f'DROP INDEX IF EXISTS "{name}"'))
        defer(migrator, Later("index", f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ("{column}")',
                              name=name))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to primary keys of `id` alone (rebuilt in this transaction), and unique keys without the organization."""
    for table, column, name in LOOKUPS:
        kit_ops.change_fields(migrator, table, **{column: _lookup(table, unique=True)})
        migrator.sql(f'DROP INDEX IF EXISTS "{name}"')
        migrator.sql(f'CREATE UNIQUE INDEX "{name}" ON "{table}" ("{column}")')
    chunks = migrator.orm["document_chunks"]  # the old key, under the name the model gives it
    chunks._meta.indexes = [*chunks._meta.indexes, (("source", "position"), True)]
    migrator.sql('CREATE UNIQUE INDEX IF NOT EXISTS "documentchunk_source_id_position" ON "document_chunks" '
                 '("source_id", "position")')
    kit_ops.drop_index(migrator, "document_chunks", "documentchunk_organization_id_source_id_position")
    kit_ops.drop_index(migrator, "subscriptions", "subscription_organization_id_provider_subscription_id")
    kit_ops.drop_index(migrator, "customers", "customer_organization_id_provider_customer_id")
    migrator.sql("ALTER TABLE ai_usage DROP CONSTRAINT ai_usage_pkey, "
                 "ADD CONSTRAINT ai_usage_pkey PRIMARY KEY (id, created_at)")
    migrator.sql(f"ALTER TABLE document_chunks DROP CONSTRAINT IF EXISTS {CHUNK_SOURCE_FK}")
    for table in TABLES:
        migrator.sql(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
    migrator.sql(f"ALTER TABLE document_chunks DROP CONSTRAINT IF EXISTS {SOURCE_FK}")
    migrator.sql(f"ALTER TABLE document_chunks ADD CONSTRAINT {SOURCE_FK} FOREIGN KEY (source_id) "
                 "REFERENCES document_sources (id) ON DELETE CASCADE")
