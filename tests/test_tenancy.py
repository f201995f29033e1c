"""The attacker suite: the application's role (kit_app) against tenant isolation and least privilege.

A database of its own, migrated and seeded by the owner (eight organizations with rows in every tenant
table), plus a tenant model of the user's own. The attacker is a new organization that owns nothing:
in its context, every read, update, delete, insert and COPY aimed at the others' rows (through the
models, `execute_sql`, `read_sql` and search) must reach nothing; without a context, nothing either;
and every way out of the role that a SQL injection would try is refused by the server.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import peewee
import pytest
from conftest import make_database
from helpers import admin_execute, with_dbname
from peewee import ForeignKeyField, TextField

from kit import TenantError, TenantRequired, all_tenants, current_tenant, migrate, tenant
from kit.config import load_settings
from kit.copy import copy_rows
from kit.db import Database
from kit.fixtures import load, parse
from kit.models import ALL_MODELS, DocumentChunk, Organization
from kit.models.base import TimestampedModel, routing_field
from kit.roles import model_access_statements, tenant_rule
from kit.vector import nearest

ROOT = Path(__file__).resolve().parent.parent


class Note(TimestampedModel):
    """A user's own tenant model: its policies come from `Meta.tenant`, as the kit's do."""

    organization = ForeignKeyField(Organization, on_delete="CASCADE")
    body = TextField()

    class Meta:
        table_name = "attack_notes"
        tenant = "organization"


MODELS = [*ALL_MODELS, Note]
TENANT_MODELS = [m for m in MODELS if tenant_rule(m) is not None]


@pytest.fixture(scope="module")
def attacked(admin_url, server_url, owner_server_url, door_server_url):
    """(app database, attacker organization id, victim organization id) on a seeded database of its own."""
    name = make_database(admin_url, "kit_attack")
    owner = Database()
    owner.configure(with_dbname(owner_server_url, name), owner=True)
    app = Database()
    app.configure(with_dbname(server_url, name), door_url=with_dbname(door_server_url, name))
    app.test_owner_url = with_dbname(owner_server_url, name)  # for what only the owner may do (indexes)
    try:
        migrate.apply(owner, ROOT / "migrations", say=lambda _: None)
        load(parse(ROOT / "seeds" / "fixtures" / "dev.yaml"), owner)
        with owner.bind_ctx(MODELS):
            owner.create_tables([Note])
            for statement in model_access_statements(Note):
                owner.execute_sql(statement)
            victim = Organization.get(Organization.slug == "acme").id
            Note.insert_many([{"organization": o.id, "body": f"note of {o.slug}"}
                              for o in Organization.select()]).execute()
        owner.close_all()
        with app.bind_ctx(MODELS):
            attacker = Organization.create(name="Attacker", slug=f"attacker-{secrets.token_hex(3)}").id
            yield app, attacker, victim
    finally:
        app.close_all()
        owner.close_all()
        admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def visible(model, attacker) -> int:
    """Rows the attacker may rightly see: those open to all, or shared ones with no tenant."""
    rule = tenant_rule(model)
    if "select" in rule.open:
        return model.select().count()
    column = model._meta.fields[model._meta.tenant]
    with all_tenants():
        return model.select().where(column == attacker).count() + (
            model.select().where(column.is_null()).count() if "select" in rule.null else 0)


def victim_row(model, victim) -> dict:
    """A row of the victim's, as the owner reads it, with a fresh id: what an attacker would insert."""
    with all_tenants():
        rule = tenant_rule(model)
        query = model.select()
        if rule.parent is None:
            query = query.where(model._meta.fields[model._meta.tenant] == victim)
        row = query.dicts().first()
    assert row is not None, f"the seed has no {model._meta.table_name} row of the victim's"
    row = {k: v for k, v in row.items() if k not in ("id", "search_text")}
    for unique in ("slug", "key", "event_id", "token", "email"):
        if unique in row and isinstance(row[unique], str):
            row[unique] = f"{row[unique]}-{secrets.token_hex(3)}"
    return row


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m._meta.table_name)
def test_in_its_own_context_the_attacker_reaches_no_other_tenants_row(attacked, model):
    db, attacker, victim = attacked
    table = model._meta.table_name
    with db.bind_ctx(MODELS):
        allowed = visible(model, attacker)
        with all_tenants():
            everything = model.select().count()
        assert everything > allowed or table == "organizations", f"{table}: the seed gives the victim no rows"
        with tenant(attacker):
            assert model.select().count() == allowed
            assert db.execute_sql(f'SELECT count(*) FROM "{table}"').fetchone()[0] == allowed
            assert db.read_sql(f'SELECT count(*) FROM "{table}"').fetchone()[0] == allowed
            own = 1 if table == "organizations" else 0  # the attacker's own organization row
            if model._meta.append_only:
                for statement in (f'UPDATE "{table}" SET id = id', f'DELETE FROM "{table}"'):
                    with pytest.raises(peewee.ProgrammingError, match="permission denied"), db.atomic():
                        db.execute_sql(statement)
            else:
                assert db.execute_sql(f'UPDATE "{table}" SET id = id').rowcount == own
                assert model.update(id=model.id).execute() == own
                assert db.execute_sql(f'DELETE FROM "{table}" WHERE id <> %s', (attacker,)).rowcount == 0
                assert model.delete().where(model.id != attacker).execute() == 0
            if "insert" not in tenant_rule(model).open:
                stolen = victim_row(model, victim)
                with pytest.raises(TenantError, match=f"{table}: the row does not belong to the tenant context's"):
                    model.insert(stolen).execute()
                with pytest.raises(TenantError, match=f"{table}: the row does not belong"):
                    copy_rows(model, [stolen], database=db)
    with all_tenants(), db.bind_ctx(MODELS):
        assert model.select().count() == everything  # nothing of anyone's was changed


