"""Bounded time: every statement of the application has a limit, held by the server, reported in one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from helpers import limited_database, observes_server_sessions, scalar, wait_until

from kit import ConfigError, StatementTimeout
from kit.config import load_settings
from kit.db import Database


@pytest.fixture
def limited(test_db_url):
    """The kit's database on the suite's, with a statement time limit of 300 ms."""
    db = limited_database(test_db_url, 300, pool_max=4)
    yield db
    db.close_all()


def test_a_statement_past_the_limit_is_cancelled_by_the_server_and_said_in_one_sentence(limited):
    said = "the statement ran past its time limit (300 ms, DATABASE_STATEMENT_TIMEOUT) and the server cancelled it"
    for in_transaction in (False, True):
        start = time.perf_counter()
        with pytest.raises(StatementTimeout, match=said.replace("(", r"\(").replace(")", r"\)")):
            if in_transaction:
                with limited.atomic():
                    limited.execute_sql("SELECT 1")
                    limited.execute_sql("SELECT pg_sleep(5)")
            else:
                limited.execute_sql("SELECT pg_sleep(5)")
        assert time.perf_counter() - start < 2.0
        assert limited.execute_sql("SELECT 1").fetchone()[0] == 1  # the connection serves the next statement


def test_a_savepoint_rolled_back_does_not_lift_the_limit(limited):
    with limited.atomic():
        try:
            with limited.atomic():
                limited.execute_sql("SET LOCAL statement_timeout = 0")  # lifted inside the savepoint ...
                raise RuntimeError
        except RuntimeError:
            pass
        with pytest.raises(StatementTimeout):
            limited.execute_sql("SELECT pg_sleep(5)")  # ... and every statement carries the limit again


def test_the_owner_s_commands_are_not_cut_by_the_application_s_limit(test_db_url, owner_url):
    owner = Database()
    owner.configure(owner_url, settings=replace(load_settings(), statement_timeout_ms=300), owner=True)
    try:
        assert owner.execute_sql("SELECT pg_sleep(0.5), 1").fetchone()[1] == 1
    finally:
        owner.close_all()


def test_slow_statements_at_once_leave_the_pool_serving_others(limited):
    """Four connections, all held by statements that would run for minutes: each is cut at the limit."""
    done, errors = [], []

    def hog() -> None:
        try:
            with limited.connection_context():
                limited.execute_sql("SELECT pg_sleep(120)")
        except StatementTimeout:
            done.append(True)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    hogs = [threading.Thread(target=hog) for _ in range(4)]
    for thread in hogs:
        thread.start()
    assert wait_until(lambda: limited.pool_stats()["in_use"] == 4)  # every connection is held by a hog
    start = time.perf_counter()
    with limited.connection_context():
        assert limited.execute_sql("SELECT 42").fetchone()[0] == 42  # a connection comes free within the limit
    assert time.perf_counter() - start < 2.0
    for thread in hogs:
        thread.join(10)
    assert errors == [] and len(done) == 4


def test_the_limit_is_read_from_the_environment_in_one_sentence():
    assert load_settings({}).statement_timeout_ms == 30_000
    assert load_settings({"DATABASE_STATEMENT_TIMEOUT": "0"}).statement_timeout_ms == 0
    with pytest.raises(ConfigError, match="DATABASE_STATEMENT_TIMEOUT must be a whole number, got 'soon'"):
        load_settings({"DATABASE_STATEMENT_TIMEOUT": "soon"})


@observes_server_sessions
def test_a_backend_whose_client_was_killed_stops_within_seconds(test_db_url, monitor):
    """client_connection_check_interval (a default of every kit role): a killed client's query does not run on."""
    tag = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", (
        "import psycopg2, sys; c = psycopg2.connect(sys.argv[1], application_name=sys.argv[2]); "
        "c.cursor().execute('SELECT pg_sleep(120)')"), test_db_url, tag])
    backend = None
    deadline = time.monotonic() + 20
    while backend is None and time.monotonic() < deadline:
        with monitor.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'", (tag,))
            found = cursor.fetchone()
        backend = found[0] if found else None
        time.sleep(0.05)
    assert backend is not None, "the child's query never started"
    child.kill()  # SIGKILL: the socket closes, nobody says goodbye
    child.wait()
    killed = time.monotonic()
    assert wait_until(lambda: scalar(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                     (backend,)) == 0, timeout=10)
    assert time.monotonic() - killed < 3.0  # not the 120 s its statement asked for


def test_a_search_has_its_own_tighter_limit_outside_a_transaction(test_db_url):
    import numpy as np
    from helpers import create_owned, drop_owned
    from peewee import AutoField, Model

    from kit.db import database as db
    from kit.vector import VectorField, copy_rows, nearest

    class Slow(Model):
        id = AutoField()
        embedding = VectorField(256)

        class Meta:
            database = db
            table_name = "limits_slow_search"

    create_owned(Slow)
    kept = db.settings
    try:
        vectors = np.random.default_rng(3).standard_normal((40_000, 256)).astype(np.float32)
        copy_rows(Slow, ({"embedding": v} for v in vectors))
        db.settings = replace(kept, search_timeout_ms=1)
        said = r"the search ran past its time limit \(1 ms, DATABASE_SEARCH_TIMEOUT\) and the server cancelled it"
        with pytest.raises(StatementTimeout, match=said):
            nearest(Slow.select(Slow.id), Slow.embedding, vectors[0], k=5, exact=True)
        with db.atomic():  # inside a transaction: the statement limit only (a SET LOCAL would outlive the search)
            assert len(nearest(Slow.select(Slow.id), Slow.embedding, vectors[0], k=5, exact=True)) == 5
        db.settings = replace(kept, search_timeout_ms=0)
        assert len(nearest(Slow.select(Slow.id), Slow.embedding, vectors[0], k=5, exact=True)) == 5
    finally:
        db.settings = kept
        drop_owned(Slow)
