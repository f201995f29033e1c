"""Schema changes under contention: an application transaction holds a lock for 10 s while a writer records
audit rows every 20 ms and `kit maintain` (which must make a partition) or `kit migrate` (a migration that
alters the table) runs. The writer never stalls longer than the lock timeout plus 0.5 s; the command
completes once the holder is gone, or gives up in one sentence naming it, with nothing half-done."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from helpers import Writer

from kit import LockBusy, migrate
from kit.ddl import Blocker, LockPolicy
from kit.maintain import maintain
from kit.models import ALL_MODELS
from kit.partitions import month_partitions

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}
LOCK_TIMEOUT = 1.0
HOLD = 10.0  # several attempts, each waiting the lock timeout, pauses growing between them


@pytest.fixture
def migrated(fresh_database, monkeypatch):
    """A fully migrated scratch database, with a 1 s lock timeout and a 40 s budget."""
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT", str(int(LOCK_TIMEOUT * 1000)))
    monkeypatch.setenv("DATABASE_LOCK_BUDGET", "40000")
    migrate.apply(fresh_database, ROOT / "migrations", **QUIET)
    return fresh_database


def hold_read_lock(url: str, seconds: float) -> tuple[threading.Thread, int]:
    """An application transaction that read audit_logs and stays open `seconds`; its backend pid."""
    conn = psycopg2.connect(url, application_name="kit-test-holder")
    pid = scalar(conn, "SELECT pg_backend_pid()")
    scalar(conn, "SELECT count(*) FROM audit_logs")  # AccessShare on the table and every partition

    def finish():
        time.sleep(seconds)
        conn.rollback()
        conn.close()

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread, pid


def scalar(conn, sql: str):
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def newest_partition_dropped(db) -> str:
    """Drop the last partition made ahead, so `kit maintain` must make it again; its name."""
    name = month_partitions(db, "audit_logs")[max(month_partitions(db, "audit_logs"))]
    db.execute_sql(f'ALTER TABLE audit_logs DETACH PARTITION "{name}"')
    db.execute_sql(f'DROP TABLE "{name}"')
    return name


def under_contention(db, command) -> tuple[Writer, float, object]:
    """Run `command` while a writer writes and a holder holds; (the writer, seconds it took, its result)."""
    writer = Writer(db.scratch_url)
    writer.start()
    assert writer.writes()
    holder, _ = hold_read_lock(db.scratch_url, HOLD)
    started = time.monotonic()
    try:
        result = command()
    finally:
        took = time.monotonic() - started
        holder.join()
        writer.writes()  # and once the holder is gone
        writer.stop.set()
        writer.join()
    return writer, took, result


def test_kit_maintain_behind_a_long_transaction_never_stalls_the_writer_and_then_completes(migrated):
    db = migrated
    name = newest_partition_dropped(db)
    said: list[str] = []
    writer, took, _ = under_contention(db, lambda: maintain(db, ALL_MODELS, say=said.append))
    assert not writer.errors and writer.written > 100
    assert writer.longest <= LOCK_TIMEOUT + 0.5, f"the writer stalled {writer.longest:.2f} s"
    assert took >= HOLD - 1  # it waited for the holder, in short waits
    assert name in month_partitions(db, "audit_logs").values()
    assert any(line.startswith("audit_logs: partitions: 1 created") for line in said), said
    assert any("kit-test-holder" in line and "retrying" in line for line in said), said


def test_kit_migrate_behind_a_long_transaction_never_stalls_the_writer_and_then_completes(migrated, tmp_path):
    db = migrated
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    (directory / "099_alter_audit_logs.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n"
        "    migrator.sql('ALTER TABLE audit_logs ADD COLUMN note text')\n\n\n"
        "def rollback(migrator, database, *, fake=False):\n"
        "    migrator.sql('ALTER TABLE audit_logs DROP COLUMN note')\n")
    writer, took, applied = under_contention(db, lambda: migrate.apply(db, directory, **QUIET))
    assert applied == ["099_alter_audit_logs"]
    assert not writer.errors and writer.written > 100
    assert writer.longest <= LOCK_TIMEOUT + 0.5, f"the writer stalled {writer.longest:.2f} s"
    assert took >= HOLD - 1
    assert db.execute_sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'audit_logs' "
                          "AND column_name = 'note'").fetchone()[0] == 1


def test_a_schema_change_that_cannot_get_its_lock_gives_up_naming_the_holder_with_nothing_done(migrated, monkeypatch):
    db = migrated
    monkeypatch.setenv("DATABASE_LOCK_BUDGET", "3000")
    name = newest_partition_dropped(db)
    app_url = db.scratch_url.replace("kit_owner@", "kit_app@", 1)  # the application's role, not the owner's
    assert app_url != db.scratch_url
    holder, pid = hold_read_lock(app_url, 8)
    started = time.monotonic()
    with pytest.raises(LockBusy) as caught:
        maintain(db, ALL_MODELS, **QUIET)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"pid {pid} (application 'kit-test-holder'" in message, message
    # another role's session, described in full: the owner reads pg_stat_activity as pg_read_all_stats
    assert "role kit_app, idle in transaction, its transaction open" in message
    assert message.startswith(f"audit_logs: making partition {name}: gave up after ")
    assert "\n" not in message and caught.value.blockers[0].pid == pid
    # nothing half-done: neither the partition nor a table beside it
    assert db.execute_sql("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None
    holder.join()


def test_the_pause_between_attempts_grows_is_jittered_and_is_capped():
    policy = LockPolicy(timeout=1, budget=60)
    pauses = [policy.pause(n) for n in range(1, 12)]
    assert all(0 < p <= 5 for p in pauses)
    assert pauses[0] <= 0.5 and max(pauses[-3:]) > 2
    assert len({round(policy.pause(3), 6) for _ in range(20)}) > 10  # two runs do not retry in step


def test_a_blocker_is_described_without_its_query():
    said = Blocker(41, "web", "kit_app", "idle in transaction", 42.4).describe()
    assert said == "pid 41 (application 'web', role kit_app, idle in transaction, its transaction open 42 s)"
    assert Blocker(7, "", "", None, None).describe() == "pid 7 (no application name)"


def test_plain_pw_migrate_behind_a_long_transaction_retries_and_never_stalls_the_writer(migrated, tmp_path):
    import os
    import subprocess
    import sys

    db = migrated
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    (directory / "099_alter_audit_logs.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n"
        "    migrator.sql('ALTER TABLE audit_logs ADD COLUMN note text')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    env.update(DATABASE_URL=db.scratch_url, DATABASE_LOCK_TIMEOUT=str(int(LOCK_TIMEOUT * 1000)),
               DATABASE_LOCK_BUDGET="40000")

    def pw_migrate():
        done = subprocess.run([sys.executable, "-m", "peewee_migrate", "migrate"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr

    writer, took, said = under_contention(db, pw_migrate)
    assert not writer.errors and writer.written > 100
    assert writer.longest <= LOCK_TIMEOUT + 0.5, f"the writer stalled {writer.longest:.2f} s"
    assert took >= HOLD - 1 and "applying 099_alter_audit_logs: waited 1 s for a lock held by pid" in said, said
    assert db.execute_sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'audit_logs' "
                          "AND column_name = 'note'").fetchone()[0] == 1