@pytest.mark.parametrize("model", [m for m in TENANT_MODELS if routing_field(m) is not None],
                         ids=lambda m: m._meta.table_name)
def test_a_read_by_id_in_a_tenant_context_names_the_tenant_and_finds_only_the_tenant_s_row(attacked, model):
    """`get_by_id` inside `kit.tenant(org)` names the tenant's column (Citus routes it to one shard,
    docs/scaling.md); what it finds is what the policy lets the tenant read, and no more."""
    db, attacker, victim = attacked
    column = routing_field(model).column_name
    with db.bind_ctx(MODELS):
        with all_tenants():
            row_id = model.select(model.id).where(routing_field(model) == victim).scalar()
            sql, params = db.sql_of(model.kit_by_id(row_id))
            assert f'"{column}"' not in sql.split(" WHERE ")[1]  # through the door: every tenant's rows, by id alone
            assert model.get_by_id(row_id).id == row_id
        with tenant(victim):
            sql, params = db.sql_of(model.kit_by_id(row_id))
            assert f'"{column}" = %s' in sql.split(" WHERE ")[1] and params[0] == victim.hex
            assert model.get_by_id(row_id).id == row_id
        with tenant(attacker), pytest.raises(model.DoesNotExist):
            model.get_by_id(row_id)


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m._meta.table_name)
def test_without_a_context_tenant_tables_show_nothing_and_writes_are_refused(attacked, model):
    db, attacker, victim = attacked
    table = model._meta.table_name
    rule = tenant_rule(model)
    with db.bind_ctx(MODELS):
        assert current_tenant() is None
        shown = model.select().count()
        with all_tenants():
            expected = model.select().count() if "select" in rule.open else (
                model.select().where(model._meta.fields[model._meta.tenant].is_null()).count()
                if "select" in rule.null else 0)
        assert shown == expected
        if not model._meta.append_only and "update" not in rule.open:
            with pytest.raises(TenantRequired, match=f"{table}: UPDATE of an organization's rows needs a tenant"):
                model.update(id=model.id).execute()
            with pytest.raises(TenantRequired, match=f"{table}: DELETE of an organization's rows"):
                model.delete().execute()
        if "insert" not in rule.open:
            with pytest.raises((TenantRequired, TenantError), match=f"^{table}: "):
                model.insert(victim_row(model, victim)).execute()


