"""Peewee migrations -- 003_audit_logs_append_only.py.

audit_logs is append-only: the database refuses UPDATE, DELETE and TRUNCATE on it, whoever asks.
"""

import peewee as pw
from peewee_migrate import Migrator

FUNCTION = """
CREATE OR REPLACE FUNCTION kit_audit_logs_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: %% is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Refuse UPDATE, DELETE and TRUNCATE on audit_logs."""
    migrator.sql(FUNCTION)
    migrator.sql(
        "CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs"
        " FOR EACH ROW EXECUTE FUNCTION kit_audit_logs_append_only()"
    )
    migrator.sql(
        "CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs"
        " FOR EACH STATEMENT EXECUTE FUNCTION kit_audit_logs_append_only()"
    )


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Allow changes to audit_logs again."""
    migrator.sql("DROP TRIGGER IF EXISTS audit_logs_no_truncate ON audit_logs")
    migrator.sql("DROP TRIGGER IF EXISTS audit_logs_append_only ON audit_logs")
    migrator.sql("DROP FUNCTION IF EXISTS kit_audit_logs_append_only()")
