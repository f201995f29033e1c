"""Migrations on empty databases of their own: generation, round trips, locking, checksums, drift, recovery."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import peewee as pw
import psycopg2
import pytest
from helpers import as_owner, ended, observes_server_sessions, query
from peewee_migrate.router import Router

from kit import migrate
from kit.db import database
from kit.migrate import MigrationError, autogen, history
from kit.migrate.schema import compare
from kit.models import ALL_MODELS
from kit.vector import HalfVectorField, HNSWIndex, IVFFlatIndex, VectorField

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}


PROJECT = sorted(p.stem for p in (ROOT / "migrations").glob("0*.py"))  # the project's migrations


@pytest.fixture
def migrations(tmp_path) -> Path:
    """A copy of the project's migrations that a test may edit."""
    target = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def pw_migrate(db_url: str, cwd: Path) -> subprocess.Popen:
    """Plain `pw_migrate migrate` in `cwd` (which holds migrations/conf.py) against `db_url`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = db_url
    return subprocess.Popen([sys.executable, "-m", "peewee_migrate", "migrate"], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def history_counts(db) -> list[tuple[str, int]]:
    return sorted(db.execute_sql(f"SELECT name, count(*) FROM {history.HISTORY_TABLE} GROUP BY name").fetchall())


def tables(db) -> set[str]:
    """The tables, partitions left out (audit_logs and ai_usage have monthly ones)."""
    return {name for (name,) in db.execute_sql(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
        "AND NOT relispartition").fetchall()}


def kit_cli(db_url: str, cwd: Path, *args: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = db_url
    return subprocess.Popen([sys.executable, "-m", "kit.cli", *args], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_generating_from_the_models_against_the_migrated_database_finds_no_changes(migrations):
    autogen.register()
    with as_owner() as owner:  # the history is the owner's: migrations run as kit_owner
        router = Router(owner, migrate_dir=migrations, ignore=migrate.executor.IGNORED_MODELS)
        assert router.create("should_be_empty", auto=list(ALL_MODELS)) is None
    assert sorted(p.name for p in migrations.glob("0*.py")) == sorted(p.name for p in (ROOT / "migrations").glob("0*.py"))


def test_the_migrated_test_database_matches_the_models():
    assert compare(database, ALL_MODELS) == []
    with as_owner() as owner:
        assert migrate.verify(owner, ROOT / "migrations") == []


def test_migrate_all_rollback_all_migrate_all_on_an_empty_database(fresh_database, migrations):
    db = fresh_database
    assert migrate.apply(db, migrations, **QUIET) == PROJECT
    bookkeeping = {history.HISTORY_TABLE, history.CHECKSUM_TABLE, history.STEPS_TABLE}  # the migrations' own
    assert len(tables(db) - bookkeeping) == 28
    # all but 001: pgvector is the admin's (it is not a trusted extension), so the owner cannot drop it
    assert migrate.rollback(db, migrations, count=len(PROJECT) - 1, **QUIET) == PROJECT[:0:-1]
    assert tables(db) <= bookkeeping
    assert db.execute_sql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 1
    with pytest.raises(MigrationError) as refused:  # 001 as the owner: one sentence, 001 still applied
        migrate.rollback(db, migrations, count=1, **QUIET)
    said = str(refused.value)
    assert "\n" not in said and "rolling back 001_enable_vector needs a privilege the owner does not have" in said
    assert "must be owner of extension vector" in said and "001_enable_vector is still applied" in said
    assert [s.name for s in migrate.status(db, migrations) if s.state == "applied"] == PROJECT[:1]
    assert migrate.apply(db, migrations, **QUIET) == PROJECT[1:]
    assert migrate.verify(db, migrations) == []


def test_generated_code_for_vector_fields_and_index_objects_is_valid_and_complete(fresh_database, tmp_path):
    """Generate a migration from models with every kit addition, apply it, and compare with the models."""
    db = fresh_database
    db.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")  # the database's admin installed it

    class Owner(pw.Model):
        name = pw.TextField(default="x", constraints=[pw.SQL("DEFAULT 'x'"), pw.Check("name <> ''")])
        age = pw.IntegerField(default=1, constraints=[pw.Check("age > 0", name="gen_owners_age_pos")])

        class Meta:
            database = db
            table_name = "gen_owners"

    class Doc(pw.Model):
        owner = pw.ForeignKeyField(Owner, null=True, on_delete="SET NULL")
        embedding = VectorField(384)
        half = HalfVectorField(1024, null=True)
        slug = pw.TextField()

        class Meta:
            database = db
            table_name = "gen_docs"

    Doc.add_index(HNSWIndex(Doc.embedding, metric="inner_product", m=8, ef_construction=32))
    Doc.add_index(IVFFlatIndex(Doc.half, metric="l2", lists=4))
    Doc.add_index(pw.ModelIndex(Doc, (Doc.owner, Doc.slug), unique=True, nulls_distinct=False,
                                name="gen_docs_owner_slug"))

    autogen.register()
    directory = tmp_path / "gen"
    directory.mkdir()
    router = Router(db, migrate_dir=directory)
    name = router.create("generated", auto=[Owner, Doc])
    code = (directory / f"{name}.py").read_text()
    assert "kit_ops.keep_updated_at" not in code  # neither table has updated_at
    assert "kit_vector.VectorField(dimensions=384)" in code
    assert "kit_vector.HalfVectorField(dimensions=1024, null=True)" in code
    assert "method='hnsw', metric='inner_product', m=8, ef_construction=32" in code
    assert "nulls_distinct=False" in code and "pw.Field(" not in code
    assert """pw.SQL('CONSTRAINT "gen_owners_age_pos" CHECK (age > 0)')""" in code  # a named check
    assert migrate.apply(db, directory, **QUIET) == [name]
    with pytest.raises(pw.IntegrityError, match="gen_owners_age_pos"), db.atomic():
        db.execute_sql("INSERT INTO gen_owners (name, age) VALUES ('a', 0)")
    assert compare(db, [Owner, Doc], report_extra=False) == []
    fresh_router = Router(db, migrate_dir=directory)
    assert fresh_router.create("again", auto=[Owner, Doc]) is None  # the migrated state matches the models
    migrate.rollback(db, directory, **QUIET)
    assert "gen_docs" not in tables(db)


def test_a_changed_check_or_default_is_generated_applied_and_rolled_back(fresh_database, tmp_path):
    db = fresh_database

    def plan_model(statuses: tuple[str, ...], default: str) -> type[pw.Model]:
        listed = ", ".join(f"'{s}'" for s in statuses)

        class Plan(pw.Model):
            status = pw.TextField(default=default, constraints=[pw.Check(f"status IN ({listed})"),
                                                                pw.SQL(f"DEFAULT '{default}'")])
            seats = pw.IntegerField(constraints=[pw.Check("seats > 0")])

            class Meta:
                database = db
                table_name = "gen_plans"
        return Plan

    autogen.register()
    directory = tmp_path / "gen"
    directory.mkdir()
    before, after = plan_model(("draft", "live"), "draft"), plan_model(("draft", "live", "retired"), "live")
    first = Router(db, migrate_dir=directory).create("plans", auto=[before])
    migrate.apply(db, directory, **QUIET)
    second = Router(db, migrate_dir=directory).create("more_statuses", auto=[after])
    code = (directory / f"{second}.py").read_text()
    assert "kit_ops.set_constraints(migrator, 'gen_plans', 'status'" in code and "'seats'" not in code
    assert migrate.apply(db, directory, **QUIET) == [second]
    assert compare(db, [after], report_extra=False) == []
    db.execute_sql("INSERT INTO gen_plans (seats) VALUES (1)")
    assert db.execute_sql("SELECT status FROM gen_plans").fetchone()[0] == "live"
    db.execute_sql("UPDATE gen_plans SET status = 'retired'")
    with pytest.raises(pw.IntegrityError, match="gen_plans_seats_check"), db.atomic():
        db.execute_sql("UPDATE gen_plans SET seats = 0")  # the other column's check is untouched
    assert Router(db, migrate_dir=directory).create("again", auto=[after]) is None
    db.execute_sql("DELETE FROM gen_plans")
    assert migrate.rollback(db, directory, **QUIET) == [second]
    assert compare(db, [before], report_extra=False) == [] and first


def test_two_kit_migrate_processes_at_once_apply_each_migration_once(fresh_database, migrations):
    url = fresh_database.scratch_url
    procs = [kit_cli(url, migrations.parent, "migrate", "--dir", str(migrations)) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert history_counts(fresh_database) == [(name, 1) for name in PROJECT]
    assert all(e.checksum for e in history.applied(fresh_database))
    applied = [line for out, _ in outputs for line in out.splitlines() if line.startswith("applied ")]
    assert sorted(applied) == [f"applied {name}" for name in PROJECT]  # each by exactly one of the two runs


@pytest.mark.parametrize("other", ["pw_migrate", "kit migrate"])
def test_plain_pw_migrate_beside_another_run_applies_each_migration_once(fresh_database, migrations, other):
    url = fresh_database.scratch_url
    for trial in range(2):
        if trial:  # start again from an empty database
            fresh_database.execute_sql("DROP TABLE IF EXISTS " + ", ".join(
                tables(fresh_database) | {history.HISTORY_TABLE, history.CHECKSUM_TABLE}) + " CASCADE")
        second = pw_migrate(url, migrations.parent) if other == "pw_migrate" else kit_cli(
            url, migrations.parent, "migrate", "--dir", str(migrations))
        first = pw_migrate(url, migrations.parent)
        outputs = [p.communicate(timeout=300) for p in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outputs
        assert history_counts(fresh_database) == [(name, 1) for name in PROJECT]
        states = migrate.status(fresh_database, migrations)
        assert {s.state for s in states} == {"applied"}, states  # pw_migrate recorded the checksums too


def test_a_backend_killed_mid_migration_is_one_sentence_and_leaves_nothing(fresh_database, migrations):
    (migrations / "006_slow.py").write_text(textwrap.dedent("""\
        def migrate(migrator, database, *, fake=False):
            migrator.sql("CREATE TABLE slow_marker (n int)")
            migrator.sql("SELECT pg_sleep(30)")
    """))
    url = fresh_database.scratch_url
    run = kit_cli(url, migrations.parent, "migrate", "--dir", str(migrations))
    monitor = psycopg2.connect(url)
    monitor.autocommit = True
    try:
        with monitor.cursor() as cur:
            for _ in range(600):
                cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
                row = cur.fetchone()
                if row:
                    break
                time.sleep(0.05)
            assert row, "the slow migration never started"
            cur.execute("SELECT pg_terminate_backend(%s)", row)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kit: error: "), err
        assert "006_slow" in lines[0] and "nothing of it remains" in lines[0]
        with monitor.cursor() as cur:
            cur.execute("SELECT to_regclass('slow_marker') IS NULL")
            assert cur.fetchone()[0] is True
    finally:
        monitor.close()
    states = {s.name: s.state for s in migrate.status(fresh_database, migrations)}
    assert states["006_slow"] == "pending" and states["005_better_auth"] == "applied"


def test_edited_missing_and_out_of_order_migrations_are_reported(fresh_database, migrations):
    db = fresh_database
    migrate.apply(db, migrations, **QUIET)
    assert {s.state for s in migrate.status(db, migrations)} == {"applied"}
    (migrations / "002_schema.py").write_text((migrations / "002_schema.py").read_text() + "\n# tweak\n")
    (migrations / "003_audit_logs_append_only.py").unlink()
    (migrations / "002_a_late.py").write_text("def migrate(migrator, database, *, fake=False):\n    pass\n")
    states = {s.name: s.state for s in migrate.status(db, migrations)}
    assert states == {**{name: "applied" for name in PROJECT}, "002_schema": "edited",
                      "003_audit_logs_append_only": "missing", "002_a_late": "pending"}
    problems = "\n".join(migrate.verify(db, migrations))
    assert "002_schema was edited after it was applied" in problems
    assert "003_audit_logs_append_only is applied but its file is missing" in problems
    assert f"002_a_late is out of order: it sorts before {PROJECT[-1]}" in problems
    with pytest.raises(MigrationError, match="refusing to migrate: 002_schema: edited"):
        migrate.apply(db, migrations, **QUIET)
    verify = kit_cli(db.scratch_url, migrations.parent, "migrate", "--dir", str(migrations), "verify")
    out, err = verify.communicate(timeout=120)
    assert verify.returncode == 1 and "002_schema was edited" in out and "Traceback" not in err


def test_schema_drift_is_named(fresh_database, migrations):
    db = fresh_database
    migrate.apply(db, migrations, **QUIET)
    db.execute_sql("ALTER TABLE document_chunks ALTER COLUMN embedding TYPE vector(768) USING NULL")
    db.execute_sql("ALTER TABLE users ALTER COLUMN image SET NOT NULL")
    db.execute_sql("DROP INDEX document_chunks_embedding_hnsw_cosine_halfvec_m16_efc64")
    db.execute_sql("CREATE INDEX document_chunks_embedding_hnsw_cosine_halfvec_m16_efc64 ON document_chunks "
                   "USING hnsw (embedding vector_l2_ops)")
    db.execute_sql("ALTER TABLE sessions DROP CONSTRAINT sessions_user_id_fkey")
    db.execute_sql("ALTER TABLE sessions ADD FOREIGN KEY (user_id) REFERENCES users (id)")
    db.execute_sql("ALTER TABLE plans ADD COLUMN legacy int")
    db.execute_sql("CREATE TABLE stray (id int)")
    db.execute_sql("ALTER TABLE document_chunks RESET (toast_tuple_target)")
    db.execute_sql("ALTER TABLE document_sources DROP CONSTRAINT document_sources_kind_check")
    db.execute_sql("ALTER TABLE document_sources ADD CHECK (kind IN ('upload', 'url'))")
    db.execute_sql("DROP TRIGGER members_touch_updated_at ON members")
    problems = "\n".join(migrate.verify(db, migrations))
    assert "members.updated_at is not kept by the database (no kit_touch_updated_at trigger)" in problems
    assert "document_chunks.embedding is vector(768) in the database, the model says vector(1536)" in problems
    assert "users.image is NOT NULL in the database, the model says nullable" in problems
    assert "uses operator class vector_l2_ops, the model says halfvec_cosine_ops" in problems
    assert "covers (embedding), the model says ()" in problems  # the model's index is on an expression
    assert "has () in the database" not in problems and "has (), the model says (ef_construction=64, m=16)" in problems
    assert "sessions.user_id references users.id ON DELETE NO ACTION in the database, " \
           "the model says users.id ON DELETE CASCADE" in problems
    assert "plans.legacy exists in the database but not in the model" in problems
    assert "table stray exists in the database but not in the models" in problems
    assert "document_chunks has storage parameters (none) in the database, " \
           "the model says (toast_tuple_target=8160)" in problems
    assert "document_sources has CHECK ((kind = ANY (ARRAY['upload'::text, 'url'::text]))) in the database " \
           "but not in the model" in problems
    assert "document_sources lacks CHECK ((kind = ANY (ARRAY['upload'::text, 'url'::text, 'text'::text, " \
           "'integration'::text]))), which the model declares" in problems
    assert problems.count("CHECK") == 2  # the 30-odd other checks match the models


def test_a_failing_migration_leaves_no_partial_schema_and_no_record(fresh_database, migrations):
    db = fresh_database
    (migrations / "990_broken.py").write_text(textwrap.dedent('''
        def migrate(migrator, database, *, fake=False):
            migrator.sql("CREATE TABLE half_done (id int)")
            migrator.sql("ALTER TABLE half_done ADD COLUMN oops no_such_type")

        def rollback(migrator, database, *, fake=False):
            migrator.sql("DROP TABLE half_done")
    '''))
    with pytest.raises(MigrationError, match=r"990_broken failed and was rolled back, nothing of it remains") as caught:
        migrate.apply(db, migrations, **QUIET)
    assert 'type "no_such_type" does not exist' in str(caught.value)
    assert "half_done" not in tables(db)
    assert [e.name for e in history.applied(db)] == PROJECT
    assert db.execute_sql(f"SELECT count(*) FROM {history.CHECKSUM_TABLE} WHERE name = '990_broken'").fetchone()[0] == 0


def test_resolve_records_a_hand_applied_migration_only_when_its_objects_exist(fresh_database, migrations):
    db = fresh_database
    (migrations / "003_audit_logs_append_only.py").rename(migrations.parent / "later.py")
    migrate.apply(db, migrations, **QUIET)
    (migrations.parent / "later.py").rename(migrations / "003_audit_logs_append_only.py")
    with pytest.raises(MigrationError, match="trigger audit_logs_append_only does not exist"):
        migrate.resolve(db, migrations, "003_audit_logs_append_only", applied=True)
    # an operator pasted the migration's SQL into psql ...
    function = runpy.run_path(str(migrations / "003_audit_logs_append_only.py"))["FUNCTION"]
    by_hand = psycopg2.connect(db.scratch_url)
    by_hand.autocommit = True
    with by_hand.cursor() as cur:
        cur.execute(function.replace("%%", "%"))  # psql sees a single %
        cur.execute("CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs "
                    "FOR EACH ROW EXECUTE FUNCTION kit_audit_logs_append_only()")
        cur.execute("CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs "
                    "FOR EACH STATEMENT EXECUTE FUNCTION kit_audit_logs_append_only()")
    by_hand.close()
    # ... so plain migrate would fail with "already exists"; resolve records it instead
    assert "recorded 003_audit_logs_append_only as applied" in migrate.resolve(
        db, migrations, "003_audit_logs_append_only", applied=True)
    assert migrate.apply(db, migrations, **QUIET) == []
    assert migrate.verify(db, migrations) == []
    assert "forgot 003_audit_logs_append_only" in migrate.resolve(
        db, migrations, "003_audit_logs_append_only", applied=False)
    assert [s.state for s in migrate.status(db, migrations)][-1] == "pending"


def test_resolve_names_the_tables_a_schema_migration_would_create(fresh_database, migrations):
    db = fresh_database
    (migrations / "002_schema.py").rename(migrations.parent / "schema.py")
    for later in migrations.glob("0*.py"):
        if later.name > "003":  # every migration after the schema's: they need its tables
            later.unlink()
    migrate.apply(db, migrations, **QUIET)
    (migrations.parent / "schema.py").rename(migrations / "002_schema.py")
    with pytest.raises(MigrationError) as caught:
        migrate.resolve(db, migrations, "002_schema", applied=True)
    assert "table users is missing from the database" in str(caught.value)
    with pytest.raises(MigrationError, match=r"no migration named 990_nope .*known: 001_enable_vector, 002_schema"):
        migrate.resolve(db, migrations, "990_nope", applied=True)
    with pytest.raises(MigrationError, match="002_schema is not recorded as applied"):
        migrate.resolve(db, migrations, "002_schema", applied=False)


def test_plain_pw_migrate_records_checksums_and_kit_migrate_adopts_history_without_them(fresh_database, migrations):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = fresh_database.scratch_url
    result = subprocess.run([sys.executable, "-m", "peewee_migrate", "migrate"], cwd=migrations.parent, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    said = []
    assert migrate.apply(fresh_database, migrations, say=said.append) == []
    assert said == []  # pw_migrate recorded the checksums itself
    assert {s.state for s in migrate.status(fresh_database, migrations)} == {"applied"}
    fresh_database.execute_sql(f"DELETE FROM {history.CHECKSUM_TABLE}")  # applied by some other means
    assert migrate.apply(fresh_database, migrations, say=said.append) == []
    assert said == [f"adopted {n} (applied without a checksum): checksum recorded" for n in PROJECT]
    assert {s.state for s in migrate.status(fresh_database, migrations)} == {"applied"}


def test_a_server_without_the_extension_gives_a_clear_error(fresh_database, tmp_path):
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "001_ext.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n    migrator.sql('CREATE EXTENSION no_such_extension')\n")
    with pytest.raises(MigrationError, match='001_ext failed and was rolled back.*extension "no_such_extension"'):
        migrate.apply(fresh_database, directory, **QUIET)


def test_cli_errors_are_one_sentence(fresh_database, migrations):
    proc = kit_cli(fresh_database.scratch_url, migrations.parent, "migrate", "--dir", str(migrations),
                   "resolve", "999_nope", "--applied")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.startswith("kit: error: no migration named 999_nope")
    assert "Traceback" not in err
    proc = kit_cli(fresh_database.scratch_url, Path("/"), "migrate", "--dir", "/nonexistent/migrations")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "no migrations directory at /nonexistent/migrations" in err


def test_a_server_without_pgvector_is_named_before_anything_runs(fresh_database):
    with pytest.raises(MigrationError, match="this PostgreSQL server has no no_such_ext extension to enable"):
        migrate.executor.require_extension(fresh_database, "no_such_ext")
    migrate.executor.require_extension(fresh_database, "vector")  # the server under test has it


def test_dir_may_follow_the_step_and_status_exits_1_while_anything_is_pending(fresh_database, migrations):
    proc = kit_cli(fresh_database.scratch_url, Path("/"), "migrate", "status", "--dir", str(migrations))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "pending    001_enable_vector" in out and out.rstrip().endswith("pending")
    migrate.apply(fresh_database, migrations, **QUIET)
    proc = kit_cli(fresh_database.scratch_url, Path("/"), "migrate", "status", "--dir", str(migrations))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "pending" not in out and "unchecked" not in out, out + err
    empty = migrations.parent / "none"
    empty.mkdir()
    proc = kit_cli(fresh_database.scratch_url, Path("/"), "migrate", "status", "--dir", str(empty))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "missing" in out, out + err  # applied here, but no files there


def test_status_with_no_migrations_at_all_exits_1(fresh_database, tmp_path):
    proc = kit_cli(fresh_database.scratch_url, Path("/"), "migrate", "status", "--dir", str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and out.startswith(f"no migrations in {tmp_path}"), out + err


def test_resolve_takes_the_number_of_a_migration_when_only_one_begins_so(fresh_database, migrations):
    migrate.apply(fresh_database, migrations, **QUIET)
    last = migrate.status(fresh_database, migrations)[-1].name
    number = last.split("_")[0]
    message = migrate.resolve(fresh_database, migrations, number, applied=False)
    assert last in message
    assert migrate.status(fresh_database, migrations)[-1].state == "pending"
    with pytest.raises(MigrationError, match="could be any of 001_enable_vector, 002_"):
        migrate.resolve(fresh_database, migrations, "00", applied=True)


def test_a_new_table_with_updated_at_gets_the_trigger_from_the_generator(fresh_database, tmp_path):
    db = fresh_database

    class Note(pw.Model):
        body = pw.TextField()
        updated_at = pw.DateTimeField(constraints=[pw.SQL("DEFAULT now()")])

        class Meta:
            database = db
            table_name = "gen_notes"

    autogen.register()
    directory = tmp_path / "gen"
    directory.mkdir()
    name = Router(db, migrate_dir=directory).create("notes", auto=[Note])
    assert "kit_ops.keep_updated_at(migrator, 'gen_notes')" in (directory / f"{name}.py").read_text()
    migrate.apply(db, directory, **QUIET)
    db.execute_sql("INSERT INTO gen_notes (body, updated_at) VALUES ('a', '2001-01-01')")
    db.execute_sql("UPDATE gen_notes SET body = 'b'")
    assert db.execute_sql("SELECT updated_at > '2001-01-02' FROM gen_notes").fetchone()[0] is True
    assert compare(db, [Note], report_extra=False) == []


def test_the_better_auth_migration_refuses_invitations_without_an_inviter(fresh_database, migrations):
    db = fresh_database
    later = [p for p in migrations.glob("0*.py") if p.stem >= "005"]
    held = migrations.parent / "held"
    held.mkdir()
    for path in later:
        path.rename(held / path.name)
    migrate.apply(db, migrations, **QUIET)
    org, user = (db.execute_sql(sql).fetchone()[0] for sql in (
        "INSERT INTO organizations (name, slug) VALUES ('O', 'o') RETURNING id",
        "INSERT INTO users (name, email) VALUES ('U', 'u@x.io') RETURNING id"))
    db.execute_sql("INSERT INTO invitations (organization_id, email, expires_at, inviter_id) "
                   "VALUES (%s, 'a@x.io', now(), NULL), (%s, 'b@x.io', now(), %s)", (org, org, user))
    for path in later:
        (held / path.name).rename(path)
    with pytest.raises(MigrationError, match=r"invitations has 1 row\(s\) without an inviter \(inviter_id IS NULL\); "
                                             r"Better Auth requires one: set inviter_id or delete those rows"):
        migrate.apply(db, migrations, **QUIET)
    assert db.execute_sql("SELECT count(*) FROM invitations").fetchone()[0] == 2  # nothing deleted or changed
    assert "005_better_auth" not in [e.name for e in history.applied(db)]
    db.execute_sql("UPDATE invitations SET inviter_id = %s", (user,))
    assert "005_better_auth" in migrate.apply(db, migrations, **QUIET)
    assert migrate.verify(db, migrations) == []


@observes_server_sessions
def test_pw_migrate_s_run_lock_lost_with_its_connection_stops_the_run(fresh_database):
    from kit.db import SessionLost
    from kit.migrate.lock import lock_session

    db = fresh_database
    lock_session(db, say=lambda _: None)  # what migrations/conf.py takes for a pw_migrate run
    pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    query(db.scratch_url, "SELECT pg_terminate_backend(%s)", (pid,))
    assert ended(db.scratch_url, pid)
    with pytest.raises(SessionLost, match="advisory locks"):
        db.execute_sql(f"SELECT count(*) FROM {history.HISTORY_TABLE}")  # the run's next statement
    db.close()


def test_a_run_lock_held_by_its_own_transaction_lost_with_its_connection_stops_the_run(fresh_database):
    from kit.db import SessionLost
    from kit.migrate.lock import LOCK_KEY, check_held, hold_lock

    holder = hold_lock(fresh_database, LOCK_KEY, "another migration run", say=lambda _: None)  # behind a pooler
    with holder.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    check_held(holder, "the migration lock")
    query(fresh_database.scratch_url, "SELECT pg_terminate_backend(%s)", (pid,))
    assert ended(fresh_database.scratch_url, pid)
    with pytest.raises(SessionLost, match="the connection holding the migration lock was lost"):
        check_held(holder, "the migration lock")
    holder.close()


def test_a_failing_migration_under_pw_migrate_is_a_sentence_not_a_traceback(fresh_database, migrations):
    (migrations / "099_broken.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n    migrator.sql('SELEC 1')\n\n\n"
        "def rollback(migrator, database, *, fake=False):\n    pass\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = fresh_database.scratch_url
    result = subprocess.run([str(Path(sys.executable).parent / "pw_migrate"), "migrate", "--directory",
                             str(migrations)], env=environ, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    # what the earlier migrations' steps did, each on a line of its own, then the failure: three lines at most
    failure = [line for line in result.stderr.strip().splitlines() if not line.endswith("(done after its transaction)")
               and "backfilled" not in line]
    assert "Traceback" not in result.stderr and len(failure) <= 3, result.stderr
    assert "Migration failed: 099_broken: syntax error at or near \"SELEC\"" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('pw_migrate: error: syntax error at or near "SELEC"')
    assert "099_broken" not in {s.name for s in migrate.status(fresh_database, migrations) if s.state == "applied"}


def test_a_migration_granting_to_roles_the_database_lacks_stops_in_one_sentence(fresh_database):
    from kit.roles import APP, roles_required

    fresh_database.execute_sql(roles_required(APP))  # present: nothing happens
    with pytest.raises(pw.ProgrammingError) as caught:  # what a server without the kit's roles says
        fresh_database.execute_sql(roles_required(APP, "kit_no_such_role"))
    said = str(caught.value).splitlines()[0]
    assert said == ("the kit's roles (kit_app, kit_no_such_role) do not exist in this database: make them first "
                    "(kit db roles, with DATABASE_ADMIN_URL), then migrate")
