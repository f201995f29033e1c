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


# -- leaves_nothing: the fail-closed rule that decides a connection's reset (kit.db.clean) ---------------

from kit.db.clean import leaves_nothing  # noqa: E402

CLEAN = [
    "SELECT 1",
    "select 1 ;",
    'SELECT "t1"."id" FROM "members" AS "t1" WHERE ("t1"."id" = %s) LIMIT %s',
    'INSERT INTO "members" ("id", "a") VALUES (%s, %s) RETURNING "members"."id"',
    'INSERT INTO public."t" ("a") VALUES (%s)',
    'UPDATE "t" SET "a" = %s WHERE ("t"."id" = %s)',
    'DELETE FROM "t" WHERE ("t"."id" = %s)',
    "with x as (select 1) select * from x",
    'SELECT lower("x") FROM t WHERE a IN (%s, %s)',
    "SELECT 'set_config(' ",  # a literal is a value, not a call
    "SELECT 'it''s; SET x = 1'",
    "SET LOCAL statement_timeout = 5",
    "SET LOCAL statement_timeout = 5000; SET LOCAL hnsw.ef_search = 40; SELECT 1",
    "SAVEPOINT s1", "RELEASE SAVEPOINT s1", "ROLLBACK TO SAVEPOINT s1", "BEGIN", "COMMIT",
    "SELECT CAST(%s AS vector(3))", "SELECT x::numeric(10,2)", "SELECT 1 FROM t FOR UPDATE", "SELECT (SELECT 1)",
    "SELECT * FROM unnest(%s) AS u(a)", "SHOW work_mem", "SELECT pg_advisory_xact_lock(1)",
    'SELECT vector_send("t1"."embedding") FROM "document_chunks" AS "t1"',
    "SELECT count(*) FROM t WHERE x = $1",
]
NOT_CLEAN = [
    "/* tag */ SET statement_timeout = 0", "SET statement_timeout = 0", "set\tstatement_timeout to 0",
    "SELECT 1; SET statement_timeout = 0", "SELECT 1;SET x = 1", "SELECT 1 -- x",
    "Set_Config('kit.tenant', 'x', false)", "SELECT Set_Config('kit.tenant', 'x', false)",
    "SELECT SET_CONFIG('kit.tenant', 'x', false)", "SELECT set_config ('a', 'b', false)",
    "SELECT set_config\n('a', 'b', false)", "SELECT pg_catalog.set_config('a', 'b', false)",
    "SELECT \"set_config\"('a', 'b', false)", "SELECT U&\"\\0073et_config\"('a', 'b', false)",
    "CREATE TABLE pg_temp.x (a int)", "CREATE TEMP TABLE x (a int)", "SELECT * INTO TEMP t FROM x",
    "SELECT 1 INTO x", "WITH a AS (SELECT 1) SELECT * INTO t FROM a",
    "SELECT pg_advisory_lock(1)", "select PG_TRY_ADVISORY_LOCK(1)", "SELECT pg_advisory_lock_shared(1)",
    "LISTEN x", "PREPARE q AS SELECT 1", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "LOAD 'x'", "RESET ALL",
    "select $$a$$", "SELECT $f$x$f$", "select E'\\\\'", "SELECT E'\\'; SET x = 1; --'", "SELECT 'a",
    "COMMIT PREPARED 'x'", "SELECT dblink('a')", "DO $$ BEGIN PERFORM set_config('a', 'b', false); END $$",
    "CALL p()", "COPY t FROM STDIN", "SELECT my_function()", "", ";",
    "SET SESSION statement_timeout = 0", "SET search_path = pg_temp, public", "DISCARD PLANS",
]


@pytest.mark.parametrize("sql", CLEAN)
def test_statements_proven_to_leave_nothing(sql):
    assert leaves_nothing(sql)


@pytest.mark.parametrize("sql", NOT_CLEAN)
def test_any_spelling_not_proven_clean_is_reset(sql):
    assert not leaves_nothing(sql)


# -- statement_count: how many statements the server will find in one string ----------------------------

from kit.db.clean import statement_count  # noqa: E402

COUNTS = [
    ("SELECT 1", 1), ("SELECT 1;", 1), ("SELECT 1; SELECT 2", 2), ("SET LOCAL statement_timeout=0; SELECT 1", 2),
    ("SELECT ';'", 1), ("SELECT 'a'';b'", 1), ('SELECT ";" FROM t', 1), ("SELECT 1 -- ; x\n", 1),
    ("SELECT 1 /* ; /* ; */ ; */", 1), ("/* a /* b */ c */ ; SELECT 1", 1), ("DO $$ BEGIN PERFORM 1; END $$", 1),
    ("DO $f$ a; b $f$; SELECT 1", 2), ("SELECT E'\\'; SELECT 2; --'", 1), ("SELECT E'\\\\'; SELECT 2", 2),
    ("SELECT $1; SELECT $2", 2), ("", 0), (";;", 0), ("  ; SELECT 1 ;  ", 1), ("select e'a\\\\\\'b'; x", 2),
    ("SELECT 1 ;-- tail", 1), ("SELECT x$1; y", 2), ("SELECT 'open; SELECT 2", 2), ("/* open; SELECT 2", 2),
    ("SELECT $q$ open; SELECT 2", 2),
]


@pytest.mark.parametrize("sql, count", COUNTS)
def test_statement_count_reads_the_string_as_the_server_does(sql, count):
    assert statement_count(sql) == count


@pytest.mark.parametrize("sql, allowed", [
    ("CREATE TEMP TABLE x (a int) ON COMMIT DROP", True),
    ("create temporary table x (a int) on  commit\\ndrop", True),
    ("/* on commit drop */ CREATE TEMP TABLE x (a int)", False),  # a comment drops nothing
    ("CREATE TEMP TABLE x (a text DEFAULT 'on commit drop')", False),  # nor a literal
    ('CREATE TEMP TABLE "on commit drop" (a int)', False),  # nor a name
])
def test_behind_a_pooler_only_a_temporary_table_that_really_drops_at_commit_is_let_through(sql, allowed):
    from kit.db.contract import pooler_refuses

    assert (pooler_refuses("temporary tables", sql.replace("\\n", "\n"), "pgbouncer", True) is None) is allowed
    assert pooler_refuses("temporary tables", sql, "pgbouncer", False) is not None  # outside a transaction: never


@pytest.mark.parametrize("sql, reads", [
    ("SELECT * FROM members", True), ('select "update" from t', True), ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", False), ("SELECT 1 INTO t", False),
    ("UPDATE t SET a = 1 RETURNING *", False), ("SELECT nextval(%s)", False), ("SELECT 1; SELECT 2", False),
    ("SELECT my_function()", False), ("DELETE FROM t RETURNING *", False),
])
def test_only_reads_is_proven_or_refused(sql, reads):
    from kit.db.clean import only_reads

    assert only_reads(sql) is reads
