"""Peewee migrations -- 009_roles_and_row_security.py.

The run-time roles get exactly what they need, table by table (`kit.roles`): `kit_app` reads and
writes the kit's tables (on `audit_logs` it may only INSERT and SELECT), `kit_auth` Better Auth's
tables only. Every table that holds an organization's data gets forced row-level security keyed on
the transaction-local setting `kit.tenant` (`kit.tenancy`). The roles themselves are made before any
migration runs (the embedded server makes them; elsewhere `kit db roles`).
"""

import peewee as pw
from peewee_migrate import Migrator

import kit.migrate.operations as kit_ops

BETTER_AUTH = ("users", "organizations", "sessions", "accounts", "verifications", "two_factors", "members",
               "invitations")
APPLICATION = ("plans", "plan_prices", "customers", "subscriptions", "usage", "webhook_events", "user_settings",
               "ai_usage", "org_credits", "document_sources", "document_chunks", "referrals", "waitlist_entries",
               "roadmap_items", "roadmap_votes", "announcements", "feature_flags", "webhook_endpoints",
               "webhook_deliveries")
BY_ORGANIZATION = ("members", "invitations", "customers", "subscriptions", "usage", "ai_usage", "org_credits",
                   "document_sources", "document_chunks", "webhook_endpoints")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Grants for the run-time roles; row-level security on every organization's table."""
    for table in BETTER_AUTH:
        kit_ops.grant_access(migrator, table, better_auth=True)
    for table in APPLICATION:
        kit_ops.grant_access(migrator, table)
    kit_ops.grant_access(migrator, "audit_logs", append_only=True)
    kit_ops.tenant_policies(migrator, "organizations", "id", open=("select", "insert"), better_auth=True)
    for table in BY_ORGANIZATION:
        kit_ops.tenant_policies(migrator, table, "organization_id", better_auth=table in BETTER_AUTH)
    for table in ("announcements", "feature_flags"):
        kit_ops.tenant_policies(migrator, table, "organization_id", null=("select",))
    kit_ops.tenant_policies(migrator, "audit_logs", "organization_id", null=("insert",))
    kit_ops.tenant_policies(migrator, "webhook_deliveries", "endpoint_id", parent=("webhook_endpoints", "id"))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Row-level security off and the run-time roles' privileges taken back."""
    for table in ("organizations", *BY_ORGANIZATION, "announcements", "feature_flags", "audit_logs",
                  "webhook_deliveries"):
        kit_ops.drop_tenant_policies(migrator, table)
    for table in (*BETTER_AUTH, *APPLICATION, "audit_logs"):
        kit_ops.revoke_access(migrator, table)
