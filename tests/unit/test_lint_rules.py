"""`kit migrate lint`'s rules (kit.migrate.lint.check) on SQL alone: what each catches, and the safe form it passes."""

from __future__ import annotations

import pytest

from kit.migrate.lint import RULES, check

CAUGHT = [
    ("CREATE INDEX i ON users (email)", "require-concurrent-index-creation"),
    ("CREATE INDEX i ON fresh (a)", None),  # made in the same migration: empty, nothing to wait for
    # where the rules read spellings and squawk did not agree (issue 35): read by PostgreSQL's parser now
    ("ALTER TABLE orders ADD COLUMN note text, ALTER COLUMN total TYPE bigint", "changing-column-type"),
    ("ALTER TABLE IF EXISTS orders ALTER COLUMN total TYPE bigint", "changing-column-type"),
    ('/* why */ alter table "orders" alter "total" set data type bigint', "changing-column-type"),
    ("DROP INDEX orders_total", "require-concurrent-index-deletion"),
    ("DROP INDEX CONCURRENTLY IF EXISTS orders_total", None),
    ("CREATE INDEX CONCURRENTLY i ON users (email)", "ban-concurrent-index-creation-in-transaction"),
    ("CREATE INDEX CONCURRENTLY i ON fresh (a)", "ban-concurrent-index-creation-in-transaction"),  # fails anyway
    ("ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now()", None),  # stable: no rewrite
    ("ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT CURRENT_TIMESTAMP", None),
    ("ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT clock_timestamp()", "adding-field-with-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN n int DEFAULT (floor(random() * 10))::int", "adding-field-with-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN id2 bigserial", "adding-field-with-volatile-default"),  # nextval() per row
    ("ALTER TABLE orders ADD COLUMN id3 bigint GENERATED ALWAYS AS IDENTITY", "adding-field-with-volatile-default"),
    ("LOCK TABLE orders", "ban-lock-table"),
    ("LOCK TABLE orders IN SHARE MODE", "ban-lock-table"),
    ("ALTER TABLE orders SET UNLOGGED", "ban-rewrite"),
    ("TRUNCATE orders", "ban-truncate"),
    ("UPDATE orders SET total = %s WHERE id = %s", "unbatched-backfill"),  # peewee's placeholders read too
    ("ALTER TABLE orders ADD COLUMN", "unreadable-statement"),
    ("SELECT 1; ALTER TABLE orders DROP COLUMN total", "ban-drop-column"),  # every statement of a string
]


@pytest.mark.parametrize("sql, rule", CAUGHT)
def test_each_statement_against_the_rules(sql, rule):
    before = ["CREATE TABLE fresh (a int)"] if "fresh" in sql else []
    found = [f.rule.name for f in check("0001_x", [*before, sql])]
    assert found == ([rule] if rule else [])


def test_a_table_known_to_be_empty_is_not_flagged():
    assert check("0001_x", ["CREATE INDEX i ON users (email)"], has_rows=lambda table: False) == []


def test_every_rule_has_a_name_a_reason_and_is_listed_once():
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names)) >= 10


def test_a_dropped_index_is_judged_by_its_table():
    drop = ["DROP INDEX orders_total"]
    assert check("0001_x", drop, index_table=lambda index: "") == []  # no such index: nothing locked
    assert check("0001_x", drop, index_table=lambda index: "orders", has_rows=lambda table: False) == []
    assert [f.table for f in check("0001_x", drop, index_table=lambda index: "orders")] == ["orders"]
    made = ["CREATE TABLE fresh (a int)", "CREATE INDEX fresh_a ON fresh (a)", "DROP INDEX fresh_a"]
    assert check("0001_x", made) == []


def test_volatility_comes_from_the_catalog_when_one_is_given():
    add = ["ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT my_stamp()"]
    assert check("0001_x", add) == []  # unknown to the built-in list: not volatile
    assert [f.rule.name for f in check("0001_x", add, volatile=lambda name: name == "my_stamp")] == [
        "adding-field-with-volatile-default"]
