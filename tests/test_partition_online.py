"""Migration 008 on tables that hold rows: partitioned while writers go on, every row kept, resumable.

`partition_table` inside a migration leaves a table with rows to a step after the migration commits
(`kit.partitions.partition_online`): a partitioned copy kept up to date by a trigger, rows copied in
batches, a short swap. Tried here with writers inserting, updating and deleting all along, with the
copying process killed half-way, and with the migration rolled back before its step ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from helpers import Writer, migrate_up_to, table_rows, wait_until

from kit import migrate
from kit.partitions import is_partitioned, month_partitions, partition_online, unpartition_table

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}
LOCK_TIMEOUT = 0.5  # seconds: DATABASE_LOCK_TIMEOUT for these tests


@pytest.fixture
def before_008(fresh_database, tmp_path, monkeypatch):
    """A database migrated up to 007 with 20,000 AI usage rows and 20,000 audit rows over three months."""
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT", str(int(LOCK_TIMEOUT * 1000)))
    monkeypatch.setattr("kit.partitions.BATCH_ROWS", 500)  # many batches: many chances for a race
    db = fresh_database
    migrate_up_to(db, "007", tmp_path)
    db.execute_sql("INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme')")
    db.execute_sql("INSERT INTO ai_usage (organization_id, model, input_tokens, created_at) "
                   "SELECT o.id, 'm', n, timestamptz '2026-08-01 00:00+00' + n * interval '6 minutes' "
                   "FROM organizations o, generate_series(1, 20000) n")
    db.execute_sql("INSERT INTO audit_logs (organization_id, action, created_at) "
                   "SELECT o.id, 'act' || n, timestamptz '2026-08-01 00:00+00' + n * interval '6 minutes' "
                   "FROM organizations o, generate_series(1, 20000) n")
    return db


class Mutator(threading.Thread):
    """Inserts, updates and deletes AI usage rows, and writes what each row should then be to `expected`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(url, application_name="kit-test-mutator")
        self.stop, self.done, self.errors, self.longest = threading.Event(), 0, [], 0.0

    def run(self) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("CREATE TABLE expected AS SELECT id, input_tokens FROM ai_usage")
        self.conn.autocommit = False
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                with self.conn, self.conn.cursor() as cur:
                    if n % 3 == 0:  # a new row
                        cur.execute("INSERT INTO ai_usage (organization_id, model, input_tokens) SELECT id, 'new', %s "
                                    "FROM organizations RETURNING id", (n,))
                        cur.execute("INSERT INTO expected VALUES (%s, %s)", (cur.fetchone()[0], n))
                    elif n % 3 == 1:  # a changed row, anywhere in key order (copied already or not yet)
                        cur.execute("UPDATE ai_usage SET input_tokens = %s WHERE id = (SELECT id FROM expected "
                                    "ORDER BY md5(id::text || %s) LIMIT 1) RETURNING id", (n, str(n)))
                        changed = cur.fetchone()
                        if changed:
                            cur.execute("UPDATE expected SET input_tokens = %s WHERE id = %s", (n, changed[0]))
                    else:  # a deleted row
                        cur.execute("DELETE FROM ai_usage WHERE id = (SELECT id FROM expected ORDER BY md5(id::text "
                                    "|| %s) LIMIT 1) RETURNING id", (str(n),))
                        gone = cur.fetchone()
                        if gone:
                            cur.execute("DELETE FROM expected WHERE id = %s", (gone[0],))
                self.done += 1
            except psycopg2.Error as exc:  # the swap dropped the table under a statement: it is retried
                self.errors.append(exc)
            self.longest = max(self.longest, time.monotonic() - started)
            time.sleep(0.002)
        self.conn.close()


def test_a_migration_partitions_tables_with_rows_while_writers_insert_update_and_delete(before_008):
    db = before_008
    audit_before = table_rows(db, "audit_logs")
    mutator, writer = Mutator(db.scratch_url), Writer(db.scratch_url)
    mutator.start()
    while db.execute_sql("SELECT to_regclass('expected')").fetchone()[0] is None:
        time.sleep(0.01)
    writer.start()
    said = []
    try:
        migrate.apply(db, ROOT / "migrations", say=said.append)
    finally:
        mutator.stop.set()
        writer.stop.set()
        mutator.join(10)
        writer.join(10)
    for table in ("audit_logs", "ai_usage"):
        assert is_partitioned(db, table)
        assert {m.strftime("%Y-%m") for m in month_partitions(db, table)} >= {"2026-08", "2026-09", "2026-10"}
    assert any("ai_usage is partitioned by created_at" in line and "rows copied" in line for line in said), said
    # every row as the writers left it: none lost, none come back after its delete, none stale
    mismatched = db.execute_sql(
        "SELECT count(*) FROM (SELECT id, input_tokens FROM ai_usage EXCEPT SELECT id, input_tokens FROM expected) a"
    ).fetchone()[0] + db.execute_sql(
        "SELECT count(*) FROM (SELECT id, input_tokens FROM expected EXCEPT SELECT id, input_tokens FROM ai_usage) b"
    ).fetchone()[0]
    assert mutator.done > 20 and mismatched == 0, (mutator.done, mismatched)
    ticks = db.execute_sql("SELECT count(*) FROM audit_logs WHERE action = 'tick'").fetchone()[0]
    assert ticks == writer.written and not writer.errors  # every audit row written meanwhile is there, once
    assert [r for r in table_rows(db, "audit_logs") if r[2]["action"] != "tick"] == audit_before
    # writers were held up at most the lock timeout (a waiting attempt) and half a second (the swap itself)
    assert writer.longest < LOCK_TIMEOUT + 0.5, writer.longest
    assert mutator.longest < LOCK_TIMEOUT + 0.5, mutator.longest
    assert db.execute_sql("SELECT count(*) FROM pg_class WHERE relname LIKE '%%rebuilt%%'").fetchone()[0] == 0
    db.execute_sql("DROP TABLE expected")
    assert migrate.verify(db, ROOT / "migrations") == []


