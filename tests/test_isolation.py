"""Isolation by construction: no spelling, decorator, nesting or door lets one request's state reach another.

The attacker is the application's role (kit_app) on a pool of one connection, so the next request gets
the very server session the attacker used. Each class of session state is tried in several spellings
(comments in front, a second statement, other letter cases, schema-qualified and quoted calls); the
next request, on both engines, must see none of it. What holds behind a transaction-pooling
PgBouncer (where no reset runs between clients) is the tenant, bound to its transaction, and the time
limit, sent with every statement: those classes are checked there too.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from helpers import admin_execute
from test_tenancy import MODELS, attacked  # noqa: F401 - the seeded database of the attacker suite

from kit import ArgumentError, SessionStateRefused, TenantError, all_tenants, current_tenant, tenant
from kit.config import load_settings
from kit.db import Database
from kit.db.scope import request_scope
from kit.models import DocumentChunk, Member, OrgCredit

LIMIT_MS = 4321  # the statement limit of the pool under attack: a leaked `statement_timeout = 0` shows


def one_connection_pool(db: Database) -> Database:
    """A database on the same server and roles as `db`, with one connection and a known statement limit."""
    small = Database()
    settings = replace(load_settings(), pool_min=0, pool_max=1, statement_timeout_ms=LIMIT_MS)
    small.configure(db.url, settings=settings, door_url=db._door_url)
    return small


def tenant_spellings(victim) -> list[str]:
    return [f"SELECT Set_Config('kit.tenant', '{victim}', false)",
            f"/* c */ SET kit.tenant = '{victim}'",
            f"SELECT 1; SELECT pg_catalog.set_config('kit.tenant', '{victim}', false)",
            # both settings planted for the session: the binding names the attacker's transaction, not the next
            f"SELECT set_config('kit.tenant', '{victim}', false), "
            "set_config('kit.tenant_xact', extract(epoch FROM transaction_timestamp())::text, false)"]


LIMIT_SPELLINGS = ["/* tag */ SET statement_timeout = 0", "SELECT 1; SET statement_timeout = 0",
                   "select SET_CONFIG('statement_timeout', '0', false)", "SET SESSION statement_timeout TO 0"]
TEMP_SPELLINGS = ["CREATE TABLE pg_temp.members (id uuid)", "SELECT 1 AS id INTO TEMP members",
                  "/* c */ CREATE TEMP TABLE members (id uuid)", "SELECT 1; CREATE TEMPORARY TABLE members (id int)"]
LOCK_SPELLINGS = ["SELECT PG_ADVISORY_LOCK(4242)", "/* c */ SELECT pg_try_advisory_lock(4242)",
                  "SELECT 1 FROM pg_catalog.pg_advisory_lock_shared(4242)"]
PATH_SPELLINGS = ["/* c */ SET search_path = pg_temp", "SELECT set_config('search_path', 'pg_catalog', false)"]


def spellings(victim) -> list[tuple[str, str]]:
    """(class, statement) for every spelling the attacker tries."""
    return ([("tenant", s) for s in tenant_spellings(victim)] + [("limit", s) for s in LIMIT_SPELLINGS]
            + [("temp", s) for s in TEMP_SPELLINGS] + [("lock", s) for s in LOCK_SPELLINGS]
            + [("path", s) for s in PATH_SPELLINGS])


BY_CONSTRUCTION_BEHIND_A_POOLER = {"tenant", "limit"}
# asyncio behind PgBouncer: the limit is asyncpg's own command_timeout on every statement (a setting read
# back on the server says nothing of it), so only the tenant is read back there
BY_CONSTRUCTION_BEHIND_A_POOLER_ASYNCIO = {"tenant"}

# What the next request reads: (its SQL, what it must be). Run with no tenant context.
AFTER = {
    "tenant": ("SELECT count(*) FROM members", 0),
    "limit": ("SELECT current_setting('statement_timeout')", f"{LIMIT_MS}ms"),
    "temp": ("SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND pg_table_is_visible(oid)", 0),
    "lock": ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 0),
    "path": ("SELECT current_setting('search_path')", None),  # compared with what a fresh session has
}


def attack(db: Database, statement: str, scoped: bool) -> int:
    """Run the attacker's statement as one request (as a request scope does, or `connection_context`); its pid."""
    if scoped:
        with request_scope(), db.atomic():  # in a request scope state is only sent inside a transaction
            db.execute_sql(statement)
            return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    with db.connection_context():
        db.execute_sql(statement)
        return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("scoped", [False, True], ids=["connection_context", "request_scope"])
