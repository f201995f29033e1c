"""No front end shows a password, in any spelling of a URL: each spelling through each front end.

The password's two halves are distinctive, so a piece quoted by any parser or libpq error is caught.
Nothing listens at port 1, so a URL that parses still fails to connect, and that error is checked too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit import KitError
from kit.db import Database

ROOT = Path(__file__).resolve().parent.parent
HALVES = ("Zq9xK", "Wv8yT")

SPELLINGS = {
    "plain": "postgresql://u:Zq9xKWv8yT@127.0.0.1:1/db",
    "unencoded @": "postgresql://u:Zq9xK@Wv8yT@127.0.0.1:1/db",
    "unencoded /": "postgresql://u:Zq9xK/Wv8yT@127.0.0.1:1/db",
    "unencoded #": "postgresql://u:Zq9xK#Wv8yT@127.0.0.1:1/db",
    "unencoded ?": "postgresql://u:Zq9xK?Wv8yT@127.0.0.1:1/db",
    "percent-encoded": "postgresql://u:Zq9xK%40%2FWv8yT@127.0.0.1:1/db",
    "password=": "postgresql://u@127.0.0.1:1/db?password=Zq9xKWv8yT",
    "sslpassword=": "postgresql://u@127.0.0.1:1/db?sslpassword=Zq9xKWv8yT&password=Zq9xKWv8yT",
    "key=value": "postgres://u@127.0.0.1:1/db?password='Zq9xK Wv8yT'",
}
FRONT_ENDS = {
    "kit db status": [sys.executable, "-m", "kit.cli", "db", "status"],
    "kit migrate status": [sys.executable, "-m", "kit.cli", "migrate", "status"],
    "pw_migrate migrate": [sys.executable, "-m", "peewee_migrate", "migrate"],
    "python -m kit.seed": [sys.executable, "-m", "kit.seed", "fixtures/dev.yaml"],
    "kit db check": [sys.executable, "-m", "kit.cli", "db", "check"],
    "kit db url": [sys.executable, "-m", "kit.cli", "db", "url"],
}


def shows_a_secret(text: str) -> bool:
    return any(half in text for half in HALVES)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_front_end_shows_a_password_in_any_spelling(spelling, front_end):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    environ.update(DATABASE_URL=SPELLINGS[spelling])
    done = subprocess.run(FRONT_ENDS[front_end], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert not shows_a_secret(said), said
    assert "Traceback" not in said, said
    if front_end != "kit db url":  # it only prints the URL (masked); everything else has to connect and cannot
        assert done.returncode != 0, said


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_exceptions_and_pool_stats_never_show_a_password(spelling, test_db_url):
    db = Database()
    try:
        db.configure(SPELLINGS[spelling])
        with pytest.raises(KitError) as caught:
            db.execute_sql("SELECT 1")
    except KitError as refused:  # refused while reading the URL: before any parser could quote it
        caught = pytest.ExceptionInfo.from_exc_info((type(refused), refused, refused.__traceback__))
    assert not shows_a_secret(str(caught.value)) and "\n" not in str(caught.value).strip()
    db.close_all()
    routed = Database()
    try:
        routed.configure(test_db_url, replicas=[SPELLINGS[spelling]])
    except KitError as refused:
        assert not shows_a_secret(str(refused))
        return
    try:
        assert routed.read_sql("SELECT 1").fetchone()[0] == 1  # the primary serves while the replica is down
        assert not shows_a_secret(repr(routed.pool_stats())) and not shows_a_secret(repr(routed.check_replicas()))
    finally:
        routed.close_all()


def test_a_comma_in_a_replica_password_does_not_split_the_url():
    from kit.config import load_settings

    url = "postgresql://u:Zq9x,Wv8y@127.0.0.1:1/db"
    settings = load_settings({"DATABASE_URL": "postgresql://a@h/b", "DATABASE_REPLICA_URLS": f"{url}, {url}"})
    assert settings.replica_urls == (url, url)
