"""`kit migrate lint` beside squawk, statement by statement: where they agree, and why where they do not.

Each case: the statement (on a table with rows, inside the migration's transaction), what the kit
says, what squawk 2.70 says (its rules about locks and running code; its style rules left out), and
where they differ, why. The test runs both: a change in either tool shows here. squawk is a dev
dependency (`squawk-cli`, pinned); without it the comparison is skipped with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from kit.migrate.lint import check

pytestmark = pytest.mark.unit

STYLE = {"require-lock-timeout", "require-statement-timeout", "prefer-robust-stmts", "prefer-bigint-over-int",
         "prefer-bigint-over-smallint", "prefer-text-field", "prefer-identity", "prefer-timestamptz", "ban-char-field",
         "transaction-nesting"}  # squawk's rules about style and habits, not about what stalls or breaks

CORPUS = [  # (statement, the kit's rules, squawk's rules, why they differ: None where they agree)
    ("CREATE INDEX orders_total ON orders (total)",
     ["require-concurrent-index-creation"], ["require-concurrent-index-creation"], None),
    ("CREATE INDEX CONCURRENTLY orders_total ON orders (total)",
     ["ban-concurrent-index-creation-in-transaction"], [],
     "inside the migration's transaction it fails when applied; squawk 2.70 says nothing without an explicit BEGIN"),
    ("DROP INDEX orders_total", ["require-concurrent-index-deletion"], ["require-concurrent-index-deletion"], None),
    ("DROP INDEX CONCURRENTLY IF EXISTS orders_total", [], [], None),
    ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id)",
     ["adding-foreign-key-constraint"], ["adding-foreign-key-constraint", "constraint-missing-not-valid"], None),
    ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID", [], [], None),
    ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total > 0)",
     ["constraint-missing-not-valid"], ["constraint-missing-not-valid"], None),
    ("ALTER TABLE orders ALTER COLUMN total SET NOT NULL",
     ["adding-not-nullable-field"], ["adding-not-nullable-field"], None),
    ("ALTER TABLE orders ALTER COLUMN total TYPE bigint", ["changing-column-type"], ["changing-column-type"], None),
    ("ALTER TABLE orders ADD COLUMN note text, ALTER COLUMN total TYPE bigint",
     ["changing-column-type"], ["changing-column-type"], None),
    ("ALTER TABLE IF EXISTS orders ALTER COLUMN total TYPE bigint",
     ["changing-column-type"], ["changing-column-type"], None),
    ("ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid()",
     ["adding-field-with-volatile-default"], ["adding-field-with-default"], None),
    ("ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now()", [], [], None),
    ("ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT clock_timestamp()",
     ["adding-field-with-volatile-default"], ["adding-field-with-default"], None),
    ("ALTER TABLE orders ADD COLUMN doubled int GENERATED ALWAYS AS (total * 2) STORED",
     ["adding-stored-generated-column"], ["adding-field-with-default"], None),
    ("ALTER TABLE orders ADD COLUMN id2 bigserial", ["adding-field-with-volatile-default"], [],
     "each existing row draws nextval(): the table is rewritten; squawk 2.70 looks only at written DEFAULTs"),
    ("ALTER TABLE orders ADD COLUMN owner_id uuid REFERENCES users (id)",
     ["adding-field-with-references"], ["adding-foreign-key-constraint"], None),
    ("ALTER TABLE orders ADD CONSTRAINT one UNIQUE (total)",
     ["disallowed-unique-constraint"], ["constraint-missing-not-valid", "disallowed-unique-constraint"], None),
    ("ALTER TABLE orders ADD CONSTRAINT one UNIQUE USING INDEX orders_total", [], [], None),
    ("ALTER TABLE orders ADD PRIMARY KEY (id)",
     ["disallowed-unique-constraint"], ["adding-serial-primary-key-field", "constraint-missing-not-valid"], None),
    ("ALTER TABLE orders RENAME COLUMN total TO amount", ["renaming-column"], ["renaming-column"], None),
    ("ALTER TABLE orders RENAME TO purchases", ["renaming-table"], ["renaming-table"], None),
    ("ALTER TABLE orders DROP COLUMN total", ["ban-drop-column"], ["ban-drop-column"], None),
    ("DROP TABLE orders", ["ban-drop-table"], ["ban-drop-table"], None),
    ("ALTER TABLE orders ADD COLUMN note text", [], [], None),
    ("ALTER TABLE orders ADD COLUMN status text DEFAULT 'new' NOT NULL", [], [], None),
    ("UPDATE orders SET total = 0", ["unbatched-backfill"], [],
     "one UPDATE of a whole table holds its row locks until commit; squawk has no rule for DML"),
    ("INSERT INTO orders_copy SELECT * FROM orders", ["unbatched-copy"], [],
     "a whole-table copy keeps the migration's locks for as long as it runs; squawk has no rule for DML"),
    ("VACUUM FULL orders", ["ban-rewrite"], [], "a rewrite under ACCESS EXCLUSIVE; squawk 2.70 has no rule for it"),
    ("ALTER TABLE orders SET UNLOGGED", ["ban-rewrite"], [],
     "SET UNLOGGED rewrites the table under ACCESS EXCLUSIVE; squawk 2.70 has no rule for it"),
    ("TRUNCATE orders", ["ban-truncate"], [],
     "ACCESS EXCLUSIVE until commit, and the rows gone under running code; squawk 2.70 flags only TRUNCATE CASCADE"),
    ("LOCK TABLE orders", ["ban-lock-table"], [], "an explicit lock held to commit; squawk 2.70 has no rule for it"),
]


def squawk(statement: str, tmp_path) -> list[str]:
    migration = tmp_path / "m.sql"
    migration.write_text(statement + ";\n")
    ran = subprocess.run(["squawk", str(migration), "--reporter", "json", "--assume-in-transaction", "--pg-version",
                          "16"], capture_output=True, text=True, timeout=60)
    return sorted({finding["rule_name"] for finding in json.loads(ran.stdout or "[]")} - STYLE)


@pytest.mark.skipif(shutil.which("squawk") is None, reason="squawk is not installed (pip install squawk-cli): the "
                                                          "comparison with squawk is skipped")
@pytest.mark.parametrize("statement, kit, said_by_squawk, why", CORPUS, ids=[c[0][:50] for c in CORPUS])
def test_the_kit_and_squawk_on_each_statement(statement, kit, said_by_squawk, why, tmp_path):
    assert [f.rule.name for f in check("m", [statement], index_table=lambda index: "orders")] == kit
    assert squawk(statement, tmp_path) == said_by_squawk
    assert why is not None or bool(kit) == bool(said_by_squawk)  # where no reason is given, both flag or neither


def test_every_rule_of_the_kit_is_in_the_corpus():
    from kit.migrate.lint import RULES

    named = {rule for _, kit, _, _ in CORPUS for rule in kit}
    assert {rule.name for rule in RULES} - named == {"unreadable-statement"}  # squawk reads only what parses too