def test_no_spelling_of_session_state_reaches_the_next_request(attacked, scoped):  # noqa: F811
    db, _, victim = attacked
    small = one_connection_pool(db)
    try:
        with small.connection_context():
            fresh_path = small.execute_sql("SELECT current_setting('search_path')").fetchone()[0]
        leaks = []
        for kind, statement in spellings(victim):
            if db.pooler and kind not in BY_CONSTRUCTION_BEHIND_A_POOLER:
                continue
            try:
                pid = attack(small, statement, scoped)
            except (SessionStateRefused, ArgumentError):  # refused before it was sent: no leak
                continue
            sql, expected = AFTER[kind]
            with small.connection_context():
                found = small.execute_sql(sql).fetchone()[0]
                same = small.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == pid
            if not db.pooler:
                assert same, "the pool of one opened another connection: the test proves nothing"
            if found != (fresh_path if kind == "path" else expected):
                leaks.append((statement, found))
        assert leaks == []
    finally:
        small.close_all()


def test_a_session_tenant_matches_no_row_even_on_the_same_connection(attacked):  # noqa: F811
    """The policies accept the tenant only in the transaction the kit sent it for, whoever kept the session."""
    db, _, victim = attacked
    with db.connection_context():
        for statement in tenant_spellings(victim):
            try:
                db.execute_sql(statement)
            except (SessionStateRefused, ArgumentError):  # refused before it was sent (several statements, PgBouncer)
                continue
            assert db.execute_sql("SELECT count(*) FROM members").fetchone()[0] == 0
            with db.atomic():
                assert db.execute_sql("SELECT count(*) FROM members").fetchone()[0] == 0
        with tenant(victim):  # the kit's own setting still works on that very session
            assert db.execute_sql("SELECT count(*) FROM members").fetchone()[0] > 0


def test_the_asyncio_database_resets_what_it_cannot_prove_clean(attacked):  # noqa: F811
    from kit.aio import AsyncDatabase

    db, _, victim = attacked
    settings = replace(load_settings(), pool_min=1, pool_max=1, statement_timeout_ms=LIMIT_MS)
    adb = AsyncDatabase(db.url, settings)

    async def main():
        leaks = []
        for kind, statement in spellings(victim):
            if db.pooler and kind not in BY_CONSTRUCTION_BEHIND_A_POOLER_ASYNCIO:
                continue
            try:
                await asyncio.create_task(adb.aexecute_sql(statement))  # one request: a task of its own
            except (SessionStateRefused, ArgumentError):  # refused before it was sent: no leak
                continue
            sql, expected = AFTER[kind]
            if kind == "path":
                continue  # asyncpg resets search_path with the rest; read by the sync test
            found = (await asyncio.create_task(adb.aexecute_sql(sql))).fetchone()[0]
            if found != expected:
                leaks.append((statement, found))
        await adb.close_pool()
        return leaks

    assert asyncio.run(main()) == []


# -- tenant contexts that cannot cross -----------------------------------------------------------------


def test_the_tenant_decorator_keeps_concurrent_threads_apart(attacked):  # noqa: F811
    db, _, victim = attacked
    barrier = threading.Barrier(4)
    results, errors = [], []

    @tenant(victim)
    def job() -> int:
        barrier.wait(10)  # all four inside the same decorated function at once
        with db.connection_context():
            return db.execute_sql("SELECT count(*) FROM members").fetchone()[0]

    def worker() -> None:
        try:
            inside = job()
            with db.connection_context():  # the thread's next job, with no tenant
                after = db.execute_sql("SELECT count(*) FROM members").fetchone()[0]
            results.append((inside, after, current_tenant()))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(results) == 4 and all(inside > 0 and after == 0 and left is None for inside, after, left in results)


def test_a_block_left_in_another_context_is_refused_in_one_sentence():
    import contextvars

    block = tenant("00000000-0000-0000-0000-000000000001")
    contextvars.copy_context().run(block.__enter__)  # entered in one context (a dependency's first half)
    with pytest.raises(TenantError, match="left in a different context from the one that entered it"):
        block.__exit__(None, None, None)  # left in another (its second half, on another thread)
    assert current_tenant() is None


def test_nesting_another_organization_is_refused_unless_said(attacked):  # noqa: F811
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        with tenant(attacker):
            with pytest.raises(TenantError, match=f"organization {victim} was given inside kit.tenant\\({attacker}\\)"):
                with tenant(victim):
                    pass
            assert current_tenant() == attacker
            with tenant(attacker):  # the same one nests
                assert current_tenant() == attacker
            with tenant(victim, switch=True):  # said explicitly
                assert Member.select().count() > 0
            with all_tenants(), tenant(victim):  # through the door, on purpose
                assert current_tenant() == victim
        with all_tenants():
            everyone = Member.select().count()
            with tenant(victim):  # the door is closed again inside a tenant block
                confined = Member.select().count()
        assert 0 < confined < everyone


