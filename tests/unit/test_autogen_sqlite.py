"""A plain peewee model on SQLite, with the kit's generator hooks loaded: peewee-migrate's own migration, and it applies."""

from __future__ import annotations

import peewee as pw
import pytest
from peewee_migrate import Router

from kit.migrate import autogen

pytestmark = pytest.mark.unit


def test_a_plain_model_on_sqlite_gets_a_migration_that_applies(tmp_path):
    autogen.register()
    database = pw.SqliteDatabase(str(tmp_path / "app.db"))

    class Author(pw.Model):
        name = pw.CharField(unique=True)

        class Meta:
            table_name = "author"

    class Book(pw.Model):
        title = pw.CharField()
        author = pw.ForeignKeyField(Author, backref="books")
        year = pw.IntegerField(null=True)

        class Meta:
            table_name = "book"
            indexes = ((("title", "year"), True),)

    router = Router(database, migrate_dir=tmp_path / "migrations")
    made = router.create("first", auto=[Author, Book])  # the models are bound to no database: the router's
    written = (tmp_path / "migrations" / f"{made}.py").read_text()
    assert "kit_ops." not in written and "CONCURRENTLY" not in written  # peewee-migrate's own calls only
    router.run()
    assert set(database.get_tables()) >= {"author", "book"}
    assert any(index.unique and index.columns == ["title", "year"] for index in database.get_indexes("book"))