def test_a_webhook_delivery_can_name_only_an_endpoint_of_its_own_organization(attacked):
    """A foreign key's check sees every row, whatever the policies: the key itself goes through the organization."""
    from kit.models import WebhookDelivery, WebhookEndpoint

    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        with all_tenants():
            theirs = WebhookEndpoint.select().where(WebhookEndpoint.organization == victim).first()
        with tenant(attacker):
            with pytest.raises(peewee.IntegrityError, match="webhook_deliveries_organization_id_endpoint_id_fkey"):
                WebhookDelivery.create(organization=attacker, endpoint=theirs.id, event_type="member.created")
            with pytest.raises(TenantError):  # and the victim's organization is not the attacker's to write
                WebhookDelivery.create(organization=victim, endpoint=theirs.id, event_type="member.created")
            mine = WebhookEndpoint.create(organization=attacker, url="https://hooks.attacker.test", secret="s")
            WebhookDelivery.create(organization=attacker, endpoint=mine.id, event_type="member.created")
            assert WebhookDelivery.select().count() == 1


def test_search_in_a_tenant_context_never_returns_another_tenants_chunk(attacked):
    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        with all_tenants():
            target = DocumentChunk.select().where(DocumentChunk.organization == victim).first()
        assert target is not None
        query = np.asarray(target.embedding)
        with tenant(attacker):
            assert nearest(DocumentChunk.select(), DocumentChunk.embedding, query, k=5) == []
            assert nearest(DocumentChunk.select(), DocumentChunk.embedding, query, k=5, exact=True) == []
            assert DocumentChunk.search(query, organization=attacker) == []
            assert DocumentChunk.hybrid_search(target.content, query, organization=attacker) == []
        found = DocumentChunk.search(query, organization=victim, k=3)  # asked for the victim's, by the app itself
        assert found and found[0].id == target.id


ESCAPES = [
    ("SET session_replication_role = replica", "permission denied"),
    ("ALTER TABLE audit_logs DISABLE TRIGGER USER", "must be owner"),
    ("ALTER TABLE document_chunks DISABLE ROW LEVEL SECURITY", "must be owner"),
    ("ALTER TABLE document_chunks NO FORCE ROW LEVEL SECURITY", "must be owner"),
    ("DROP POLICY kit_tenant_select ON document_chunks", "must be owner"),
    ("COPY audit_logs FROM PROGRAM 'id'", "permission denied|must be superuser"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "permission denied|must be superuser"),
    ("COPY (SELECT 1) TO '/tmp/kit-attack'", "permission denied|must be superuser"),
    ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
    ("SET ROLE kit_owner", "permission denied"),
    ("SET SESSION AUTHORIZATION kit_owner", "permission denied"),
    ("ALTER ROLE kit_app BYPASSRLS", "permission denied"),
    ("CREATE FUNCTION public.escape() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
     "permission denied for schema public"),
    ("CREATE TABLE public.escape (n int)", "permission denied for schema public"),
    ("TRUNCATE document_chunks", "permission denied"),
    ("TRUNCATE audit_logs", "permission denied"),
    ("UPDATE audit_logs SET action = 'x'", "permission denied"),
    ("DELETE FROM audit_logs", "permission denied"),
    ("SELECT * FROM migratehistory", "permission denied"),
    ("CREATE SCHEMA escape", "permission denied for database"),
    ("LOAD 'plpgsql'", "permission denied|access to library"),
    ("CREATE ROLE escape", "permission denied"),
]


@pytest.mark.parametrize(("statement", "refusal"), ESCAPES, ids=[e[0][:40] for e in ESCAPES])
def test_every_escape_from_the_app_role_is_refused_by_the_server(attacked, statement, refusal):
    db = attacked[0]
    if db.pooler and statement.startswith(("SET ", "LOAD ")):  # behind PgBouncer the kit refuses first
        refusal = "would outlive the transaction on a server connection PgBouncer shares"
    with pytest.raises(peewee.DatabaseError, match=refusal), db.atomic():
        db.execute_sql(statement)


def test_row_security_cannot_be_switched_off_by_a_setting(attacked):
    db, attacker, _ = attacked
    with db.atomic():
        db.execute_sql("SET LOCAL row_security = off")
        with pytest.raises(peewee.DatabaseError, match="row-level security"):
            db.execute_sql("SELECT count(*) FROM document_chunks")