def test_a_kit_operation_given_another_organization_than_the_context_s_raises(attacked):  # noqa: F811
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS), tenant(attacker):
        for operation in (lambda: DocumentChunk.search(np.ones(1536), organization=victim),
                          lambda: DocumentChunk.hybrid_search("x", np.ones(1536), organization=victim),
                          lambda: OrgCredit.balance_of(victim)):
            with pytest.raises(TenantError, match=f"inside kit.tenant\\({attacker}\\)"):
                operation()


def test_a_reused_query_object_never_serves_one_tenant_s_rows_to_another(attacked):  # noqa: F811
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        admins = Member.select().where(Member.role.in_(["owner", "admin"]))
        raw = Member.raw("SELECT * FROM members")
        with tenant(victim):
            theirs = list(admins)
            assert theirs and len(list(raw)) > 0
            assert list(admins) == theirs  # the same context: its remembered rows
        with tenant(attacker):
            assert list(admins) == [] and len(admins) == 0 and list(raw) == []
        assert list(admins) == [] and list(raw) == []  # no context: nothing either
        with all_tenants():
            assert len(list(admins)) >= len(theirs)


# -- the door: across tenants, and nothing more -------------------------------------------------------

DOOR_ESCAPES = [
    ("ALTER TABLE audit_logs DISABLE TRIGGER USER", "must be owner"),
    ("ALTER TABLE audit_logs DISABLE TRIGGER ALL", "must be owner"),
    ("DELETE FROM audit_logs", "permission denied"),
    ("UPDATE audit_logs SET action = 'x'", "permission denied"),
    ("TRUNCATE audit_logs", "permission denied"),
    ("DROP TABLE members CASCADE", "must be owner"),
    ("ALTER TABLE members ADD COLUMN x int", "must be owner"),
    ("ALTER TABLE document_chunks DISABLE ROW LEVEL SECURITY", "must be owner"),
    ("DROP POLICY kit_tenant_select ON members", "must be owner"),
    ("ALTER DATABASE {database} SET work_mem = '1GB'", "must be owner"),
    ("CREATE TABLE public.door_made (a int)", "permission denied for schema public"),
    ("SET ROLE kit_owner", "permission denied"),
    ("GRANT kit_owner TO kit_door", "permission denied|must have admin option"),
    ("ALTER ROLE kit_door SUPERUSER", "permission denied"),
    ("SELECT * FROM migratehistory", "permission denied"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "permission denied|must be superuser"),
]


@pytest.mark.parametrize(("statement", "refusal"), DOOR_ESCAPES, ids=[e[0][:40] for e in DOOR_ESCAPES])
def test_the_door_crosses_tenants_and_can_do_nothing_more(attacked, statement, refusal):  # noqa: F811
    import peewee

    db = attacked[0]
    with all_tenants():
        assert db.execute_sql("SELECT current_user").fetchone()[0] == "kit_door"
        assert db.execute_sql("SELECT count(DISTINCT organization_id) FROM members").fetchone()[0] > 1
        if db.pooler and statement.startswith("SET "):
            refusal = "would outlive the transaction on a server connection PgBouncer shares"
        with pytest.raises(peewee.DatabaseError, match=refusal), db.atomic():
            db.execute_sql(statement.format(database=db.execute_sql("SELECT current_database()").fetchone()[0]))


# -- kit db check: behaviour, not names ---------------------------------------------------------------

