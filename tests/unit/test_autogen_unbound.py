"""A model bound to no database: peewee-migrate's own output unless a router generates it for PostgreSQL.

The cases are peewee-migrate's own (its tests/test_auto.py), which call `diff_model` with no router:
the kit's additions must leave their expected output as it is there, and still apply when the kit's
router generates for PostgreSQL.
"""

from __future__ import annotations

import peewee as pw
import pytest
from peewee_migrate.auto import diff_model

from kit.migrate import autogen

pytestmark = pytest.mark.unit


def unique_pair(unique: bool) -> type[pw.Model]:
    return type("Object", (pw.Model,), {"first_name": pw.CharField(), "last_name": pw.CharField(), "Meta": type(
        "Meta", (), {"table_name": "object", "indexes": ((("first_name", "last_name"), unique),)})})


class Object(pw.Model):
    first_name = pw.CharField()
    last_name = pw.CharField()


def test_peewee_migrates_own_expectations_hold_with_the_kit_registered():
    autogen.register()
    assert diff_model(unique_pair(True), Object) == [
        "migrator.add_index('object', 'first_name', 'last_name', unique=True)"]
    assert diff_model(unique_pair(False), unique_pair(True)) == [
        "migrator.drop_index('object', 'first_name', 'last_name')",
        "migrator.add_index('object', 'first_name', 'last_name', unique=False)"]

    class Employee(pw.Model):
        name = pw.CharField()

    class EmployeeNew(pw.Model):
        name = pw.CharField()
        manager = pw.ForeignKeyField("self")

        class Meta:
            table_name = "employee"

    changes = diff_model(EmployeeNew, Employee)
    assert "migrator.add_fields" in changes[0] and "model='self'" in changes[0]


def test_generated_for_postgresql_an_unbound_model_gets_the_kits_safe_forms():
    autogen.register()
    token = autogen._generating_for.set(pw.PostgresqlDatabase(None))  # as Router.create sets it
    try:
        changes = diff_model(unique_pair(True), Object)
    finally:
        autogen._generating_for.reset(token)
    assert changes and all("kit_ops" in change for change in changes)
    token = autogen._generating_for.set(pw.SqliteDatabase(None))
    try:
        assert diff_model(unique_pair(True), Object) == [
            "migrator.add_index('object', 'first_name', 'last_name', unique=True)"]
    finally:
        autogen._generating_for.reset(token)
