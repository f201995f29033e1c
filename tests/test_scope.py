"""`request_scope()`: a connection held only for a statement or a transaction, never carried between requests."""

from __future__ import annotations

import contextvars
import logging
import threading

import pytest

from kit.db import database
from kit.db.scope import request_scope
from kit.errors import SessionStateRefused


def in_thread(fn):
    """Run `fn` on another thread in a copy of this context (as a framework's threadpool does); its result."""
    out = {}
    context = contextvars.copy_context()
    thread = threading.Thread(target=lambda: out.setdefault("value", context.run(fn)))
    thread.start()
    thread.join()
    return out["value"]


def test_inside_a_scope_every_thread_gives_its_connection_back_after_each_statement_and_transaction():
    database.close()
    before = database.pool_stats()["in_use"]
    with request_scope():
        assert in_thread(lambda: database.execute_sql("SELECT 1").fetchone()[0]) == 1
        assert database.pool_stats()["in_use"] == before
        with database.atomic():
            database.execute_sql("SELECT 1")
            assert database.pool_stats()["in_use"] == before + 1  # held for the transaction
        assert database.pool_stats()["in_use"] == before and database.is_closed()


def test_session_state_outside_a_transaction_is_refused_in_a_scope_and_allowed_inside_one():
    with request_scope():
        with pytest.raises(SessionStateRefused, match="request scope|PgBouncer"):  # behind PgBouncer, its refusal
            database.execute_sql("SET work_mem = '64MB'")
        with database.atomic():
            database.execute_sql("SET LOCAL work_mem = '64MB'")
            assert database.execute_sql("SHOW work_mem").fetchone()[0] == "64MB"
        assert database.execute_sql("SHOW work_mem").fetchone()[0] != "64MB"


def test_a_connection_left_by_one_request_is_never_used_by_the_next_on_that_thread(caplog):
    database.close()
    results = {}

    def two_requests():
        with request_scope():
            database.execute_sql("BEGIN")  # a transaction begun as SQL and never ended
            results["first"] = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        with request_scope():
            results["second"] = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            results["in_transaction"] = database.execute_sql(
                "SELECT now() = statement_timestamp()").fetchone()[0]
        database.close()

    with caplog.at_level(logging.WARNING, logger="kit.db"):
        thread = threading.Thread(target=two_requests)
        thread.start()
        thread.join()
    assert results["second"] != results["first"] and results["in_transaction"] is True
    assert any("left by an earlier request" in r.getMessage() for r in caplog.records)