def test_a_partition_is_not_a_way_around_its_parents_policies(attacked):
    db = attacked[0]
    with db.bind_ctx(MODELS), all_tenants():
        partition = db.execute_sql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                   "WHERE i.inhparent = 'audit_logs'::regclass LIMIT 1").fetchone()[0]
    with pytest.raises(peewee.ProgrammingError, match="permission denied"), db.atomic():
        db.execute_sql(f'SELECT count(*) FROM "{partition}"')


def test_no_tenant_outlives_its_statement_or_transaction_on_a_pooled_connection(attacked):
    db, attacker, victim = attacked
    setting = "SELECT coalesce(current_setting('kit.tenant', true), ''), pg_backend_pid()"
    with db.connection_context():
        with tenant(victim):
            assert db.execute_sql(setting).fetchone()[0] == str(victim)
        assert db.execute_sql(setting).fetchone()[0] == ""  # the next statement, same connection: none
        with db.atomic():
            with tenant(victim):
                db.execute_sql("SELECT 1")
            assert db.execute_sql(setting).fetchone()[0] == ""  # left the block inside the transaction
            with tenant(attacker):
                db.execute_sql("SELECT 1")
                try:
                    with db.atomic(), tenant(victim, switch=True):  # a savepoint rolled back takes its setting
                        db.execute_sql("SELECT 1")
                        raise RuntimeError
                except RuntimeError:
                    pass
                assert db.execute_sql(setting).fetchone()[0] == str(attacker)
        assert db.execute_sql(setting).fetchone()[0] == ""  # after COMMIT


def test_no_tenant_leaks_across_threads_sharing_a_small_pool(attacked):
    db, _, _ = attacked
    with db.bind_ctx(MODELS), all_tenants():
        organizations = [o.id for o in Organization.select().limit(6)]
        expected = {o: Note.select().where(Note.organization == o).count() for o in organizations}
    small = Database()
    small.configure(db.url, settings=replace(load_settings(), pool_min=0, pool_max=3), door_url=db._door_url)
    pids, leaks, errors = set(), [], []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(30):
                org = organizations[(n + i) % len(organizations)]
                with tenant(org), small.connection_context():
                    rows = small.execute_sql("SELECT organization_id, pg_backend_pid() FROM attack_notes").fetchall()
                    inside = small.execute_sql("SELECT count(*) FROM attack_notes").fetchone()[0]
                    with small.atomic():
                        small.execute_sql("SELECT count(*) FROM attack_notes")
                with lock:
                    pids.update(pid for _, pid in rows)
                    leaks.extend(row for row in rows if uuid.UUID(str(row[0])) != org)
                    if inside != expected[org]:
                        leaks.append((org, inside))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    small.close_all()
    assert not errors, errors
    assert leaks == []
    # 240 tenant switches on at most three connections (behind PgBouncer, its server connections): reused
    assert 1 <= len(pids) <= 24


def explain(db, query, ordered: bool = False) -> str:
    """The plan of `query`; `ordered`: as if the table were large (a sort costs more than a graph walk)."""
    sql, params = query.sql()
    with db.atomic():
        db.execute_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        if ordered:  # a seeded table is tiny: ask whether the graph can serve under the policies
            db.execute_sql("SET LOCAL enable_sort = off")
        return "\n".join(r[0] for r in db.execute_sql("EXPLAIN " + sql, params).fetchall())


