"""The kit behind a real PgBouncer in transaction mode (`kit db pgbouncer`): what works, what is refused, and why."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from helpers import with_dbname

from kit.config import ConfigError, load_settings
from kit.db import Database
from kit.devservers.pgbouncer import _binary
from kit.errors import SessionStateRefused
from kit.migrate.lock import check_held, hold_lock

pytestmark = [
    pytest.mark.skipif(bool(load_settings().database_url),
                       reason="`kit db pgbouncer` runs in front of the embedded server only"),
]


def kit(*args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "kit.cli", "db", "pgbouncer", *args], env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bouncer_url(test_db_url):
    try:
        _binary()
    except Exception as exc:  # CI installs it (tests/through-pgbouncer); a developer may not have it
        pytest.skip(str(exc))
    started = kit("start")
    assert started.returncode == 0, started.stderr
    yield with_dbname(started.stdout.strip().splitlines()[-1], urlsplit(test_db_url).path.lstrip("/"))


@pytest.fixture
def pooled(bouncer_url):
    db = Database()
    # no time limit of the kit's: a setting left on a server connection would show as it is
    db.configure(bouncer_url, settings=replace(load_settings(), pooler="pgbouncer", statement_timeout_ms=0))
    yield db
    db.close_all()


def test_the_kit_works_through_pgbouncer_and_refuses_session_state_in_one_sentence(pooled):
    db = pooled
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1
    with db.atomic():  # what transaction pooling allows: state that ends with the transaction
        db.execute_sql("SET LOCAL statement_timeout = '5s'")
        assert db.execute_sql("SHOW statement_timeout").fetchone()[0] == "5s"
        db.execute_sql("SELECT pg_advisory_xact_lock(42)")
        db.execute_sql("CREATE TEMP TABLE scratch_rows (n int) ON COMMIT DROP")
    for statement, kind in [("SET statement_timeout = '5s'", "settings (SET)"),
                            ("SELECT pg_advisory_lock(42)", "advisory locks"),
                            ("LISTEN kit_events", "LISTEN registrations"),
                            ("PREPARE two AS SELECT 2", "prepared statements"),
                            ("CREATE TEMP TABLE kept_rows (n int)", "temporary tables")]:
        with pytest.raises(SessionStateRefused) as refused:
            db.execute_sql(statement)
        message = str(refused.value)
        assert message.startswith(kind) and "DATABASE_POOLER=pgbouncer" in message and "\n" not in message
    # nothing of them was sent: no server connection behind PgBouncer kept a lock or a setting
    assert db.execute_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0
    assert db.execute_sql("SHOW statement_timeout").fetchone()[0] == "0"


def test_a_lock_held_by_its_own_transaction_excludes_a_second_holder_through_pgbouncer(pooled):
    said: list[str] = []
    first = hold_lock(pooled, 0x6B6974, "the first holder", said.append)
    got = threading.Event()

    def second() -> None:
        hold_lock(pooled, 0x6B6974, "the first holder", said.append, poll=0.05).close()
        got.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not got.wait(1.0)  # the second waits, and says so
    assert said and said[0].startswith("waiting for the first holder")
    check_held(first, "the lock")
    first.close()  # released with its transaction
    assert got.wait(10)
    thread.join()


def test_the_pooler_setting_is_checked():
    assert load_settings({"DATABASE_POOLER": "PgBouncer"}).pooler == "pgbouncer"
    with pytest.raises(ConfigError, match="DATABASE_POOLER must be pgbouncer or unset, got 'pgpool'"):
        load_settings({"DATABASE_POOLER": "pgpool"})


def test_pgbouncer_start_prints_its_url_last_and_stop_says_what_it_did(bouncer_url):
    again = kit("start")  # already running: the same URL
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1].startswith("postgresql://")
    environ = dict(os.environ, DATABASE_URL="postgresql://someone:secret@db.example/app")
    refused = subprocess.run([sys.executable, "-m", "kit.cli", "db", "pgbouncer", "start"], env=environ,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "secret" not in refused.stderr and "Traceback" not in refused.stderr
