"""`kit db replica start|stop`: a real streaming replica of the embedded server, which follows, pauses and catches up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from helpers import as_admin, kit_replica, owner_query, query, wait_until, with_dbname

from kit.config import load_settings

pytestmark = pytest.mark.skipif(bool(load_settings().database_url),
                                reason="`kit db replica` makes a replica of the embedded server only")


kit = kit_replica


@pytest.fixture()
def replica(test_db_url):
    started = kit("start")
    assert started.returncode == 0, started.stderr
    url = with_dbname(started.stdout.strip().splitlines()[-1], urlsplit(test_db_url).path.lstrip("/"))
    owner_query(test_db_url, "CREATE TABLE IF NOT EXISTS replica_probe (n int); TRUNCATE replica_probe; "
                             "GRANT SELECT, INSERT ON replica_probe TO kit_app")
    yield url
    kit("stop")
    owner_query(test_db_url, "DROP TABLE IF EXISTS replica_probe")


def seen(url: str, n: int) -> bool:
    try:
        return bool(query(url, "SELECT count(*) FROM replica_probe WHERE n = %s", (n,))[0][0])
    except psycopg2.Error:
        return False


def test_the_replica_streams_refuses_writes_pauses_and_catches_up_after_a_stop(replica, test_db_url):
    assert query(replica, "SELECT pg_is_in_recovery()") == [(True,)]
    query(test_db_url, "INSERT INTO replica_probe VALUES (1)")
    assert wait_until(lambda: seen(replica, 1), timeout=10)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        query(replica, "INSERT INTO replica_probe VALUES (2)")
    # replay paused: the primary's writes wait; resumed: they arrive
    query(as_admin(replica), "SELECT pg_wal_replay_pause()")
    try:
        query(test_db_url, "INSERT INTO replica_probe VALUES (3)")
        assert not wait_until(lambda: seen(replica, 3), timeout=1)
    finally:
        query(as_admin(replica), "SELECT pg_wal_replay_resume()")
    assert wait_until(lambda: seen(replica, 3), timeout=10)
    # stopped: unreachable; writes meanwhile arrive once it starts again
    stopped = kit("stop")
    assert stopped.returncode == 0 and "replica stopped" in stopped.stdout
    with pytest.raises(psycopg2.OperationalError):
        query(replica, "SELECT 1")
    query(test_db_url, "INSERT INTO replica_probe VALUES (4)")
    again = kit("start")
    assert again.returncode == 0, again.stderr
    assert wait_until(lambda: seen(replica, 4), timeout=20)
    assert kit("stop").stdout.strip() == "replica stopped" and kit("stop").stdout.strip() == "the replica was not running"


def test_a_set_database_url_is_refused_in_one_sentence():
    result = subprocess.run([sys.executable, "-m", "kit.cli", "db", "replica", "start"],
                            env=dict(os.environ, DATABASE_URL="postgresql://someone:secret@db.example/app"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "secret" not in result.stderr
    assert "makes a replica of the embedded server only" in result.stderr


def test_kit_migrate_pointed_at_a_replica_says_so_in_one_sentence(replica):
    import os
    import subprocess
    import sys

    owner = replica.replace("kit_app@", "kit_owner@", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env.update(DATABASE_URL=replica, DATABASE_OWNER_URL=owner)
    for command in (["migrate"], ["migrate", "rollback"]):
        ran = subprocess.run([sys.executable, "-m", "kit.cli", *command], env=env, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode != 0 and "Traceback" not in ran.stderr, ran.stderr
        assert "is a read-only replica (in recovery): migrations run on the primary" in ran.stderr, ran.stderr


def test_a_stopped_replica_further_behind_than_a_copy_costs_is_copied_again(replica, test_db_url):
    """A replica far behind (here: its slot gone, so the WAL it needs may be too) is copied, not replayed."""
    marker = Path(urlsplit(replica).query.split("host=")[1].split("&")[0]) / "PG_VERSION"
    copied = marker.stat().st_mtime_ns
    assert kit("stop").returncode == 0
    admin = as_admin(test_db_url)
    query(admin, "SELECT pg_drop_replication_slot('kit_replica')")
    query(test_db_url, "INSERT INTO replica_probe VALUES (5)")
    again = kit("start")
    assert again.returncode == 0, again.stderr
    assert marker.stat().st_mtime_ns != copied  # a new base backup, not the old copy started
    assert seen(replica, 5)  # `start` returned once it had replayed what the primary had
    assert query(admin, "SELECT active FROM pg_replication_slots WHERE slot_name = 'kit_replica'") == [(True,)]

