"""Settings from the environment: defaults, every bad value as one clear sentence, and the CLI's exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.config import ConfigError, load_settings, mask_password
from kit.db import Database, DatabaseUnavailable


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.database_url is None
    assert (settings.pool_min, settings.pool_max) == (2, 10)
    assert (settings.pool_idle_timeout_ms, settings.pool_timeout_ms) == (30_000, 10_000)
    assert settings.data_dir == Path.home() / ".local" / "share" / "kit"  # outside any project: one per user
    (tmp_path / "pyproject.toml").write_text("[tool.kit]\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert load_settings({}).data_dir == tmp_path / ".kit"  # inside one: at its root


def test_every_variable_is_read():
    settings = load_settings(
        {
            "DATABASE_URL": "postgres://app:secret@db.internal:6543/app?sslmode=require",
            "DATABASE_POOL_MIN": "0",
            "DATABASE_POOL_MAX": "25",
            "DATABASE_POOL_IDLE_TIMEOUT": "500",
            "DATABASE_POOL_TIMEOUT": "250",
            "KIT_DATA_DIR": "/srv/kit",
        }
    )
    assert settings.database_url == "postgresql://app:secret@db.internal:6543/app?sslmode=require"
    assert (settings.pool_min, settings.pool_max) == (0, 25)
    assert (settings.pool_idle_timeout_ms, settings.pool_timeout_ms) == (500, 250)
    assert settings.data_dir == Path("/srv/kit")
    assert settings.safe_url == "postgresql://app:***@db.internal:6543/app?sslmode=require"


def test_unix_socket_url_is_accepted():
    url = "postgresql://postgres@/kit?host=/var/run/postgresql"
    assert load_settings({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "env, words",
    [
        ({"DATABASE_POOL_MIN": "two"}, ["DATABASE_POOL_MIN", "whole number", "'two'"]),
        ({"DATABASE_POOL_MAX": "1.5"}, ["DATABASE_POOL_MAX", "whole number", "'1.5'"]),
        ({"DATABASE_POOL_IDLE_TIMEOUT": "-1"}, ["DATABASE_POOL_IDLE_TIMEOUT", "negative", "-1"]),
        ({"DATABASE_POOL_TIMEOUT": "soon"}, ["DATABASE_POOL_TIMEOUT", "'soon'"]),
        ({"DATABASE_POOL_MIN": "5", "DATABASE_POOL_MAX": "3"}, ["DATABASE_POOL_MIN (5)", "DATABASE_POOL_MAX (3)"]),
        ({"DATABASE_POOL_MAX": "0"}, ["DATABASE_POOL_MAX", "at least 1"]),
        ({"DATABASE_URL": "mysql://root:hunter2@localhost/app"}, ["DATABASE_URL", "postgresql://", "mysql://"]),
        ({"DATABASE_URL": "localhost:5432/app"}, ["DATABASE_URL", "postgresql://"]),
        ({"DATABASE_URL": "postgresql://u:hunter2@host:notaport/db"}, ["DATABASE_URL", "u:***@"]),
    ],
)
def test_bad_values_are_named(env, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    for word in words:
        assert word in message
    assert "hunter2" not in message


def test_mask_password():
    assert mask_password("postgresql://a:b@h/d") == "postgresql://a:***@h/d"
    assert mask_password("postgresql://a@h/d") == "postgresql://a@h/d"
    assert mask_password("postgresql://a:p%40ss@h:1/d") == "postgresql://a:***@h:1/d"


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:hunter2@db/app",
        "postgresql://app:hun@ter:2@db/app",                  # unencoded @ and : in the password
        "postgresql://app:hun/ter2?x@db/app",                 # / and ? in it too
        "postgresql://app:hunter%402@db/app",                 # percent-encoded
        "postgresql://app@db/app?password=hunter2",           # in the query string
        "postgresql://app@db/app?sslmode=require&Password=hunter2&application_name=x",
        "host=db user=app password=hunter2 dbname=app",       # a key=value DSN
        "host=db password='hunter 2' dbname=app",             # quoted, with a space
        "Migrating postgresql://app@/kit?host=/tmp&password=hunter2",  # inside a message
    ],
)
def test_every_spelling_of_a_password_is_masked(text):
    shown = mask_password(text)
    assert "hunter" not in shown and "***" in shown
    assert ("db" in shown) or ("/tmp" in shown)  # the rest stays readable


def test_pw_migrate_and_connection_errors_never_print_the_password(owner_url, tmp_path):
    secret_url = owner_url + ("&" if "?" in owner_url else "?") + "password=hunter2secret"  # migrations: the owner
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    root = Path(__file__).resolve().parent.parent
    shown = subprocess.run(["pw_migrate", "migrate", "--directory", str(root / "migrations")], cwd=root,
                           env={**environ, "DATABASE_URL": secret_url}, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "Migrating" in shown.stdout + shown.stderr and "hunter2secret" not in shown.stdout + shown.stderr
    bad = "postgresql://app:hunter2secret@127.0.0.1:1/app"  # nothing listens there
    failed = kit_cli("db", "status", DATABASE_URL=bad)
    assert failed.returncode != 0 and "hunter2secret" not in failed.stdout + failed.stderr
    broken = kit_cli("db", "url", DATABASE_URL="postgresql://app@db/app?password=hunter2secret&x")
    assert "hunter2secret" not in broken.stdout + broken.stderr


def test_kit_db_psql_passes_the_password_by_environment_not_the_command_line(test_db_url):
    secret_url = test_db_url + ("&" if "?" in test_db_url else "?") + "password=hunter2secret"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    psql = subprocess.Popen([sys.executable, "-m", "kit.cli", "db", "psql", "-Atc", "SELECT pg_sleep(1.5), 42"],
                            env={**environ, "DATABASE_URL": secret_url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 10
    while psql.poll() is None and time.monotonic() < deadline:  # what `ps` shows every local user
        try:
            seen.append(Path(f"/proc/{psql.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            break
        time.sleep(0.05)
    out, err = psql.communicate(timeout=30)
    assert psql.returncode == 0, err
    assert out.strip().endswith("42")
    assert any("psql" in line for line in seen), seen  # the check saw psql itself
    assert not any("hunter2secret" in line for line in seen)


def kit_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "kit.cli", *args], env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "env, words",
    [
        ({"DATABASE_POOL_MIN": "abc"}, ["DATABASE_POOL_MIN", "'abc'"]),
        ({"DATABASE_URL": "redis://:topsecret@localhost/0"}, ["DATABASE_URL", "redis://"]),
    ],
)
def test_cli_reports_bad_settings_in_one_sentence(env, words):
    result = kit_cli("db", "url", **env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("kit: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_unreachable_database_url_is_a_clear_error():
    url = "postgresql://kit:topsecret@127.0.0.1:1/kit"
    db = Database()
    db.configure(url)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.execute_sql("SELECT 1")
    message = str(caught.value)
    assert message.startswith("could not connect to the database at postgresql://kit:***@127.0.0.1:1/kit: ")
    assert "topsecret" not in message
    status = kit_cli("db", "status", DATABASE_URL=url)
    assert status.returncode == 1 and "reachable: no" in status.stdout and "topsecret" not in status.stdout


def test_importing_the_kit_does_not_connect_or_start_a_server(tmp_path):
    code = "import kit, kit.db, kit.pool, kit.config, kit.embedded, kit.cli; print('imported')"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["KIT_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
    assert not (tmp_path / "data").exists(), "import must not start the embedded server"


def test_configured_database_shows_a_masked_url_and_connects_with_the_real_one(test_db_url):
    db = Database()
    secret_url = "postgresql://kit:topsecret@127.0.0.1:1/kit"
    db.configure(secret_url)
    assert db.database == "postgresql://kit:***@127.0.0.1:1/kit"  # what peewee and pw_migrate print
    assert db.url == secret_url
    db.configure(test_db_url)
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1
    db.close_all()


def test_pw_migrate_reports_an_unreachable_database_in_one_sentence():
    root = Path(__file__).resolve().parent.parent
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = "postgresql://kit:topsecret@127.0.0.1:1/kit"
    result = subprocess.run(
        [sys.executable, "-m", "peewee_migrate", "migrate"], cwd=root, env=environ, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "kit: error: could not connect to the database at postgresql://kit:***@127.0.0.1:1/kit" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
