"""The kit's pytest plugin, run as a project runs it: pytest in a project of its own, the plugin found by its entry point.

What it promises, each tried here: a test's rows never outlive it; `atomic()` blocks are savepoints;
a read with no tenant sees nothing of the tenant tables; the code a test calls sees its transaction,
from another thread too (a web test client's); `transactional_db` commits and leaves nothing for
the next test; each pytest-xdist worker has a database of its own; the template is migrated once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import query

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.environ.get("DATABASE_POOLER") == "pgbouncer",
                                reason="the plugin makes databases of its own; tried once, on the server itself")

TESTS = '''
import os
import threading

import pytest

import kit
from kit.models import DocumentChunk, DocumentSource, Member, Organization, User


def test_rows_made_by_name_in_the_tenant(db, tenant, make):
    chunks = make.many(DocumentChunk, 3, content="hello")
    assert DocumentChunk.select().count() == 3
    assert {c.organization_id for c in chunks} == {tenant.id}  # the tenant's organization, made for them
    assert len({c.source_id for c in chunks}) == 3  # each its own source, made on the way
    assert chunks[0].embedding is None or chunks[0].embedding.shape


def test_nothing_the_last_test_wrote_is_left(db, make):
    assert Organization.select().count() == 0 and User.select().count() == 0
    with kit.all_tenants():
        assert DocumentChunk.select().count() == 0


def test_atomic_blocks_are_savepoints(db, tenant, make):
    make(DocumentSource, title="kept")
    with db.atomic() as savepoint:
        make(DocumentSource, title="undone")
        savepoint.rollback()
    assert [s.title for s in DocumentSource.select()] == ["kept"]


def test_a_read_without_a_tenant_sees_nothing_of_the_tenant_tables(db, org, other_org, make):
    with kit.tenant(org):
        make(DocumentSource)
    with kit.tenant(other_org):
        make(DocumentSource)
        assert DocumentSource.select().count() == 1  # its own only
    assert DocumentSource.select().count() == 0


def test_another_thread_sees_the_test_s_transaction(db, org):
    seen = []
    worker = threading.Thread(target=lambda: seen.append(Organization.select().where(Organization.id == org.id).count()))
    worker.start()
    worker.join()
    assert seen == [1]


def test_a_web_test_client_sees_the_test_s_rows(db, org):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import kit.web

    app = FastAPI()
    kit.web.install(app)

    @app.get("/orgs/{slug}")
    def by_slug(slug: str):
        return {"name": Organization.get(Organization.slug == slug).name}

    with TestClient(app) as client:
        assert client.get(f"/orgs/{org.slug}").json() == {"name": "Acme"}


def test_a_member_and_a_signed_in_user(signed_in):
    assert Member.select().count() == 1 and signed_in.session.token == signed_in.token
    assert signed_in.cookie.startswith("better-auth.session_token=")  # tests/test_better_auth.py: Better Auth reads it


def test_a_committing_test_commits(transactional_db, make):
    org = make(Organization, name="Committed")
    with kit.tenant(org), transactional_db.atomic():
        make(DocumentSource)
    assert transactional_db.execute_sql("SELECT count(*) FROM document_sources").fetchone()[0] == 0  # RLS: no tenant
    with kit.tenant(org):
        assert DocumentSource.select().count() == 1


def test_and_leaves_nothing_behind(db):
    assert Organization.select().count() == 0


def test_the_database_is_the_run_s_own(db):
    name = db.execute_sql("SELECT current_database()").fetchone()[0]
    assert name.startswith("kit_test_")
    assert db.execute_sql("SELECT has_database_privilege('public', current_database(), 'CONNECT'), "
                          "current_user").fetchone() == (False, "kit_app")  # as production has it
    with open(os.environ["DATABASE_NAMES"], "a") as names:
        names.write(name + "\\n")
'''


@pytest.fixture
def project(tmp_path, admin_url, server_url, owner_server_url, door_server_url):
    """A directory with the tests above, and the environment a project's run has (the suite's server)."""
    (tmp_path / "test_app.py").write_text(textwrap.dedent(TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_", "PYTEST_"))}
    env |= {"KIT_TEST_ADMIN_URL": admin_url, "DATABASE_URL": server_url, "DATABASE_OWNER_URL": owner_server_url,
            "DATABASE_DOOR_URL": door_server_url, "KIT_MIGRATIONS_DIR": str(ROOT / "migrations"),
            "KIT_PROJECT_ROOT": str(tmp_path), "DATABASE_NAMES": str(tmp_path / "names.txt")}
    return tmp_path, env


def pytest_run(project, *args: str) -> subprocess.CompletedProcess:
    directory, env = project
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=600)


def test_the_plugin_keeps_each_test_s_rows_to_itself(project):
    ran = pytest_run(project)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert "10 passed" in ran.stdout


def test_each_xdist_worker_has_a_database_of_its_own(project):
    pytest.importorskip("xdist")
    ran = pytest_run(project, "-n", "2", "--dist", "each")  # every test on both workers
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    names = (project[0] / "names.txt").read_text().split()
    assert len(names) == 2 and len(set(names)) == 2 and all(re.fullmatch(r"kit_test_gw[01]_\d+_\w+", n) for n in names)


def test_the_testing_page_s_examples_pass(project):
    """docs/testing.md's `pytest` blocks, each a test file of the project."""
    page = (ROOT / "docs" / "testing.md").read_text()
    examples = re.findall(r"```pytest\n(.*?)```", page, re.S)
    assert len(examples) >= 2
    for number, code in enumerate(examples):
        (project[0] / f"test_docs_{number}.py").write_text(code)
    ran = pytest_run(project, *(f"test_docs_{n}.py" for n in range(len(examples))))
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert f"{sum(code.count('def test_') for code in examples)} passed" in ran.stdout, ran.stdout[-2000:]


def test_a_new_template_drops_those_of_other_migration_sets_no_one_is_using(tmp_path, admin_url, owner_server_url):
    import psycopg2

    from kit.testing import template

    def templates() -> set[str]:
        rows = query(admin_url, "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                     (template.TEMPLATE_PREFIX,))
        return {name for name, in rows}

    def made(text: str) -> str:
        directory = tmp_path / text
        directory.mkdir()
        (directory / "001_one.py").write_text(f"# {text}\n")
        return template.ensure_template(admin_url, owner_server_url, directory, migrate=lambda url, d: None)

    suite = template.ensure_template(admin_url, owner_server_url, ROOT / "migrations")
    in_use = [psycopg2.connect(template.with_dbname(admin_url, suite))]  # the suite's: kept while someone uses it
    made_here = []
    try:
        made_here += [made("first"), made("second")]
        assert made_here[1] in templates() and made_here[0] not in templates()  # the other set's template went
        in_use.append(psycopg2.connect(template.with_dbname(admin_url, made_here[1])))  # a clone being copied
        made_here.append(made("third"))
        assert {suite, *made_here[1:]} <= templates()  # those in use are kept, for a later run to drop
    finally:
        for conn in in_use:
            conn.close()
        for name in made_here:
            template.drop(admin_url, name)
    assert suite in templates() and not set(made_here) & templates()
