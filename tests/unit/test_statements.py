"""What a statement leaves on its connection (kit.db.statements): the classification, table-driven."""

from __future__ import annotations

import pytest

from kit.db.statements import NO_TRANSACTION_BLOCK, POOLER_REFUSES, RAW_BEGIN, RAW_END, session_change

CASES = [
    ("SELECT 1", None),
    ("  select * from users", None),
    ("SET search_path = x", "settings (SET)"),
    ("set\ttime zone 'UTC'", "settings (SET)"),
    ("RESET ALL", "settings (SET)"),
    ("SET LOCAL statement_timeout = 5", None),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
    ("SET CONSTRAINTS ALL DEFERRED", None),
    ("LISTEN jobs", "LISTEN registrations"),
    ("PREPARE q AS SELECT 1", "prepared statements"),
    ("DECLARE c CURSOR FOR SELECT 1", "cursors"),
    ("CREATE TEMP TABLE t (a int)", "temporary tables"),
    ("create local temporary table t (a int)", "temporary tables"),
    ("CREATE TABLE temps (a int)", None),
    ("LOAD 'auto_explain'", "loaded libraries"),
    ("SELECT pg_advisory_lock(1)", "advisory locks"),
    ("SELECT pg_advisory_xact_lock(1)", None),  # ends with its transaction
    ("SELECT pg_try_advisory_lock(1)", "advisory locks"),
    ("SELECT set_config('a.b', 'c', false)", "settings (set_config)"),
    ("BEGIN", RAW_BEGIN),
    ("start transaction read only", RAW_BEGIN),
    ("COMMIT", RAW_END),
    ("END", RAW_END),
    ("ROLLBACK", RAW_END),
    ("ROLLBACK TO SAVEPOINT s", None),
    ("COMMIT PREPARED 'x'", None),
]


@pytest.mark.parametrize("sql, kind", CASES)
def test_session_change(sql, kind):
    assert session_change(sql) == kind


def test_a_long_statement_is_classified_without_scanning_it_twice():
    assert session_change("SELECT " + "1," * 500_000 + "1") is None


def test_every_kind_pgbouncer_refuses_says_what_to_use_instead():
    refused = {kind for _, kind in CASES if kind in POOLER_REFUSES}
    assert refused == {"settings (SET)", "LISTEN registrations", "prepared statements", "temporary tables",
                       "loaded libraries", "advisory locks"}
    assert all(POOLER_REFUSES[kind] for kind in refused)


@pytest.mark.parametrize("sql, alone", [
    ("VACUUM audit_logs", True), ("CREATE INDEX CONCURRENTLY i ON t (a)", True),
    ("create unique index concurrently i on t (a)", True), ("DROP INDEX CONCURRENTLY i", True),
    ("REINDEX INDEX CONCURRENTLY i", True), ("DISCARD ALL", True), ("CREATE DATABASE x", True),
    ("CREATE INDEX i ON t (a)", False), ("SELECT 'vacuum'", False),
])
def test_statements_that_refuse_a_transaction_block(sql, alone):
    assert bool(NO_TRANSACTION_BLOCK.match(sql)) is alone
