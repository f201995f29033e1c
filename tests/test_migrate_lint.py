"""`kit migrate lint`: each rule flags its statement on a table with rows, the safe forms pass, and the kit's own
migrations lint clean on a new database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kit import migrate
from kit.migrate.lint import RULES, check, lint

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}

BAD = {  # rule -> a statement that breaks it, on the table "orders"
    "require-concurrent-index-creation": 'CREATE INDEX "orders_total" ON "orders" ("total")',
    "adding-foreign-key-constraint": 'ALTER TABLE "orders" ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id)',
    "constraint-missing-not-valid": "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0)",
    "adding-not-nullable-field": 'ALTER TABLE "orders" ALTER COLUMN "total" SET NOT NULL',
    "changing-column-type": 'ALTER TABLE "orders" ALTER COLUMN "total" TYPE bigint',
    "adding-field-with-volatile-default": 'ALTER TABLE "orders" ADD COLUMN "token" uuid DEFAULT gen_random_uuid()',
    "adding-stored-generated-column":
        "ALTER TABLE orders ADD COLUMN doubled int GENERATED ALWAYS AS (total * 2) STORED",
    "unbatched-backfill": "UPDATE orders SET total = 0",
    "adding-field-with-references": 'ALTER TABLE "orders" ADD COLUMN "owner_id" uuid REFERENCES users (id)',
    "disallowed-unique-constraint": "ALTER TABLE orders ADD CONSTRAINT one UNIQUE (total)",
    "renaming-column": "ALTER TABLE orders RENAME COLUMN total TO amount",
    "renaming-table": "ALTER TABLE orders RENAME TO purchases",
    "ban-drop-column": 'ALTER TABLE "orders" DROP COLUMN "total"',
    "ban-drop-table": 'DROP TABLE "orders"',
    "ban-rewrite": "VACUUM FULL orders",
    "require-concurrent-index-deletion": "DROP INDEX orders_total",
    "ban-truncate": "TRUNCATE orders",
    "ban-lock-table": "LOCK TABLE orders",
    "unbatched-copy": "INSERT INTO orders_archive SELECT * FROM orders",
}
IN_TRANSACTION = {  # rules about the statement itself, whatever the table holds
    "ban-concurrent-index-creation-in-transaction": 'CREATE INDEX CONCURRENTLY "orders_total" ON "orders" ("total")',
    "unreadable-statement": "ALTER TABLE orders ADD COLUMN",
}
SAFE = [
    '-- after commit: CREATE INDEX CONCURRENTLY "orders_total" ON "orders" ("total")',
    "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
    "ALTER TABLE orders VALIDATE CONSTRAINT fk",
    "ALTER TABLE orders ADD CONSTRAINT total_set CHECK (total IS NOT NULL) NOT VALID",
    'ALTER TABLE "orders" ADD COLUMN "note" text',
    'ALTER TABLE "orders" ADD COLUMN "status" text DEFAULT \'new\' NOT NULL',
    "ALTER TABLE orders ADD CONSTRAINT one UNIQUE USING INDEX orders_total",
    "ALTER TABLE orders DROP CONSTRAINT fk",
    "-- after commit: CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS x ON orders (id)",
    "-- after commit: DROP INDEX CONCURRENTLY IF EXISTS orders_total",
    "ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now()",
]


def test_every_rule_has_a_statement_it_flags_and_says_why_and_what_instead():
    assert set(BAD) | set(IN_TRANSACTION) == {rule.name for rule in RULES}
    for name, statement in BAD.items():
        found = check("011_x", [statement], index_table=lambda index: "orders")
        assert [f.rule.name for f in found] == [name], statement
        assert found[0].table == "orders"
        said = found[0].describe()
        assert said.startswith(f"011_x: {name} on orders: ") and "; instead: " in said
    for name, statement in IN_TRANSACTION.items():
        assert [f.rule.name for f in check("011_x", [statement], has_rows=lambda table: False)] == [name]


def test_safe_forms_pass():
    assert check("011_x", SAFE) == []


def test_a_table_made_by_the_same_migration_or_holding_no_rows_is_exempt():
    made = ['CREATE TABLE "orders" (id serial, total int)', BAD["require-concurrent-index-creation"]]
    assert check("011_x", made) == []
    assert check("011_x", list(BAD.values()), has_rows=lambda table: False) == []


def test_the_safe_forms_of_each_stalling_statement():
    from kit.migrate.safe import safe_forms

    now, later = safe_forms([
        ('CREATE INDEX "orders_total" ON "orders" ("total")', ()),
        ('ALTER TABLE "orders" ADD COLUMN "owner_id" UUID REFERENCES "organizations" ("id") ON DELETE SET NULL', ()),
        ('ALTER TABLE "orders" ADD CONSTRAINT "positive" CHECK (total > 0)', ()),
        ('UPDATE "orders" SET "total" = %s', (0,)),
        ('ALTER TABLE "orders" ALTER COLUMN "total" SET NOT NULL', ()),
        ('ALTER TABLE "orders" ADD COLUMN "note" TEXT', ()),
    ])
    assert [sql for sql, _ in now] == [
        'ALTER TABLE "orders" ADD COLUMN "owner_id" UUID',
        'ALTER TABLE "orders" ADD CONSTRAINT "orders_owner_id_fkey" FOREIGN KEY ("owner_id") REFERENCES '
        '"organizations" ("id") ON DELETE SET NULL NOT VALID',
        'ALTER TABLE "orders" ADD CONSTRAINT "positive" CHECK (total > 0) NOT VALID',
        'ALTER TABLE "orders" ADD COLUMN "note" TEXT',
    ]
    assert [(step.kind, step.sql.split(" WHERE ")[0]) for step in later] == [
        ("backfill", 'UPDATE "orders" SET "total" = %s'),  # first: the CHECK below needs every row filled
        ("index", 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_total" ON "orders" ("total")'),
        ("sql", 'ALTER TABLE "orders" VALIDATE CONSTRAINT "orders_owner_id_fkey"'),
        ("sql", 'ALTER TABLE "orders" VALIDATE CONSTRAINT "positive"'),
        ("sql", 'ALTER TABLE "orders" ADD CONSTRAINT "orders_total_not_null" CHECK ("total" IS NOT NULL) NOT VALID'),
        ("sql", 'ALTER TABLE "orders" VALIDATE CONSTRAINT "orders_total_not_null"'),
        ("sql", 'ALTER TABLE "orders" ALTER COLUMN "total" SET NOT NULL'),
        ("sql", 'ALTER TABLE "orders" DROP CONSTRAINT IF EXISTS "orders_total_not_null"'),
    ]
    assert later[0].params == (0,) and "IS NULL LIMIT 1000" in later[0].sql and later[1].name == "orders_total"
    assert "adding-not-nullable-field" in [f.rule.name for f in check(  # alone, it would stall
        "011_x", [sql for sql, _ in now] + [step.sql for step in later if step.kind == "sql"], has_rows=lambda t: True)]


@pytest.fixture
def with_rows(fresh_database, tmp_path):
    """A migrated database whose organizations table holds rows, and a migrations directory to add to."""
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    migrate.apply(fresh_database, directory, **QUIET)
    fresh_database.execute_sql("INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme')")
    return fresh_database, directory


def test_the_kit_s_own_migrations_lint_clean_on_a_new_database(fresh_database):
    assert lint(fresh_database, ROOT / "migrations").findings == []  # all pending: no table holds rows yet


def test_a_pending_migration_is_rendered_and_flagged_on_a_table_with_rows(with_rows):
    db, directory = with_rows
    (directory / "099_bad.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n"
        "    migrator.sql('CREATE INDEX organizations_name ON organizations (name)')\n"
        "    migrator.sql('ALTER TABLE organizations ADD CONSTRAINT named CHECK (name <> \\'\\')')\n"
        "    migrator.sql('ALTER TABLE organizations ADD CONSTRAINT checked CHECK (slug <> \\'\\') NOT VALID')\n"
        "    migrator.sql('CREATE INDEX flags_x ON feature_flags (key)')\n")  # no rows
    found = lint(db, directory).findings
    assert [(f.migration, f.rule.name, f.table) for f in found] == [
        ("099_bad", "require-concurrent-index-creation", "organizations"),
        ("099_bad", "constraint-missing-not-valid", "organizations"),
    ]
    # the command: a line a finding, exit 1; a name it does not know: one sentence, exit 1, no traceback
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    env["DATABASE_URL"] = db.scratch_url

    def kit(*args):
        return subprocess.run([sys.executable, "-m", "kit.cli", "migrate", "lint", "--dir", str(directory), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    done = kit()
    assert done.returncode == 1 and done.stdout.splitlines()[-1] == "lint: 2 finding(s) in 1 migration(s)"
    assert "  - 099_bad: require-concurrent-index-creation on organizations: " in done.stdout
    assert kit("008").stdout.count("not checked: a Python step (partition_table)") == 2
    unknown = kit("0999")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.startswith("kit: error: no migration named 0999 in ")


def _orders(version: int):
    """The model `orders` as a project would write it: v1, then v2 with a foreign key, an index and a NOT NULL."""
    import peewee as pw

    from kit.db import database
    from kit.models import Organization

    class Order(pw.Model):
        total = pw.IntegerField(null=version == 1, index=version == 2)
        if version == 2:
            owner = pw.ForeignKeyField(Organization, null=True, on_delete="SET NULL")

        class Meta:
            table_name = "orders"

    Order._meta.database = database
    return Order


def test_the_generator_writes_safe_forms_that_lint_clean_and_apply_without_stalling_a_writer(with_rows, monkeypatch):
    import threading
    import time

    import psycopg2
    from peewee_migrate.router import Router

    from kit.migrate.autogen import register
    from kit.migrate.steps import unfinished
    from kit.models import ALL_MODELS

    db, directory = with_rows
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT", "1000")
    register()
    router = Router(db, migrate_dir=directory, ignore=["basemodel", "timestampedmodel", "vectormodel"])
    router.create("orders", auto=[*ALL_MODELS, _orders(1)])
    migrate.apply(db, directory, **QUIET)
    db.execute_sql("INSERT INTO orders (total) SELECT n FROM generate_series(1, 200000) n")
    router = Router(db, migrate_dir=directory, ignore=["basemodel", "timestampedmodel", "vectormodel"])  # anew
    name = router.create("orders_more", auto=[*ALL_MODELS, _orders(2)])
    code = (directory / f"{name}.py").read_text()
    assert "kit_ops.add_fields(migrator," in code and "kit_ops.add_not_null(migrator, 'orders', 'total')" in code
    assert "concurrently=True" in code, code
    assert lint(db, directory).findings == []  # the generated migration, pending, on a table of 200,000 rows

    writer = psycopg2.connect(db.scratch_url, application_name="kit-test-writer")
    writer.autocommit = True
    longest, stop = [0.0], threading.Event()

    def write():
        with writer.cursor() as cursor:
            while not stop.is_set():
                started = time.monotonic()
                cursor.execute("INSERT INTO orders (total) VALUES (1)")
                longest[0] = max(longest[0], time.monotonic() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        migrate.apply(db, directory, **QUIET)
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert longest[0] <= 1.0 + 0.5, f"the writer stalled {longest[0]:.2f} s"
    assert unfinished(db) == []
    assert db.execute_sql("SELECT bool_and(x.indisvalid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                          "WHERE x.indrelid = 'orders'::regclass AND c.relname <> 'orders_pkey'").fetchone()[0]
    assert db.execute_sql("SELECT convalidated FROM pg_constraint WHERE conrelid = 'orders'::regclass "
                          "AND contype = 'f'").fetchone()[0] is True
    assert db.execute_sql("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                          "AND attname = 'total'").fetchone()[0] is True
    assert db.execute_sql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass "
                          "AND contype = 'c'").fetchone()[0] == 0  # the NOT NULL check served and went


def test_docs_name_every_rule():
    text = (ROOT / "docs" / "migrations.md").read_text()
    assert [rule.name for rule in RULES if f"| `{rule.name}` |" not in text] == []


def test_the_verdict_never_says_nothing_stalls_without_naming_the_python_steps_it_did_not_check(test_db_url, owner_url):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env |= {"DATABASE_URL": test_db_url, "DATABASE_OWNER_URL": owner_url}
    ran = subprocess.run([sys.executable, "-m", "kit.cli", "migrate", "lint", "--dir", str(ROOT / "migrations"), "008"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    assert "008_partition_audit_logs_and_ai_usage: not checked: a Python step (partition_table)" in ran.stdout
    assert ran.stdout.strip().splitlines()[-1].endswith("2 Python step(s) not checked (listed above)")
