"""Peewee migrations -- 010_tenant_bound_to_transaction.py.

The tenant setting binds to the transaction it was sent in (`kit.tenancy.statement_prefix`): every
policy that read `kit.tenant` alone (made by 009, or by a project's own migrations before this one)
now also asks that `kit.tenant_xact` names the current transaction, so a value planted for the
session, by any spelling, matches no row in a later transaction or request. Idempotent; rolled back,
the policies read the setting alone again.
"""

import peewee as pw
from peewee_migrate import Migrator

UNBOUND = "current_setting('kit.tenant'::text, true)"
BOUND = ("CASE WHEN current_setting('kit.tenant_xact', true) = extract(epoch FROM transaction_timestamp())::text "
         "THEN current_setting('kit.tenant', true) END")
REWRITE = """
DO $$
DECLARE found record;
BEGIN
    FOR found IN
        SELECT p.tablename, p.policyname, p.qual, p.with_check FROM pg_policies p
        WHERE p.schemaname = 'public' AND left(p.policyname, 11) = 'kit_tenant_'
          AND strpos(coalesce(p.qual, '') || coalesce(p.with_check, ''), {old}) > 0
          AND strpos(coalesce(p.qual, '') || coalesce(p.with_check, ''), 'kit.tenant_xact') = 0
    LOOP
        IF found.qual IS NOT NULL THEN
            EXECUTE 'ALTER POLICY ' || quote_ident(found.policyname) || ' ON ' || quote_ident(found.tablename)
                || ' USING (' || replace(found.qual, {old}, {new}) || ')';
        END IF;
        IF found.with_check IS NOT NULL THEN
            EXECUTE 'ALTER POLICY ' || quote_ident(found.policyname) || ' ON ' || quote_ident(found.tablename)
                || ' WITH CHECK (' || replace(found.with_check, {old}, {new}) || ')';
        END IF;
    END LOOP;
END $$
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rewrite(old: str, new: str) -> str:
    return REWRITE.format(old=_literal(old), new=_literal(new))


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Every tenant policy accepts the tenant setting only in the transaction it was sent for."""
    migrator.sql(_rewrite(UNBOUND, BOUND))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Nothing to undo: the bound form reads what every version of the kit sends, and is never less strict."""
