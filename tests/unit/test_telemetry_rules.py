"""Observability's pure rules: query summaries, sqlcommenter comments, server names, leak reports, switches.

No server: summaries and comments are text, a `Target` is built from settings, and the pool's leak
report runs on a clock the test moves over stand-in connections.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote

import pytest

from kit.config import ConfigError, load_settings
from kit.pool import ConnectionPool, Hooks
from kit.telemetry import tag
from kit.telemetry.sql import summarize
from kit.telemetry.tags import MAX_LABEL, comment, labels
from kit.telemetry.watch import Target


@pytest.mark.parametrize("sql, expected", [
    ('SELECT "t1"."id" FROM "organizations" AS "t1" WHERE ("t1"."slug" = %s)', ("SELECT", "SELECT organizations")),
    ('INSERT INTO "public"."audit_logs" ("a") VALUES (%s) RETURNING "id"', ("INSERT", "INSERT public.audit_logs")),
    ('UPDATE "org_credits" SET "balance" = ("balance" - %s)', ("UPDATE", "UPDATE org_credits")),
    ('DELETE FROM "members" WHERE ("id" = %s)', ("DELETE", "DELETE members")),
    ("WITH moved AS (SELECT id FROM a) UPDATE b SET x = 1 FROM moved", ("UPDATE", "UPDATE b")),
    ("  /* a comment */ select 1", ("SELECT", "SELECT")),
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", ("BEGIN", "BEGIN")),
    ("COPY document_chunks (id, embedding) FROM STDIN WITH (FORMAT binary)", ("COPY", "COPY document_chunks")),
    ("secret-token-42 anything", ("OTHER", "OTHER")),  # an unknown word is never echoed
    ("", ("OTHER", "OTHER")),
])
def test_a_summary_is_the_keyword_and_first_table_never_a_value(sql, expected):
    assert summarize(sql)[:2] == expected


def test_a_summary_never_holds_a_literal():
    operation, summary, table = summarize("SELECT * FROM users WHERE email = 'bob@example.com' AND pin = 1234")
    assert summary == "SELECT users" and "bob" not in summary and "1234" not in summary


def test_a_comment_encodes_every_value_so_nothing_can_end_it():
    hostile = "GET /x'*/; DROP TABLE users; --\n%s"
    text = comment({"route": hostile, "tenant": "0b6f…"})
    body = text.replace("%%", "%")
    assert re.fullmatch(r" /\*(\w+='[\w%.~-]*')(,\w+='[\w%.~-]*')*\*/", body)  # no quote, no */ inside
    assert unquote(re.search(r"route='([^']*)'", body)[1]) == hostile
    assert "%s" not in text.replace("%%", "")  # the driver sees no placeholder in it


def test_no_pairs_no_comment():
    assert comment({}) == ""


def test_tags_nest_and_are_bounded():
    with tag(route="GET /a"):
        with tag(job="j" * (MAX_LABEL + 50)):
            assert labels() == {"route": "GET /a", "job": "j" * MAX_LABEL}
        assert labels() == {"route": "GET /a"}
    assert labels() == {}


def test_a_target_names_the_server_and_never_the_password():
    target = Target(namespace="kit", address="db.internal", port=6432, role="replica")
    assert target.attributes == {"db.system.name": "postgresql", "db.namespace": "kit", "server.address": "db.internal",
                                 "server.port": 6432, "kit.server.role": "replica"}
    assert target.pool_name() == "db.internal:6432/kit (replica)"
    assert Target(namespace="kit", address="h", port=5432).pool_name() == "h:5432/kit"


def test_the_switches_are_read_from_the_environment_and_a_bad_one_is_one_sentence():
    settings = load_settings({"DATABASE_SLOW_QUERY_MS": "250", "DATABASE_QUERY_TAGS": "on",
                              "DATABASE_POOL_LEAK_THRESHOLD": "30000"})
    assert (settings.slow_query_ms, settings.query_tags, settings.pool_leak_threshold_ms) == (250, True, 30000)
    assert load_settings({}).query_tags is False and load_settings({}).slow_query_ms == 0
    with pytest.raises(ConfigError, match=r"^DATABASE_QUERY_TAGS must be 1 or 0 \(on or off\), got 'maybe'$"):
        load_settings({"DATABASE_QUERY_TAGS": "maybe"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_leak_is_reported_once_past_the_threshold_with_the_stack_that_took_it(caplog):
    clock = Clock()
    pool = ConnectionPool(Hooks(open=object, close=lambda conn: None), clock=clock, max_size=2, leak_after=10)
    caplog.set_level(logging.WARNING, logger="kit.pool")

    def takes_and_keeps() -> object:
        return pool.getconn()

    conn = takes_and_keeps()
    clock.now += 9.9
    assert pool.report_leaks() == pytest.approx(0.1) and pool.stats()["leaks"] == 0
    clock.now += 0.2
    pool.report_leaks()
    clock.now += 100
    pool.report_leaks()
    [report] = [r.getMessage() for r in caplog.records]
    assert pool.stats()["leaks"] == 1
    assert "checked out for 10.1 s (leak_after 10 s)" in report
    assert f"by thread {threading.current_thread().name}" in report
    assert "in takes_and_keeps" in report and "kit/pool.py" not in report  # the caller's frames, not the pool's
    pool.putconn(conn)
    assert "was given back after 110.1 s" in caplog.records[-1].getMessage()


def test_without_a_threshold_no_stack_is_recorded_and_nothing_is_reported():
    clock = Clock()
    pool = ConnectionPool(Hooks(open=object, close=lambda conn: None), clock=clock, max_size=2)
    pool.getconn()
    clock.now += 10_000
    assert pool.report_leaks() is None and pool.stats()["leaks"] == 0
    assert all(slot.taken_by is None for slot in pool._in_use.values())


def test_database_dup_adds_the_older_attribute_names_to_spans(monkeypatch):
    from kit.telemetry.watch import Shape

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, database/dup")
    target = Target(namespace="kit", address="db.internal", port=5432)
    shape = Shape(target, 'SELECT * FROM "members"')
    assert {key: shape.span[key] for key in ("db.system", "db.name", "net.peer.name", "net.peer.port",
                                             "db.operation", "db.sql.table")} == {
        "db.system": "postgresql", "db.name": "kit", "net.peer.name": "db.internal", "net.peer.port": 5432,
        "db.operation": "SELECT", "db.sql.table": "members"}
    assert shape.span["db.system.name"] == "postgresql"  # the stable names stay
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "database")
    assert "db.system" not in Shape(Target(namespace="kit", address="h", port=1), "SELECT 1").span


def test_a_target_from_libpq_parameters_takes_the_first_host_and_port_and_no_password():
    target = Target.of({"host": "a.internal,b.internal", "port": "6432,5432", "dbname": "kit", "password": "pw"},
                       "replica")
    assert (target.address, target.port, target.namespace, target.role) == ("a.internal,b.internal", 6432, "kit",
                                                                          "replica")
    assert "pw" not in repr(target) and "pw" not in target.pool_name()
    assert Target.of({}, database="given").pool_name() == "localhost:5432/given"
