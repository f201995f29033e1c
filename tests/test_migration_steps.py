"""Steps after a migration's transaction (`kit.migrate.steps`): recorded with the migration, resumed after the
process running them is killed, an INVALID index left behind rebuilt, and named by `kit migrate verify` meanwhile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
from helpers import wait_until

from kit import migrate
from kit.migrate.steps import unfinished

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}

MIGRATION = """
import kit.migrate.operations as kit_ops


def migrate(migrator, database, *, fake=False):
    kit_ops.add_index(migrator, "organizations", "name", concurrently=True, name="organizations_name_steps")


def rollback(migrator, database, *, fake=False):
    kit_ops.drop_index(migrator, "organizations", "organizations_name_steps")
"""

RUN = """
import sys
from pathlib import Path
from kit import migrate
from kit.db import Database
db = Database()
db.configure(sys.argv[1], owner=True)
migrate.apply(db, Path(sys.argv[2]))
"""


def index_state(db) -> bool | None:
    row = db.execute_sql("SELECT x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                         "WHERE c.relname = 'organizations_name_steps'").fetchone()
    return None if row is None else row[0]


def test_a_build_killed_half_way_is_resumed_by_the_next_run_and_its_invalid_index_rebuilt(fresh_database, tmp_path):
    db = fresh_database
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    migrate.apply(db, directory, **QUIET)
    db.execute_sql("INSERT INTO organizations (name, slug) SELECT 'org ' || n, 'org-' || n "
                   "FROM generate_series(1, 5000) n")
    (directory / "099_index_names.py").write_text(textwrap.dedent(MIGRATION))
    old = psycopg2.connect(db.scratch_url, application_name="kit-test-old-snapshot")
    with old.cursor() as cursor:  # CONCURRENTLY waits for this snapshot: the run is caught mid-build
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT count(*) FROM organizations")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    run = subprocess.Popen([sys.executable, "-c", RUN, db.scratch_url, str(directory)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        building = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%'"
        assert wait_until(lambda: db.execute_sql(building).fetchone()[0] == 1, timeout=60)
        assert wait_until(lambda: index_state(db) is False)  # its index is in the catalog, not yet valid
        run.kill()  # the process dies mid-build; its backend stops within client_connection_check_interval
        run.wait(30)
        assert wait_until(lambda: db.execute_sql(building).fetchone()[0] == 0, timeout=30)
    finally:
        old.close()
    assert index_state(db) is False  # INVALID: what a killed CONCURRENTLY build leaves
    assert [s.kind for s in unfinished(db)] == ["index"]  # the migration committed with its step recorded
    assert any("step(s) after a migration's transaction not done" in p for p in migrate.verify(db, directory))
    said: list[str] = []
    assert migrate.apply(db, directory, say=said.append) == []  # nothing to apply, a step to finish
    assert any("done after its transaction" in line for line in said), said
    assert index_state(db) is True and unfinished(db) == []
    assert not any("step(s)" in p for p in migrate.verify(db, directory))  # (the models lack this test's index)