def test_every_search_plan_keeps_its_index_and_exact_recall_under_row_level_security(attacked):
    from kit.vector import ensure_tenant_indexes
    from kit.vector.search import forget
    from kit.vector.tenants import tenant_index_name

    db, attacker, victim = attacked
    with db.bind_ctx(MODELS):
        with all_tenants():
            rows = list(DocumentChunk.select(DocumentChunk.id, DocumentChunk.embedding)
                        .where(DocumentChunk.organization == victim))
        assert len(rows) >= 10
        vectors = np.stack([np.asarray(r.embedding, dtype=np.float64) for r in rows])
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        q = vectors[0] + 0.01
        truth = [rows[i].id for i in np.argsort(1 - unit @ (q / np.linalg.norm(q)))[:5]]
        mine = DocumentChunk.select(DocumentChunk.id).where(DocumentChunk.organization == victim)
        with tenant(victim):
            exact = nearest(mine, DocumentChunk.embedding, q, k=5)
            assert exact.plan.method == "exact" and [r.id for r in exact] == truth  # recall 1.0
            assert "documentchunk_organization_id" in explain(db, exact.plan.query)  # the tenant's b-tree
            graph = nearest(mine, DocumentChunk.embedding, q, k=5, exact=False)
            assert len(graph) == 5 and "document_chunks_embedding_hnsw" in explain(db, graph.plan.query, True)
        owner = Database()
        owner.configure(db.test_owner_url, owner=True)  # kit maintain's tenant graph, made by the owner
        with owner.bind_ctx(MODELS):
            made = ensure_tenant_indexes(DocumentChunk.embedding, DocumentChunk.organization, min_rows=len(rows))
        try:
            assert tenant_index_name(DocumentChunk.embedding, victim) in made.created
            forget()
            with tenant(victim):
                own = nearest(mine, DocumentChunk.embedding, q, k=5, exact=False)
                assert tenant_index_name(DocumentChunk.embedding, victim) in explain(db, own.plan.query, True)
                assert len(own) == 5
        finally:
            with owner.bind_ctx(MODELS):
                ensure_tenant_indexes(DocumentChunk.embedding, DocumentChunk.organization, min_rows=10**9)
            owner.close_all()


