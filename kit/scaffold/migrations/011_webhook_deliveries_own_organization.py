"""Peewee migrations -- 011_webhook_deliveries_own_organization.py.

A webhook delivery carries its organization itself (`organization_id`, its endpoint's), instead of
row-level security looking the endpoint up with a sub-select: Citus refuses a sub-select in the
policies of any table it takes into its metadata, and a table tied to a reference or distributed
one by foreign keys is taken in with it (docs/scaling.md). Its endpoint is then referenced through
the organization too, `(organization_id, endpoint_id) -> webhook_endpoints (organization_id, id)`, so
a delivery can name only an endpoint of its own organization (a foreign key's check sees every row,
whatever the policies). On a table with rows: the column and foreign keys NOT VALID now; after the
migration's transaction the index builds CONCURRENTLY, the backfill in batches, the validations and
the NOT NULL, then the policies that read the new column, in one step (`kit.migrate.steps`).
"""

import peewee as pw
from peewee_migrate import Migrator

import kit.migrate.operations as kit_ops
from kit.migrate.safe import BACKFILL_BATCH, Later
from kit.migrate.steps import defer
from kit.roles import TenantRule, policy_statements

ENDPOINT_KEY = "webhook_endpoints_organization_id_id"
OLD_ENDPOINT_FK = "webhook_deliveries_endpoint_id_fkey"
ENDPOINT_FK = "webhook_deliveries_organization_id_endpoint_id_fkey"
FILL = (f'UPDATE webhook_deliveries d SET organization_id = e.organization_id FROM webhook_endpoints e '
        f'WHERE e.id = d.endpoint_id AND d.ctid = ANY (ARRAY(SELECT ctid FROM webhook_deliveries '
        f'WHERE organization_id IS NULL LIMIT {BACKFILL_BATCH}))')


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Give webhook_deliveries its organization, reference the endpoint through it, and confine rows by it."""
    organization = pw.ForeignKeyField(migrator.orm["organizations"], column_name="organization_id", null=True,
                                      on_delete="CASCADE", index=False, field="id")
    kit_ops.add_fields(migrator, "webhook_deliveries", organization=organization)
    kit_ops.add_index(migrator, "webhook_deliveries", "organization", concurrently=True)  # named as the model's
    defer(migrator, Later("backfill", FILL))
    kit_ops.add_not_null(migrator, "webhook_deliveries", "organization")
    kit_ops.add_index(migrator, "webhook_endpoints", "organization", "id", unique=True, name=ENDPOINT_KEY,
                      concurrently=True)
    # the endpoint through the organization: made once the key above is built, validated, then the old one goes
    defer(migrator, Later("sql", f"ALTER TABLE webhook_deliveries ADD CONSTRAINT {ENDPOINT_FK} FOREIGN KEY "
                                 "(organization_id, endpoint_id) REFERENCES webhook_endpoints (organization_id, id) "
                                 "ON DELETE CASCADE NOT VALID"))
    defer(migrator, Later("sql", f"ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT {ENDPOINT_FK}"))
    defer(migrator, Later("sql", f"ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS {OLD_ENDPOINT_FK}"))
    # rows confined by their own column once every row has it: until then, through the endpoint as before
    defer(migrator, Later("sql", ";\n".join(policy_statements(TenantRule("webhook_deliveries", "organization_id")))))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to rows confined through their endpoint, and the endpoint referenced by its id alone."""
    kit_ops.drop_tenant_policies(migrator, "webhook_deliveries")
    kit_ops.tenant_policies(migrator, "webhook_deliveries", "endpoint_id", parent=("webhook_endpoints", "id"))
    migrator.sql(f"ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS {OLD_ENDPOINT_FK}")
    migrator.sql(f"ALTER TABLE webhook_deliveries ADD CONSTRAINT {OLD_ENDPOINT_FK} FOREIGN KEY (endpoint_id) "
                 "REFERENCES webhook_endpoints (id) ON DELETE CASCADE")
    migrator.sql(f"ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS {ENDPOINT_FK}")
    migrator.sql(f"DROP INDEX IF EXISTS {ENDPOINT_KEY}")
    migrator.remove_fields("webhook_deliveries", "organization")
