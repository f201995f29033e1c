"""The kit's additions to peewee-migrate's generator reach PostgreSQL models only (kit.migrate.autogen)."""

from __future__ import annotations

import peewee as pw
from peewee_migrate import auto

from kit.migrate import autogen
from kit.models import User


class Note(pw.Model):
    body = pw.TextField()
    updated_at = pw.DateTimeField()

    class Meta:
        database = pw.SqliteDatabase(":memory:")
        table_name = "notes"


def test_a_model_bound_to_sqlite_gets_peewee_migrate_s_own_output():
    autogen.register()
    code = auto.create_model(Note)
    assert "kit_ops" not in code and "keep_updated_at" not in code and "@migrator.create_model" in code


def test_the_kit_s_models_on_postgresql_get_the_kit_s_operations():
    autogen.register()
    code = auto.create_model(User)
    assert "kit_ops.keep_updated_at(migrator, 'users')" in code and "kit_ops.grant_access" in code