# (what the admin does, what undoes it, the line `kit db check` must print). {db}: the suite's database.
MISCONFIGURATIONS = [
    ("GRANT pg_execute_server_program TO kit_app", "REVOKE pg_execute_server_program FROM kit_app",
     "FAIL kit_app is a member of pg_execute_server_program"),
    ("GRANT kit_owner TO kit_app", "REVOKE kit_owner FROM kit_app", "FAIL kit_app can SET ROLE kit_owner"),
    ('CREATE POLICY sneaky ON members FOR SELECT TO PUBLIC USING (true)', "DROP POLICY sneaky ON members",
     "FAIL tenant table members's policies differ from what its model generates"),
    ("ALTER POLICY kit_tenant_select ON members USING (true)", None,
     "FAIL tenant table members's policies differ from what its model generates"),
    ('ALTER ROLE kit_app IN DATABASE "{db}" SET search_path = pg_catalog',
     'ALTER ROLE kit_app IN DATABASE "{db}" RESET search_path', "FAIL kit_app starts every connection with search_path"),
    ("GRANT pg_read_server_files TO kit_door", "REVOKE pg_read_server_files FROM kit_door",
     "FAIL kit_door is a member of pg_read_server_files"),
    ("GRANT kit_owner TO kit_door", "REVOKE kit_owner FROM kit_door", "FAIL kit_door can SET ROLE kit_owner"),
    ("GRANT pg_execute_server_program TO kit_auth", "REVOKE pg_execute_server_program FROM kit_auth",
     "FAIL kit_auth is a member of pg_execute_server_program"),
    ("GRANT kit_owner TO kit_auth", "REVOKE kit_owner FROM kit_auth", "FAIL kit_auth is a member of kit_owner"),
    ('ALTER ROLE kit_auth IN DATABASE "{db}" SET row_security = off',
     'ALTER ROLE kit_auth IN DATABASE "{db}" RESET row_security', "FAIL kit_auth starts every connection with"),
]


def check_env(test_db_url, owner_url, door_url, **changed) -> dict:
    pooler = {"DATABASE_POOLER": os.environ["DATABASE_POOLER"]} if os.environ.get("DATABASE_POOLER") else {}
    return {"DATABASE_URL": test_db_url, "DATABASE_OWNER_URL": owner_url, "DATABASE_DOOR_URL": door_url, **pooler,
            **changed}


@pytest.mark.parametrize(("do", "undo", "said"), MISCONFIGURATIONS, ids=[m[0][:45] for m in MISCONFIGURATIONS])
def test_kit_db_check_fails_when_a_role_can_do_more_than_it_should(test_db_url, owner_url, door_url, test_admin_url,
                                                                   do, undo, said):
    from test_tenancy import kit_db_check

    from kit.roles import TenantRule, policy_statements

    name = urlsplit(test_db_url).path.lstrip("/")
    policy = "POLICY" in do
    run = owner_url if policy else test_admin_url  # policies are the owner's; roles and grants the admin's
    admin_execute(run, do.format(db=name))
    try:
        found = kit_db_check(**check_env(test_db_url, owner_url, door_url))
        assert found.returncode == 1, found.stdout + found.stderr
        assert said in found.stdout, found.stdout
        assert "Traceback" not in found.stderr
    finally:
        if undo is not None:
            admin_execute(run, undo.format(db=name))
        else:  # the members policies made again, as the migration makes them
            admin_execute(owner_url, *policy_statements(TenantRule("members", "organization_id", better_auth=True)))
    assert kit_db_check(**check_env(test_db_url, owner_url, door_url)).returncode == 0


def test_kit_db_check_fails_a_superuser_owner_and_the_owner_as_the_door(test_db_url, owner_url, door_url,
                                                                         test_admin_url):
    from test_tenancy import kit_db_check

    direct_admin = test_admin_url  # a superuser of the same server and database
    found = kit_db_check(**check_env(test_db_url, direct_admin, door_url))
    assert found.returncode == 1 and "FAIL the owner (DATABASE_OWNER_URL) connects as" in found.stdout, found.stdout
    unset = {k: v for k, v in check_env(test_db_url, owner_url, door_url).items() if k != "DATABASE_DOOR_URL"}
    found = kit_db_check(**unset)
    assert found.returncode == 1, found.stdout
    assert ("FAIL the door of all_tenants() (DATABASE_OWNER_URL, as DATABASE_DOOR_URL is unset) connects as kit_owner"
            in found.stdout), found.stdout


# -- the kit's own locks: the application cannot stall the operator ------------------------------------


@pytest.mark.parametrize("key_name", ["migrate", "maintain"])
def test_a_kit_lock_held_by_the_application_role_stops_the_run_at_once_naming_it(test_db_url, key_name):
    import time

    import psycopg2
    from helpers import owner_database

    from kit import LockHeld
    from kit.maintain import LOCK_KEY as MAINTAIN_KEY
    from kit.maintain import maintain
    from kit.migrate import apply
    from kit.migrate.lock import LOCK_KEY as MIGRATE_KEY

    key = MIGRATE_KEY if key_name == "migrate" else MAINTAIN_KEY
    squatter = psycopg2.connect(test_db_url, application_name="squatter")  # kit_app: advisory locks need no grant
    try:
        with squatter.cursor() as cursor:  # held by an open transaction: behind PgBouncer too, gone when it closes
            cursor.execute("SELECT pg_advisory_xact_lock(%s), pg_backend_pid()", (key,))
            pid = cursor.fetchone()[1]
        began = time.monotonic()
        with pytest.raises(LockHeld) as caught:
            if key_name == "migrate":
                apply(owner_database(), Path(__file__).resolve().parent.parent / "migrations", say=lambda _: None)
            else:
                maintain(owner_database(), [], say=lambda _: None)
        assert time.monotonic() - began < 10
        said = str(caught.value)
        assert f"server pid {pid} (role kit_app, application 'squatter'" in said
        assert "which is not a run of the kit's commands" in said and "pg_terminate_backend" in said
    finally:
        squatter.close()


