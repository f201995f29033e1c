"""The embedded server, in a throwaway KIT_DATA_DIR: start, reuse, persist, stop, concurrent starts, restarts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
from helpers import scalar

from kit import embedded
from kit.db import PooledDatabase
from kit.roles import ADMIN, OWNER


@pytest.fixture(scope="module")
def data_dir():
    # A short path: the server's unix socket lives in it, and socket paths are limited to ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="kit-emb-"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def kit_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["KIT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "kit.cli", *args], env=environ, capture_output=True, text=True, timeout=180
    )


def query(url: str, sql: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        return scalar(conn, sql)
    finally:
        conn.close()


def test_start_gives_postgres_16_with_pgvector_on_a_unix_socket(data_dir):
    url = embedded.start(data_dir)
    assert url.startswith("postgresql://kit_app@/kit?host=")  # the run-time role: no superuser, owns nothing
    assert query(url, "SELECT NOT rolsuper AND NOT rolbypassrls FROM pg_roles WHERE rolname = current_user") is True
    owner = embedded.start(data_dir, OWNER)
    assert owner.startswith("postgresql://kit_owner@/kit?host=")
    assert query(owner, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'kit'") == "kit_owner"
    assert query(url, "SHOW server_version_num").startswith("16")
    assert query(url, "SHOW listen_addresses") == ""
    query(url, "CREATE EXTENSION IF NOT EXISTS vector; SELECT 1")
    assert query(url, "SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector") == 1.0
    state = embedded.status(data_dir)
    assert state.running and state.pgdata == data_dir / "pgdata"


def test_start_again_reuses_the_running_server(data_dir):
    first = embedded.start(data_dir)
    pid = embedded.status(data_dir).pid
    assert embedded.start(data_dir) == first
    assert embedded.status(data_dir).pid == pid


def test_data_persists_across_stop_and_start(data_dir):
    url = embedded.start(data_dir, OWNER)
    query(url, "CREATE TABLE IF NOT EXISTS kept (note text); INSERT INTO kept VALUES ('still here'); SELECT 1")
    assert embedded.stop(data_dir) is True
    assert not embedded.status(data_dir).running
    assert embedded.stop(data_dir) is False
    url = embedded.start(data_dir, OWNER)
    assert query(url, "SELECT note FROM kept") == "still here"


def test_server_keeps_running_after_the_starting_process_exits(data_dir):
    embedded.stop(data_dir)
    result = kit_cli(data_dir, "db", "start")
    assert result.returncode == 0, result.stderr
    assert embedded.status(data_dir).running


def test_concurrent_starts_share_one_server(data_dir):
    embedded.stop(data_dir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: kit_cli(data_dir, "db", "url"), range(4)))
    for result in results:
        assert result.returncode == 0, result.stderr
    assert len({r.stdout.strip() for r in results}) == 1
    postmasters = subprocess.run(["pgrep", "-f", f"postgres -D {data_dir}/pgdata"], capture_output=True, text=True)
    assert len(postmasters.stdout.split()) == 1


def test_cli_status_and_stop(data_dir):
    embedded.start(data_dir)
    status = kit_cli(data_dir, "db", "status")
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and "PostgreSQL 16" in status.stdout
    assert kit_cli(data_dir, "db", "stop").returncode == 0
    stopped = kit_cli(data_dir, "db", "status")
    assert stopped.returncode == 3 and "stopped" in stopped.stdout


def test_pool_recovers_after_a_server_restart_without_caller_retry(data_dir):
    url = embedded.start(data_dir)
    pool = PooledDatabase(url, min_size=2, max_size=4)
    try:
        with pool.connection_context():
            before = pool.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        held = pool.execute_sql("SELECT pg_backend_pid()").fetchone()[0]  # kept by this thread
        embedded.stop(data_dir)
        embedded.start(data_dir)
        time.sleep(0.1)
        assert pool.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != held
        pool.close()
        with pool.connection_context():
            assert pool.execute_sql("SELECT pg_backend_pid()").fetchone()[0] not in (before, held)
    finally:
        pool.close_all()


def test_a_cluster_of_another_major_version_is_refused_clearly(tmp_path):
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("18\n")
    with pytest.raises(embedded.EmbeddedServerError) as caught:
        embedded.start(tmp_path)
    assert "PostgreSQL 18" in str(caught.value) and "KIT_DATA_DIR" in str(caught.value)


def test_unavailable_embedded_server_says_what_to_do(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ.update(KIT_DATA_DIR=str(tmp_path), PGSERVER_POSTGRES_VERSION="9")  # the package refuses to load
    result = subprocess.run(
        [sys.executable, "-m", "kit.cli", "db", "url"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "No DATABASE_URL is set" in result.stderr and "set DATABASE_URL" in result.stderr
    assert "docker compose up -d" in result.stderr


@pytest.mark.parametrize("companion", ["citus", "replica", "pgbouncer"])
def test_a_companion_is_stopped_whatever_database_url_names_but_started_only_without_it(tmp_path, companion):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    environ.update(KIT_DATA_DIR=str(tmp_path), DATABASE_URL="postgresql://kit_app@/kit?host=/nowhere")

    def kit_db(action: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kit.cli", "db", companion, action], env=environ,
                              capture_output=True, text=True, timeout=60)

    stopped = kit_db("stop")  # as after `export DATABASE_URL=<its URL>`: nothing of it runs here
    assert stopped.returncode == 0 and stopped.stdout.strip().endswith("was not running"), stopped.stderr
    started = kit_db("start")
    assert started.returncode == 1 and "DATABASE_URL is set" in started.stderr and "Traceback" not in started.stderr
    assert not (tmp_path / "pgdata").exists()  # nothing was started


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="trying another local user needs root and setpriv")
@pytest.mark.parametrize("length", ["short", "long"])
def test_another_local_user_can_never_connect(length):
    """Whatever the data directory's length (a long one moves the socket to /tmp/<hash>)."""
    base = Path(tempfile.mkdtemp(prefix="kit-emb-"))
    data_dir = base / ("d" * 90 if length == "long" else "d")
    try:
        url = embedded.start(data_dir)
        state = embedded.status(data_dir)
        assert (state.socket_dir != state.pgdata) == (length == "long")
        assert query(url, "SELECT 1") == 1  # the invoking user connects
        client = shutil.which("psql") or str(embedded.psql_path())
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", client,
                                 "-h", str(state.socket_dir), "-p", str(state.port or 5432), "-U", "postgres",
                                 "-d", "kit", "-Atc", "SELECT 'connected'"],
                                capture_output=True, text=True, timeout=30)
        assert "connected" not in nobody.stdout
        assert nobody.returncode != 0 and "Permission denied" in nobody.stderr, nobody.stderr
        assert oct(state.socket_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_crash_mid_migrate_is_one_sentence_and_start_recovers(data_dir, tmp_path):
    url = embedded.start(data_dir, OWNER)
    query(url, "DROP TABLE IF EXISTS before_crash; CREATE TABLE before_crash (n int); INSERT INTO before_crash "
               "VALUES (1); SELECT 1")
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_slow.py").write_text(
        "def migrate(migrator, database, *, fake=False):\n"
        "    migrator.sql('CREATE TABLE half_done (n int)')\n"
        "    migrator.sql('SELECT pg_sleep(30)')\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["KIT_DATA_DIR"] = str(data_dir)
    run = subprocess.Popen([sys.executable, "-m", "kit.cli", "migrate", "--dir", str(migrations)], env=environ,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not query(
            embedded.start(data_dir, ADMIN), "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'"):
        time.sleep(0.05)
    postmaster = int((embedded.pgdata_dir(data_dir) / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)  # the whole server, not one backend
    _, err = run.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("kit: error: "), err
    assert "001_slow" in lines[0]
    started = kit_cli(data_dir, "db", "start")  # at once: the dead server's processes may still be around
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1].split(": ", 1)[-1].replace("kit_app@", "kit_owner@")
    assert query(url, "SELECT count(*) FROM before_crash") == 1  # recovered, committed data kept
    assert query(url, "SELECT to_regclass('half_done') IS NULL") is True