def kit_db_check(**environ: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env.update(environ)
    return subprocess.run([sys.executable, "-m", "kit.cli", "db", "check"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_kit_db_check_passes_the_kit_s_own_setup_and_fails_a_superuser_run_time_role(test_db_url, owner_url,
                                                                                      door_url, test_admin_url):
    pooler = {"DATABASE_POOLER": os.environ["DATABASE_POOLER"]} if os.environ.get("DATABASE_POOLER") else {}
    clean = kit_db_check(DATABASE_URL=test_db_url, DATABASE_OWNER_URL=owner_url, DATABASE_DOOR_URL=door_url, **pooler)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "ok   run-time role kit_app is not a superuser" in clean.stdout
    assert "ok   every tenant table has forced row-level security and exactly the policies its model generates" \
        in clean.stdout
    probe = f"kit_probe_{secrets.token_hex(3)}"
    admin_execute(test_admin_url, f"CREATE ROLE {probe} LOGIN SUPERUSER")
    try:
        direct = test_admin_url.replace("postgres@", f"{probe}@", 1)  # the server itself, not a pooler
        found = kit_db_check(DATABASE_URL=direct)
        assert found.returncode == 1, found.stdout + found.stderr
        assert f"FAIL run-time role {probe} is a superuser" in found.stdout
        assert f"FAIL {probe} bypasses row-level security" in found.stdout
        wrong = kit_db_check(DATABASE_URL=test_db_url.replace("kit_app@", "kit_owner@", 1),
                             DATABASE_POOLER="" if pooler else "pgbouncer")  # the pooler setting is wrong
        assert wrong.returncode == 1 and "FAIL kit_owner owns" in wrong.stdout and "FAIL DATABASE_POOLER" in wrong.stdout
    finally:
        admin_execute(test_admin_url, f"DROP ROLE {probe}")


def test_an_audit_entry_of_no_organization_is_recorded_by_the_app_and_read_back_only_by_the_owner(attacked):
    from kit.models import AuditLog

    db, attacker, _ = attacked
    with db.bind_ctx(MODELS):
        entry = AuditLog.record("user.signed_in", ip="10.0.0.9", method="password")
        with tenant(attacker):
            assert AuditLog.select().where(AuditLog.id == entry.id).count() == 0
        assert AuditLog.select().where(AuditLog.id == entry.id).count() == 0
        with all_tenants():
            stored = AuditLog.get_by_id(entry.id)
        assert (stored.ip, stored.metadata, stored.organization_id) == ("10.0.0.9", {"method": "password"}, None)


def test_policies_and_generated_migration_code_follow_the_models_meta_options():
    from kit.migrate.autogen import access_to_code, policies_to_code
    from kit.models import AuditLog, WebhookDelivery
    from kit.roles import TenantRule, policy_statements

    organizations = "\n".join(policy_statements(tenant_rule(Organization)))
    assert 'FOR SELECT TO PUBLIC USING (true)' in organizations and 'FOR INSERT TO PUBLIC WITH CHECK (true)' in organizations
    assert '"kit_tenant_update" ON "organizations" FOR UPDATE TO PUBLIC USING ("id" = (SELECT nullif(' in organizations
    assert "FORCE ROW LEVEL SECURITY" in organizations and "TO kit_auth USING (true)" in organizations
    replies = TenantRule("replies", "note_id", ("attack_notes", "id"))  # rows whose tenant is their parent's
    assert 'EXISTS (SELECT 1 FROM "attack_notes" p WHERE p."id" = "replies"."note_id")' in "\n".join(
        policy_statements(replies))
    deliveries = "\n".join(policy_statements(tenant_rule(WebhookDelivery)))  # its own organization (migration 011)
    assert '"organization_id" = (SELECT nullif(' in deliveries and "EXISTS (SELECT" not in deliveries
    audit = policy_statements(tenant_rule(AuditLog))
    assert [s for s in audit if "IS NULL" in s] == [s for s in audit if "FOR INSERT" in s]  # NULL rows: insert only
    assert access_to_code(AuditLog) == "kit_ops.grant_access(migrator, 'audit_logs', append_only=True)"
    assert access_to_code(Note) == "kit_ops.grant_access(migrator, 'attack_notes')"
    assert policies_to_code(tenant_rule(Note)) == "kit_ops.tenant_policies(migrator, 'attack_notes', 'organization_id')"
    assert policies_to_code(replies) == (
        "kit_ops.tenant_policies(migrator, 'replies', 'note_id', parent=('attack_notes', 'id'))")


def test_a_statement_that_refuses_a_transaction_block_runs_inside_a_tenant_context(attacked):
    db, attacker, _ = attacked
    with tenant(attacker):
        db.execute_sql("VACUUM attack_notes")  # no setting rides before it: it would be a transaction block
        assert db.execute_sql("SELECT count(*) FROM attack_notes").fetchone()[0] == 0


def test_databases_that_are_gone_leave_no_hook_behind():
    import gc

    from kit import tenancy

    before = len(tenancy._on_leave)
    made = [Database() for _ in range(50)]
    assert len(tenancy._on_leave) == before + 50
    del made
    gc.collect()
    with all_tenants():
        pass
    assert len(tenancy._on_leave) <= before


def test_a_process_whose_first_query_is_inside_all_tenants_runs_it(test_db_url, owner_url):
    """Configuring the pool on first use inside the door once waited for its own lock for ever."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    env.update(DATABASE_URL=test_db_url, DATABASE_OWNER_URL=owner_url)
    code = ("import kit\nfrom kit.models import Organization\n"
            "with kit.all_tenants():\n    print(Organization.select().count() >= 0)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_a_pool_given_its_url_in_code_has_no_door_to_another_database(test_db_url, door_url):
    """`Database().configure(url)` without door_url: `all_tenants()` is refused in one sentence rather than
    reading the environment's database (or the embedded server's) through the door; with door_url it reads."""
    import asyncio

    from kit import ConfigError
    from kit.aio import AsyncDatabase

    db = Database()
    db.configure(test_db_url)
    try:
        with all_tenants(), pytest.raises(ConfigError) as refused:
            db.execute_sql("SELECT count(*) FROM organizations")
        message = str(refused.value)
        assert "door_url=" in message and message.endswith("nothing was sent") and "\n" not in message
        db.configure(test_db_url, door_url=door_url)
        with all_tenants():
            assert db.execute_sql("SELECT current_user").fetchone()[0] == "kit_door"
    finally:
        db.close_all()

    async def main() -> str:
        adb = AsyncDatabase(test_db_url)
        try:
            with all_tenants(), pytest.raises(ConfigError, match="door_url="):
                await adb.run(lambda: adb.execute_sql("SELECT 1"))
            adb.configure(test_db_url, door_url=door_url)
            with all_tenants():
                return (await adb.run(lambda: adb.execute_sql("SELECT current_user").fetchone()))[0]
        finally:
            await adb.close_pool()

    assert asyncio.run(main()) == "kit_door"