COPY_SLOWLY = """
import sys, time
import kit.partitions as p
from kit.db import Database
db = Database()
db.configure(sys.argv[1], owner=True)
copy = p._copy_rows
def slow(database, table, batch_rows):
    original = database.execute_sql
    def paced(sql, params=None, *a):
        time.sleep(0.02)
        return original(sql, params, *a)
    database.execute_sql = paced
    return copy(database, table, batch_rows)
p._copy_rows = slow
p.partition_online(db, "ai_usage", batch_rows=200)
"""


def test_a_conversion_killed_half_way_finishes_when_run_again_with_every_row(before_008):
    db = before_008
    before = table_rows(db, "ai_usage")
    child = subprocess.Popen([sys.executable, "-c", COPY_SLOWLY, db.scratch_url], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.execute_sql("SELECT to_regclass('ai_usage_rebuilt')").fetchone()[0] is not None and \
                    db.execute_sql("SELECT count(*) > 2000 FROM ai_usage_rebuilt").fetchone()[0]:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert not is_partitioned(db, "ai_usage")
    copied = db.execute_sql("SELECT count(*) FROM ai_usage_rebuilt").fetchone()[0]
    assert 0 < copied < 20000  # killed half-way
    db.execute_sql("INSERT INTO ai_usage (organization_id, model, input_tokens) SELECT id, 'late', 1 FROM organizations")
    before = table_rows(db, "ai_usage")
    assert partition_online(db, "ai_usage", **QUIET) == 20001
    assert table_rows(db, "ai_usage") == before
    assert partition_online(db, "ai_usage", **QUIET) == 0  # done: nothing more


def test_rolling_back_a_conversion_not_finished_leaves_no_copy_and_no_trigger(before_008):
    db = before_008
    from kit.partitions import _copy_rows, _make_shadow, _window  # the first two stages, then a stop

    with db.atomic():
        _make_shadow(db, "ai_usage", "created_at", _window(None, 3))
    _copy_rows(db, "ai_usage", 1000)
    with db.atomic():
        assert unpartition_table(db, "ai_usage") == 0
    assert db.execute_sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'ai_usage_rebuilt%%'").fetchone()[0] == 0
    assert db.execute_sql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ai_usage'::regclass "
                          "AND NOT tgisinternal").fetchone()[0] == 0
    db.execute_sql("INSERT INTO ai_usage (organization_id, model) SELECT id, 'after' FROM organizations")  # still writable


def test_a_row_deleted_or_changed_while_a_batch_holds_its_copy_is_as_the_writer_left_it(before_008):
    """The two races of a batch, played out in order: each would leave a stale row without its rule."""
    db = before_008
    from kit.partitions import _make_shadow, _window

    with db.atomic():
        _make_shadow(db, "ai_usage", "created_at", _window(None, 3))
    deleted, changed = (r[0] for r in db.execute_sql("SELECT id FROM ai_usage ORDER BY id LIMIT 2").fetchall())
    batch = psycopg2.connect(db.scratch_url)  # a batch of the copy: read, inserted, not yet committed
    with batch.cursor() as cur:
        cur.execute("INSERT INTO ai_usage_rebuilt SELECT * FROM ai_usage WHERE id IN (%s, %s) ON CONFLICT DO NOTHING",
                    (deleted, changed))
    writer = psycopg2.connect(db.scratch_url)
    writer.autocommit = True
    with writer.cursor() as cur:  # deleted meanwhile: the copy's row is not visible to it, so it stays...
        cur.execute("DELETE FROM ai_usage WHERE id = %s", (deleted,))
    update = threading.Thread(target=lambda: writer.cursor().execute(  # ...and changed: waits for the batch
        "UPDATE ai_usage SET input_tokens = 999999 WHERE id = %s", (changed,)))
    update.start()
    assert wait_until(lambda: db.execute_sql(  # the update waits on the batch's uncommitted row (by database, not
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "  # pid: behind PgBouncer a
        "AND wait_event_type = 'Lock'").fetchone()[0] == 1)  # client's pid is the pooler's
    batch.commit()
    update.join(10)
    batch.close()
    writer.close()
    partition_online(db, "ai_usage", **QUIET)
    assert db.execute_sql("SELECT count(*) FROM ai_usage WHERE id = %s", (deleted,)).fetchone()[0] == 0
    assert db.execute_sql("SELECT input_tokens FROM ai_usage WHERE id = %s", (changed,)).fetchone()[0] == 999999
