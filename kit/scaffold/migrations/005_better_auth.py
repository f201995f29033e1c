"""Peewee migrations -- 005_better_auth.py.

The auth tables as Better Auth 1.7 defines them (core, organization and twoFactor plugins), and
`updated_at` kept by the database on every table that has it.

- two_factors: `verified`, `failed_verification_count`, `locked_until` (the two-factor plugin's
  lockout), an index on `secret` as the plugin declares.
- members.role, invitations.role: one or more role names, comma-separated ("admin,member"), custom
  names allowed; empty names, stray commas or spaces and control characters refused.
- organizations.metadata: JSON kept as text (Better Auth reads and writes a string), still checked to
  be a JSON object; existing values are kept, as their JSON text.
- invitations.inviter_id: required, as Better Auth declares it; deleting the inviter deletes their
  invitations. A database holding invitations without an inviter is refused with one sentence, so
  nothing is deleted or invented by the migration.
- A BEFORE UPDATE trigger on every table with `updated_at` sets it to now() unless the UPDATE sets it
  itself, so rows written by Better Auth, psql or any other client stay correct.

Generated with `pw_migrate create --auto --auto-source kit.models` and reviewed.
"""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator

from decimal import ROUND_HALF_EVEN, Decimal  # noqa: F401 - DecimalField defaults and rounding

import kit.migrate.operations as kit_ops  # noqa: F401
import kit.vector as kit_vector  # noqa: F401


with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext

NAME = r"[^,[:space:][:cntrl:]]+( [^,[:space:][:cntrl:]]+)*"
ROLES = [f"CHECK (role ~ '^{NAME}(,{NAME})*$' AND length(role) <= 200)", "DEFAULT 'member'"]
OLD_ROLES = ["CHECK (role IN ('owner', 'admin', 'member'))", "DEFAULT 'member'"]
TIMESTAMPED = [
    "users", "organizations", "sessions", "accounts", "verifications", "members", "invitations",
    "plan_prices", "customers", "subscriptions", "usage", "webhook_events", "user_settings", "org_credits",
    "document_sources", "document_chunks", "referrals", "waitlist_entries", "roadmap_items", "roadmap_votes",
    "announcements", "feature_flags", "webhook_endpoints", "webhook_deliveries",
]
REQUIRE_INVITERS = """
DO $$
DECLARE missing bigint;
BEGIN
    SELECT count(*) INTO missing FROM invitations WHERE inviter_id IS NULL;
    IF missing > 0 THEN
        RAISE EXCEPTION 'invitations has % row(s) without an inviter (inviter_id IS NULL); Better Auth requires one: set inviter_id or delete those rows, then migrate again', missing
            USING ERRCODE = 'not_null_violation';
    END IF;
END
$$
"""


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Better Auth 1.7's auth schema; updated_at kept by the database."""
    migrator.add_fields(
        'two_factors',
        verified=pw.BooleanField(constraints=[pw.SQL('DEFAULT true')], default=True, null=True),
        failed_verification_count=pw.IntegerField(constraints=[pw.SQL('DEFAULT 0')], default=0, null=True),
        locked_until=pw_pext.DateTimeTZField(null=True))
    migrator.change_fields('two_factors', secret=pw.TextField(index=True))
    migrator.sql('CREATE INDEX "twofactor_secret" ON "two_factors" ("secret")')  # as the model names it

    kit_ops.set_constraints(migrator, 'members', 'role', ROLES)
    kit_ops.set_constraints(migrator, 'invitations', 'role', ROLES)

    migrator.change_fields('organizations', metadata=pw.TextField(null=True))
    kit_ops.set_constraints(migrator, 'organizations', 'metadata', ['CHECK (metadata IS JSON OBJECT)'])

    migrator.sql(REQUIRE_INVITERS.replace("%", "%%"))
    migrator.change_fields('invitations', inviter=pw.ForeignKeyField(
        column_name='inviter_id', field='id', model=migrator.orm['users'], on_delete='CASCADE'))
    migrator.add_not_null('invitations', 'inviter')

    kit_ops.keep_updated_at(migrator, *TIMESTAMPED)


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to the schema of 004 (refused while members hold several or custom roles)."""
    kit_ops.drop_updated_at_triggers(migrator, *TIMESTAMPED)
    migrator.sql(f"DROP FUNCTION IF EXISTS {kit_ops.TOUCH_FUNCTION}()")

    migrator.drop_not_null('invitations', 'inviter')
    migrator.change_fields('invitations', inviter=pw.ForeignKeyField(
        column_name='inviter_id', field='id', model=migrator.orm['users'], null=True, on_delete='SET NULL'))

    kit_ops.set_constraints(migrator, 'organizations', 'metadata', [])
    migrator.sql('ALTER TABLE "organizations" ALTER COLUMN "metadata" TYPE jsonb USING "metadata"::jsonb')

    kit_ops.set_constraints(migrator, 'invitations', 'role', OLD_ROLES)
    kit_ops.set_constraints(migrator, 'members', 'role', OLD_ROLES)

    migrator.sql('DROP INDEX IF EXISTS "twofactor_secret"')
    migrator.change_fields('two_factors', secret=pw.TextField())
    migrator.remove_fields('two_factors', 'verified', 'failed_verification_count', 'locked_until')
