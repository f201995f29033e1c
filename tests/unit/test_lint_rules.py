"""`kit migrate lint`'s rules (kit.migrate.lint.check) on SQL alone: what each catches, and the safe form it passes."""

from __future__ import annotations

import pytest

from kit.migrate.lint import RULES, check

CAUGHT = [
    ("CREATE INDEX i ON users (email)", "require-concurrent-index-creation"),
    ("CREATE INDEX CONCURRENTLY i ON users (email)", None),
    ("CREATE INDEX i ON fresh (a)", None),  # made in the same migration: empty, nothing to wait for
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
