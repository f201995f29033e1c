"""Partial vector indexes of big tenants (`kit maintain`): made, used by the planner, dropped, rebuilt after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import as_owner, create_owned, drop_owned, owner_database
from peewee import AutoField, IntegerField, Model, fn

from kit.db import database
from kit.maintain import maintain
from kit.migrate.schema import compare
from kit.vector import HNSWIndex, VectorField, copy_rows, ensure_tenant_indexes, nearest
from kit.vector.tenants import tenant_index_name

DIM = 64


class Passage(Model):
    id = AutoField()
    org = IntegerField(index=True)
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "tenant_passages"
        tenant_index = "org"


Passage.add_index(HNSWIndex(Passage.embedding, metric="cosine", quantize="halfvec"))
SIZES = {1: 4000, 2: 100, 3: 300}  # organization 1: big enough that its own graph beats its b-tree


RNG = np.random.default_rng(1)


def load(org: int, rows: int) -> None:
    copy_rows(Passage, ({"org": org, "embedding": v} for v in RNG.standard_normal((rows, DIM)).astype(np.float32)))


def upkeep(*args, **kwargs):
    """`ensure_tenant_indexes` as `kit maintain` runs it: as the owner (index builds are DDL)."""
    return ensure_tenant_indexes(*args, database=owner_database(), **kwargs)  # no binding: threads call it too


def tenant_indexes() -> dict[str, bool]:
    return dict(database.execute_sql(
        "SELECT i.relname, x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = 'tenant_passages'::regclass AND i.relname ~ '^tenant_passages_tenant_'").fetchall())


@pytest.fixture()
def passages(test_db_url):
    create_owned(Passage)
    for org, rows in SIZES.items():
        load(org, rows)
    with as_owner(Passage) as owner:  # only the owner may ANALYZE its table
        owner.execute_sql("ANALYZE tenant_passages")
    yield test_db_url
    drop_owned(Passage)


def explain(query) -> str:
    sql, params = query.sql()
    with database.atomic():
        database.execute_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        return "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())


def test_big_tenants_get_their_own_graph_and_the_planner_uses_it(passages):
    done = upkeep(Passage.embedding, Passage.org, min_rows=500)
    big = tenant_index_name(Passage.embedding, 1)
    assert done.created == [big] and done.dropped == [] and tenant_indexes() == {big: True}
    definition = database.execute_sql("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (big,)).fetchone()[0]
    assert "USING hnsw (((embedding)::halfvec(64)) halfvec_cosine_ops)" in definition and "WHERE (org = 1)" in definition
    q = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
    found = nearest(Passage.select(Passage.id).where(Passage.org == 1), Passage.embedding, q, k=10, exact_below=500)
    assert found.plan.method.startswith("index") and len(found) == 10
    assert f"Index Scan using {big}" in explain(found.plan.query)
    assert compare(database, [Passage], report_extra=False) == []  # run-time indexes are not drift
    # run again: nothing to do
    again = upkeep(Passage.embedding, Passage.org, min_rows=500)
    assert (again.created, again.dropped, again.kept) == ([], [], [big])


def test_nearest_ranks_a_mid_size_tenant_exactly_until_it_has_a_graph_of_its_own(passages):
    """4,000 rows, under an exact_below of 5,000: exact on the shared graph, its own graph once made."""
    q = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    mine = Passage.select(Passage.id).where(Passage.org == 1)
    before = nearest(mine, Passage.embedding, q, k=10, exact_below=5000)
    assert before.plan.method == "exact" and before.plan.filter_rows == 4000
    upkeep(Passage.embedding, Passage.org)  # OWN_GRAPH_FROM (1,500): organization 1 only
    after = nearest(mine, Passage.embedding, q, k=10, exact_below=5000)
    assert after.plan.method.startswith("index")
    assert f"Index Scan using {tenant_index_name(Passage.embedding, 1)}" in explain(after.plan.query)
    # its own graph: recall near exact's, over several queries (a graph is approximate: with the default search
    # list of 40 one query found 8 of 10)
    found = 0
    for seed in range(5):
        p = np.random.default_rng(100 + seed).standard_normal(DIM).astype(np.float32)
        exact = nearest(mine, Passage.embedding, p, k=10, exact=True)
        graph = nearest(mine, Passage.embedding, p, k=10, exact_below=5000, ef_search=200)
        found += len({r.id for r in graph} & {r.id for r in exact})
    assert found >= 48  # recall@10 >= 0.96 with a search list of 200 of its 4,000 rows
    small = nearest(Passage.select(Passage.id).where(Passage.org == 3), Passage.embedding, q, k=10, exact_below=5000)
    assert small.plan.method == "exact"  # 300 rows: no graph of its own, exact


def test_a_tenant_is_dropped_only_below_half_the_threshold(passages):
    upkeep(Passage.embedding, Passage.org, min_rows=500)
    load(3, 300)  # organization 3 grows to 600
    three = tenant_index_name(Passage.embedding, 3)
    assert upkeep(Passage.embedding, Passage.org, min_rows=500).created == [three]
    Passage.delete().where((Passage.org == 3) & (fn.mod(Passage.id, 2) == 0)).execute()  # ~300: above half, kept
    assert three in upkeep(Passage.embedding, Passage.org, min_rows=500).kept
    Passage.delete().where((Passage.org == 3) & (fn.mod(Passage.id, 3) != 0)).execute()  # ~200: under half, dropped
    assert upkeep(Passage.embedding, Passage.org, min_rows=500).dropped == [three]
    assert three not in tenant_indexes()


def test_a_build_killed_midway_is_rebuilt_by_the_next_run(passages, monitor):
    load(4, 10_000)  # big enough that the build (seconds) can be caught in progress
    name = tenant_index_name(Passage.embedding, 4)
    failures = []

    def build():
        try:
            with database.connection_context():
                upkeep(Passage.embedding, Passage.org, min_rows=500)
        except Exception as exc:  # the terminated backend
            failures.append(exc)

    builder = threading.Thread(target=build)
    builder.start()
    killed = []
    deadline = time.monotonic() + 60
    while builder.is_alive() and not killed and time.monotonic() < deadline:
        with monitor.cursor() as cursor:  # the owner's build, seen and ended from outside
            cursor.execute("SELECT pid FROM pg_stat_progress_create_index "
                           "WHERE relid = 'tenant_passages'::regclass AND phase LIKE 'building%%'")
            for (pid,) in cursor.fetchall():
                cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
        time.sleep(0.005)
    builder.join()
    assert killed, "the build was never caught in progress"
    if failures:  # the kill reached the caller: an invalid index is left, and the next run rebuilds it
        assert False in tenant_indexes().values()
        done = upkeep(Passage.embedding, Passage.org, min_rows=500)
        assert done.created
    # else the statement was re-sent on a new connection and the run saw the invalid index and rebuilt it
    assert all(tenant_indexes().values()) and name in tenant_indexes()
    assert len(tenant_indexes()) == 2  # organizations 1 and 4, nothing twice


def test_two_maintain_runs_at_once_make_each_index_once(passages):
    errors = []

    def run(owner):
        try:
            with owner.connection_context():
                maintain(owner, [Passage], say=lambda _: None, min_rows=250)
        except Exception as exc:
            errors.append(exc)

    with as_owner(Passage) as owner:  # upkeep is the owner's: bound once, for both threads (never from a thread)
        runs = [threading.Thread(target=run, args=(owner,)) for _ in range(2)]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join()
    assert errors == []
    assert tenant_indexes() == {tenant_index_name(Passage.embedding, 1): True,
                                tenant_index_name(Passage.embedding, 3): True}


def test_the_kit_maintain_command(passages, owner_url):
    result = subprocess.run([sys.executable, "-m", "kit.cli", "maintain"], env=dict(os.environ, DATABASE_URL=passages, DATABASE_OWNER_URL=owner_url),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["audit_logs: partitions: 0 created", "ai_usage: partitions: 0 created"]  # made ahead
    assert lines[2].startswith("document_chunks.embedding: tenant indexes: 0 created, 0 dropped, 0 kept")
    for args, code, said in [(["--retain", "users=3"], 1, "--retain names users, which is not a partitioned table"),
                             (["--retain", "audit_logs"], 2, "must be TABLE=MONTHS"),
                             (["--retain", "audit_logs=30000"], 2, "MONTHS a whole number from 1 to 1,200"),
                             (["--retain", "audit_logs=24", "--retain", "audit_logs=1"], 2,
                              "--retain names audit_logs more than once; give each table one retention")]:
        refused = subprocess.run([sys.executable, "-m", "kit.cli", "maintain", *args], capture_output=True,
                                 env=dict(os.environ, DATABASE_URL=passages, DATABASE_OWNER_URL=owner_url), text=True, timeout=60)
        assert refused.returncode == code and said in refused.stderr and "Traceback" not in refused.stderr
    bad = subprocess.run([sys.executable, "-m", "kit.cli", "maintain", "--min-rows", "1"],
                         env=dict(os.environ, DATABASE_URL=passages, DATABASE_OWNER_URL=owner_url), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--min-rows: must be a whole number of rows, 2 or more, got '1'" in bad.stderr


def test_maintain_covers_the_project_models_and_checks_its_argument(passages):
    said = []
    with as_owner(Passage) as owner:
        maintain(owner, [Passage], say=said.append, min_rows=500)
    assert said == ["tenant_passages.embedding: tenant indexes: 1 created, 0 dropped, 0 kept "
                    "(tenants of 500 rows or more by org)"]
    with pytest.raises(ValueError, match="min_rows must be a whole number of rows, 2 or more"):
        ensure_tenant_indexes(Passage.embedding, Passage.org, min_rows=1)


def test_a_build_waiting_on_an_old_transaction_gives_up_within_the_budget_and_leaves_no_invalid_index(
        passages, monkeypatch):
    import psycopg2

    from kit import LockBusy

    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT", "500")
    monkeypatch.setenv("DATABASE_LOCK_BUDGET", "2000")
    old = psycopg2.connect(passages, application_name="kit-test-old-snapshot")
    with old.cursor() as cursor:  # a transaction with a snapshot: CONCURRENTLY waits for it to end
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT pg_backend_pid(), count(*) FROM pg_class")
        pid = cursor.fetchone()[0]
    started = time.monotonic()
    try:
        with pytest.raises(LockBusy) as caught:
            upkeep(Passage.embedding, Passage.org, min_rows=500)
        assert time.monotonic() - started < 2.0 + 3  # the budget, plus the build before its last wait
        assert f"pid {pid} (application 'kit-test-old-snapshot'" in str(caught.value)
    finally:
        old.close()
    assert tenant_indexes() == {}  # the invalid index was dropped
    assert list(upkeep(Passage.embedding, Passage.org, min_rows=500).created)  # and builds once it is gone