def test_a_wait_for_another_run_of_the_kit_is_bounded():
    import psycopg2
    from helpers import owner_database

    from kit import LockHeld
    from kit.migrate.lock import LOCK_KEY, take_advisory_lock

    owner = owner_database()
    other = psycopg2.connect(owner.url, application_name="another-run")  # another run of the owner's role
    try:
        with other.cursor() as cursor:  # held by an open transaction, as `hold_lock` holds it
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        said = []
        with owner.atomic(), pytest.raises(LockHeld, match="gave up waiting for another run after"):
            take_advisory_lock(owner, LOCK_KEY, "_xact", "another run", said.append, poll=0.05, wait=0.3)
        assert said and said[0].startswith("waiting for another run to finish (server pid ")
    finally:
        other.close()


# -- full-text under row-level security: the LEAKPROOF marking's threat model (kit/roles.py) -----------


def test_the_kit_s_full_text_queries_stay_far_below_any_depth_that_could_raise(attacked):  # noqa: F811
    from kit.models.rag import MAX_QUERY_WORDS

    db, _, victim = attacked
    text = " ".join(f"w{i}" for i in range(MAX_QUERY_WORDS))  # the largest query hybrid_search accepts
    nodes = db.execute_sql("SELECT numnode(websearch_to_tsquery('english', %s))", (text,)).fetchone()[0]
    assert nodes <= 4 * MAX_QUERY_WORDS  # the deepest tree it can make: far below thousands of levels
    with db.bind_ctx(MODELS), tenant(victim):
        found = DocumentChunk.hybrid_search(text, np.ones(1536), organization=victim, k=3)
    assert len(found) <= 3  # no stack error, whatever the rows hold


def test_code_that_writes_sql_as_the_app_role_can_already_choose_its_tenant(attacked):  # noqa: F811
    """Why a data-dependent `@@` error tells such code nothing: it can read the rows outright (the model's premise)."""
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS), db.atomic():  # its own SQL, in a transaction of its own
        db.execute_sql("SELECT set_config('kit.tenant', %s, true), set_config('kit.tenant_xact', "
                       "extract(epoch FROM transaction_timestamp())::text, true)", (str(victim),))
        assert db.execute_sql("SELECT count(*) FROM members WHERE organization_id = %s", (victim,)).fetchone()[0] > 0


def test_kit_db_roles_with_an_unreachable_admin_url_says_so_in_one_sentence(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env.update(DATABASE_URL="postgresql://kit_app:pw@127.0.0.1:9/kit",
               DATABASE_ADMIN_URL="postgresql://admin:s3cret@127.0.0.1:9/kit")  # nothing listens on port 9
    ran = subprocess.run([sys.executable, "-m", "kit.cli", "db", "roles"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert ran.returncode != 0 and "Traceback" not in ran.stderr and "s3cret" not in ran.stderr, ran.stderr
    assert "could not connect to the database at" in ran.stderr and "to make the kit's roles" in ran.stderr


def test_a_named_cursor_carries_its_tenant_in_a_transaction_and_is_refused_outside_one(attacked):  # noqa: F811
    db, _, victim = attacked
    with tenant(victim):
        with db.atomic():  # the prefix runs first, then the DECLARE: the rows are the query's, the tenant's
            rows = db.execute_sql("SELECT organization_id FROM members", named_cursor=True).fetchall()
        assert rows and {str(r[0]) for r in rows} == {str(victim)}
        with pytest.raises(ArgumentError, match="a named \\(server-side\\) cursor outside a transaction"):
            db.execute_sql("SELECT organization_id FROM members", named_cursor=True)


def test_a_reused_raw_query_that_may_write_is_refused_in_another_context_not_written_twice(attacked):  # noqa: F811
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        bump = Member.raw("UPDATE members SET role = role WHERE organization_id = %s RETURNING id", victim)
        with tenant(victim):
            touched = len(list(bump))
        assert touched > 0
        with tenant(attacker), pytest.raises(TenantError, match="it may write, so it is not run again here"):
            list(bump)
        with tenant(victim):
            assert len(list(bump)) == touched  # its own context: the remembered rows, not a second write
