"""Observability on a real server, read back through OpenTelemetry's SDK and its in-memory exporters.

Spans and metrics for model queries, raw SQL, a search, a transaction, a replica read, a re-send
after a killed backend, a migration and a seed load; nothing in them holds a parameter value or a
password. A real leak is reported once with the stack that took it; query tags reach
`pg_stat_activity`; slow statements are logged once; one request through a real HTTP server is a
single trace from the handler to the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import peewee
import pytest
from helpers import backend_pid, observes_server_sessions, wait_until
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_read_routing import needs_embedded
from test_read_routing import replica_url as _replica_fixture  # noqa: F401 - `replica_url`, a fixture

import kit
from kit import migrate
from kit.db import PooledDatabase, database
from kit.fixtures import load, parse
from kit.models import DocumentChunk, Organization
from kit.telemetry import tag, watch
from kit.telemetry.otel import KitInstrumentor

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-" + secrets.token_hex(4)  # a parameter value no span, metric or log line may hold
SEMCONV = {"db.system.name", "db.namespace", "db.operation.name", "db.query.summary", "server.address",
           "server.port", "kit.server.role"}


@pytest.fixture(scope="module")
def otel():
    """The kit instrumented into an SDK of its own: in-memory spans and metrics."""
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = KitInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield spans, reader, tracer_provider.get_tracer("test"), tracer_provider, meter_provider
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def spans(otel):
    exporter = otel[0]
    exporter.clear()
    return exporter


def statements(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


def metrics(reader) -> dict[str, list]:
    """Every metric collected now: name -> its data points."""
    found: dict[str, list] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def dumped(exporter) -> str:
    return "\n".join(span.to_json() for span in exporter.get_finished_spans())


def test_a_model_query_is_one_client_span_named_by_its_summary_with_the_conventions_attributes(spans):
    Organization.select().where(Organization.slug == SECRET).count()
    [span] = statements(spans)
    assert span.name == "SELECT organizations"
    assert SEMCONV <= set(span.attributes)
    assert span.attributes["db.system.name"] == "postgresql"
    assert span.attributes["db.collection.name"] == "organizations"
    assert span.attributes["db.namespace"] == database.target.namespace
    assert span.attributes["kit.server.role"] == "primary"
    assert "db.query.text" not in span.attributes  # only when asked
    assert SECRET not in dumped(spans)


def test_raw_sql_and_a_failure_quoting_its_value_leave_no_value_in_spans_or_metrics(spans, otel):
    database.execute_sql("SELECT %s::text", (SECRET,))
    with pytest.raises(peewee.DataError) as failed:
        database.execute_sql("SELECT %s::uuid", (SECRET,))
    assert SECRET in str(failed.value)  # PostgreSQL quotes the value: the span must not
    ok, bad = statements(spans)
    assert ok.status.status_code == StatusCode.UNSET
    assert bad.status.status_code == StatusCode.ERROR
    assert bad.attributes["error.type"] == "DataError"
    assert bad.attributes["db.response.status_code"] == "22P02"
    assert not bad.events  # no exception event: its message would carry the value
    assert SECRET not in dumped(spans)
    assert SECRET not in repr(metrics(otel[1]))


def test_query_text_is_recorded_only_when_asked_and_it_is_the_parameterized_text(spans, otel):
    KitInstrumentor().uninstrument()
    KitInstrumentor().instrument(tracer_provider=otel[3], meter_provider=otel[4], capture_query_text=True)
    try:
        Organization.select().where(Organization.slug == SECRET).count()
    finally:
        KitInstrumentor().uninstrument()
        KitInstrumentor().instrument(tracer_provider=otel[3], meter_provider=otel[4])
    [span] = statements(spans)
    assert '"organizations"' in span.attributes["db.query.text"] and "%s" in span.attributes["db.query.text"]
    assert SECRET not in dumped(spans)


def test_a_transaction_is_begin_statements_commit_under_the_callers_span(spans, otel):
    with otel[2].start_as_current_span("handler") as parent, database.atomic():
        Organization.select().count()
        database.execute_sql("SELECT 1")
    names = [s.name for s in statements(spans)]
    assert names == ["BEGIN", "SELECT organizations", "SELECT", "COMMIT"]
    trace = parent.get_span_context().trace_id
    assert all(s.context.trace_id == trace and s.parent.span_id == parent.get_span_context().span_id
               for s in statements(spans))


def test_a_search_is_traced_with_its_tenant_as_an_id(spans):
    org = Organization.create(name="Traced", slug=f"traced-{secrets.token_hex(4)}")
    spans.clear()
    DocumentChunk.search(np.ones(1536, dtype=np.float32), org.id, k=3)
    found = statements(spans)
    assert found and any(s.attributes.get("db.collection.name") == "document_chunks" for s in found)
    assert {s.attributes.get("kit.tenant.id") for s in found if "kit.tenant.id" in s.attributes} == {str(org.id)}
    assert "Traced" not in dumped(spans)  # the tenant is named by id, never by name


def test_a_bulk_copy_and_a_matrix_read_are_spans_over_their_statements(spans):
    from kit.models import AuditLog
    from kit.vector import copy_rows, fetch_matrix

    org = Organization.create(name="Copied", slug=f"copied-{secrets.token_hex(4)}")
    spans.clear()
    with kit.tenant(org):
        count = copy_rows(AuditLog, [{"organization_id": org.id, "action": f"a{i}", "target_type": SECRET}
                                     for i in range(50)])
        fetch_matrix(DocumentChunk.select(DocumentChunk.id, DocumentChunk.embedding)
                     .where(DocumentChunk.organization == org.id))
    assert count == 50
    [copied] = [s for s in spans.get_finished_spans() if s.name == "kit.copy_rows"]
    assert copied.attributes["db.collection.name"] == "audit_logs" and copied.attributes["kit.copy.rows"] == 50
    assert [s for s in spans.get_finished_spans() if s.name == "kit.fetch_matrix"]
    assert SECRET not in dumped(spans)


@observes_server_sessions
def test_a_statement_re_sent_after_its_backend_was_killed_is_marked_and_counted(spans, otel, monitor):
    database.execute_sql("SELECT 1")
    pid = backend_pid(database)
    monitor.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert wait_until(lambda: not _alive(monitor, pid))
    spans.clear()
    assert database.execute_sql("SELECT 2").fetchone() == (2,)
    [span] = statements(spans)
    assert span.attributes["kit.statement.resent"] is True
    resends = [p.value for p in metrics(otel[1])["kit.db.client.resends"]
               if p.attributes["db.client.connection.pool.name"] == database._pool.name]
    assert resends and resends[0] >= 1


def _alive(monitor, pid: int) -> bool:
    with monitor.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cursor.fetchone()[0] == 1


def test_the_duration_metric_and_the_pool_metrics_are_reported_per_pool(spans, otel):
    database.close_all()  # the next statement opens a connection (create_time), waits for it, gives it back
    Organization.select().count()
    database.close()
    found = metrics(otel[1])
    durations = [p for p in found["db.client.operation.duration"]
                 if p.attributes.get("db.query.summary") == "SELECT organizations"]
    assert durations and durations[0].count >= 1
    assert SEMCONV - {"db.query.summary"} <= set(durations[0].attributes)
    name = database._pool.name
    assert "@" not in name and name.endswith(database.target.namespace)
    states = {p.attributes["db.client.connection.state"] for p in found["db.client.connection.count"]
              if p.attributes["db.client.connection.pool.name"] == name}
    assert states == {"idle", "used"}
    for metric in ("db.client.connection.max", "db.client.connection.idle.min", "db.client.connection.pending_requests",
                   "db.client.connection.timeouts", "db.client.connection.wait_time", "db.client.connection.use_time",
                   "db.client.connection.create_time", "kit.db.client.session_losses",
                   "kit.db.client.replica_fallbacks", "kit.db.client.connection.leaks"):
        assert any(p.attributes.get("db.client.connection.pool.name") == name for p in found[metric]), metric


def test_a_pool_name_a_span_and_a_metric_never_hold_the_password(test_db_url, spans, otel):
    password = "pw-" + secrets.token_hex(6)
    parts = urlsplit(test_db_url)
    user = parts.netloc.rpartition("@")[0] or "kit_app"
    url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc.rpartition('@')[2]}"))
    db = PooledDatabase(parts.path.lstrip("/"), dsn=url)  # the server trusts local sockets: the password is ignored
    try:
        assert db.execute_sql("SELECT %s::text", (SECRET,)).fetchone() == (SECRET,)
        assert password not in db._pool.name and password not in repr(db.target)
        assert statements(spans) and password not in dumped(spans)
        assert password not in repr(metrics(otel[1]))
    finally:
        db.close_all()


def test_the_asyncio_database_is_traced_alike(spans, test_db_url):
    from kit.aio import AsyncDatabase

    async def main() -> int:
        adb = AsyncDatabase(test_db_url)
        try:
            return await adb.count(Organization.select().where(Organization.slug == SECRET))
        finally:
            await adb.close_pool()

    assert asyncio.run(main()) == 0
    [span] = statements(spans)
    assert span.name == "SELECT organizations" and SEMCONV <= set(span.attributes)
    assert SECRET not in dumped(spans)


def test_a_migration_and_its_statements_are_one_span_tree(fresh_database, spans):
    applied = migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    done = spans.get_finished_spans()
    runs = [s for s in done if s.name == "kit.migrate.apply"]
    assert [s.attributes["kit.migration.name"] for s in runs] == applied
    first = runs[0].context.span_id
    inside = [s for s in statements(spans) if s.parent is not None and s.parent.span_id == first]
    assert any(s.attributes["db.operation.name"] == "CREATE" for s in inside)


def test_a_seed_load_is_a_span_over_its_statements(fresh_database, spans):
    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    spans.clear()
    load(parse(ROOT / "seeds" / "fixtures" / "dev.yaml"), fresh_database)
    [run] = [s for s in spans.get_finished_spans() if s.name == "kit.seed.load"]
    assert run.attributes["kit.seed.tables"] > 10
    assert sum(1 for s in statements(spans) if s.parent and s.parent.span_id == run.context.span_id) > 10
    assert "password123" not in dumped(spans)  # the fixture's plain passwords, hashed on the way in


@needs_embedded
def test_a_replica_read_says_it_was_served_by_the_replica_whose_pool_has_its_own_metrics(spans, otel, request,
                                                                                         test_db_url):
    replica_url = request.getfixturevalue("_replica_fixture")
    from kit.db import Database

    db = Database()
    db.configure(test_db_url, replicas=[replica_url])
    try:
        with db.bind_ctx([Organization]):
            spans.clear()
            Organization.select().count()
        [span] = [s for s in statements(spans) if s.name == "SELECT organizations"]
        assert span.attributes["kit.server.role"] == "replica"
        pools = {p.attributes["db.client.connection.pool.name"] for p in metrics(otel[1])["db.client.connection.count"]}
        assert db._router.replicas[0].database._pool.name in pools and db._pool.name in pools
        assert span.attributes["server.port"] != database.target.port or \
            span.attributes["server.address"] != database.target.address
    finally:
        db.close_all()


def test_a_kit_maintain_run_is_a_span_over_its_statements(fresh_database, spans):
    from kit.maintain import maintain
    from kit.models import ALL_MODELS

    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    spans.clear()
    maintain(fresh_database, ALL_MODELS, say=lambda _: None)
    [run] = [s for s in spans.get_finished_spans() if s.name == "kit.maintain"]
    assert any(s.parent and s.parent.span_id == run.context.span_id for s in statements(spans))


# -- without OpenTelemetry's SDK: the slow-query log, query tags and leaks --------------------------


@pytest.fixture
def switched():
    """Set telemetry switches for one test; off again afterwards."""
    yield watch.configure
    watch.configure(slow_after=None, tags=False)


def test_query_tags_reach_pg_stat_activity_and_a_hostile_route_stays_inside_the_comment(
        switched, monitor, spans, otel):
    switched(tags=True)
    org = Organization.create(name="Tagged", slug=f"tagged-{secrets.token_hex(4)}")
    hostile = "GET /x'*/; DROP TABLE organizations; --"
    seen: list[str] = []

    def run() -> None:
        with tag(route=hostile), kit.tenant(org), otel[2].start_as_current_span("request"):
            database.execute_sql("SELECT pg_sleep(0.8)")
        database.close()

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_until(lambda: seen.extend(_running(monitor, "pg_sleep")) or seen, timeout=5)
    worker.join()
    text = seen[0]
    assert f"tenant='{org.id}'" in text
    assert "route='GET%20%2Fx%27%2A%2F%3B%20DROP%20TABLE%20organizations%3B%20--'" in text
    [span] = [s for s in statements(spans) if "pg_sleep" not in s.name and s.attributes.get("kit.route") == hostile]
    context = span.get_span_context()
    assert f"traceparent='00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}'" in text
    assert Organization.select().where(Organization.id == org.id).exists()  # the DROP stayed a comment


def _running(monitor, marker: str) -> list[str]:
    with monitor.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                       (f"%{marker}%",))
        return [row[0] for row in cursor.fetchall()]


def test_begin_and_commit_carry_the_same_tags_encoded_once(switched, monitor):
    switched(tags=True)
    with tag(route="GET /a b"), database.atomic():
        pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    last = _last_query(monitor, pid)  # an idle session shows the last statement it ran
    assert last.startswith("COMMIT /*route='GET%20%2Fa%20b'") and "%%" not in last, last


def _last_query(monitor, pid: int) -> str:
    with monitor.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cursor.fetchone()[0]


def test_without_tags_no_comment_is_sent(switched, monitor):
    found: list[str] = []
    worker = threading.Thread(target=lambda: (database.execute_sql("SELECT pg_sleep(0.5)"), database.close()))
    worker.start()
    assert wait_until(lambda: found.extend(_running(monitor, "pg_sleep")) or found, timeout=5)
    worker.join()
    assert "/*" not in found[0]


def test_a_slow_statement_is_logged_once_with_its_summary_tenant_and_route(switched, caplog):
    switched(slow_after=0.2)
    org = Organization.create(name="Slow", slug=f"slow-{secrets.token_hex(4)}")
    caplog.set_level(logging.WARNING, logger="kit.slow")
    with tag(job="nightly-report"), kit.tenant(org):
        database.execute_sql("SELECT pg_sleep(0.3), %s::text", (SECRET,))
        database.execute_sql("SELECT 1")
    [record] = [r for r in caplog.records if r.name == "kit.slow"]
    message = record.getMessage()
    assert message.startswith("slow statement: SELECT took ")
    assert str(org.id) in message and "job nightly-report" in message and "primary" in message
    assert SECRET not in message
    assert record.duration_ms >= 300 and record.tenant == str(org.id)


def test_a_slow_statement_traced_names_its_trace(switched, caplog, spans):
    switched(slow_after=0.1)
    caplog.set_level(logging.WARNING, logger="kit.slow")
    database.execute_sql("SELECT pg_sleep(0.15)")
    [record] = [r for r in caplog.records if r.name == "kit.slow"]
    [span] = statements(spans)
    assert record.trace_id == f"{span.context.trace_id:032x}" and record.span_id == f"{span.context.span_id:016x}"
    assert record.getMessage().endswith(f", trace {record.trace_id}")


def test_a_leaked_connection_is_reported_once_with_the_stack_that_took_it(make_pool, caplog):
    db = make_pool(max_connections=2, leak_after=0.3)
    caplog.set_level(logging.WARNING, logger="kit.pool")
    held = threading.Event()

    def forgets_to_close() -> None:
        db.connect()
        db.execute_sql("SELECT 1")
        held.set()
        time.sleep(1.2)  # a request that never gives its connection back, for a while

    worker = threading.Thread(target=forgets_to_close, name="leaky-request")
    worker.start()
    assert held.wait(5)
    assert wait_until(lambda: db.pool_stats()["leaks"] == 1, timeout=3)
    time.sleep(0.6)  # past the threshold twice over: still reported once
    worker.join()
    reports = [r.getMessage() for r in caplog.records if "possible connection leak" in r.getMessage()]
    assert len(reports) == 1 and db.pool_stats()["leaks"] == 1
    assert "by thread leaky-request" in reports[0] and "in forgets_to_close" in reports[0]
    assert "test_telemetry.py" in reports[0]


def test_a_connection_held_under_the_threshold_is_never_reported(make_pool, caplog):
    db = make_pool(max_connections=2, leak_after=5)
    caplog.set_level(logging.WARNING, logger="kit.pool")
    for _ in range(20):
        db.execute_sql("SELECT 1")
        db.close()
    assert db.pool_stats()["leaks"] == 0
    assert not [r for r in caplog.records if "leak" in r.getMessage()]


# -- the instrumentor as OpenTelemetry's tools find it --------------------------------------------


def test_the_instrumentor_is_registered_under_opentelemetrys_entry_point():
    from importlib.metadata import entry_points

    [found] = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "kit"]
    assert found.load() is KitInstrumentor


def test_opentelemetry_instrument_finds_the_kit_and_exports_its_spans(test_db_url):
    env = {**os.environ, "DATABASE_URL": test_db_url, "OTEL_TRACES_EXPORTER": "console",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "OTEL_SERVICE_NAME": "kit-test"}
    script = "from kit.db import database\nprint(database.execute_sql('SELECT 41 + 1').fetchone()[0])\n"
    done = subprocess.run([str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("42\n")
    exported = json.loads(done.stdout[3:])
    assert exported["kind"] == "SpanKind.CLIENT" and exported["attributes"]["kit.server.role"] == "primary"
    assert exported["resource"]["attributes"]["service.name"] == "kit-test"


def test_without_opentelemetry_installed_the_kit_imports_and_runs(test_db_url, tmp_path):
    script = ("import sys; sys.modules['opentelemetry'] = None\n"  # as if the package were absent
              "import kit, kit.telemetry\nfrom kit.db import Database\n"
              f"db = Database(); db.configure({test_db_url!r})\n"
              "print(db.execute_sql('SELECT 41 + 1').fetchone()[0])\n"
              "try:\n    import kit.telemetry.otel\nexcept ImportError as exc:\n    print('otel:', exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "42"


def test_one_request_through_a_real_http_server_is_one_trace_from_handler_to_server(otel, spans):
    """The trace docs/observability.md shows: FastAPI's own instrumentation, then the kit's spans inside it."""
    import httpx
    import uvicorn
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    import kit.web

    app = kit.web.install(FastAPI())

    @app.get("/orgs/{org_id}/members")
    def members(org_id: str) -> dict:
        with kit.tenant(org_id), database.atomic():
            count = Organization.select().where(Organization.id == org_id).count()
        return {"count": count}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=otel[3])
    org = Organization.create(name="Web trace", slug=f"trace-{secrets.token_hex(4)}")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        spans.clear()
        response = httpx.get(f"http://127.0.0.1:{port}/orgs/{org.id}/members", timeout=10)
        assert response.json() == {"count": 1}
    finally:
        server.should_exit = True
        thread.join(10)
    done = spans.get_finished_spans()
    kit_spans = statements(spans)
    assert [s.name for s in kit_spans] == ["BEGIN", "SELECT organizations", "COMMIT"]
    assert len({s.context.trace_id for s in done}) == 1
    assert all(s.attributes["kit.route"] == "GET /orgs/{org_id}/members" for s in kit_spans)
    server_span = next(s for s in done if s.kind == SpanKind.SERVER)
    assert kit_spans[0].parent.span_id == server_span.context.span_id
    if os.environ.get("KIT_TRACE_OUT"):  # how docs/observability.md's trace was made
        Path(os.environ["KIT_TRACE_OUT"]).write_text(json.dumps([json.loads(s.to_json()) for s in done], indent=1))


def test_the_asyncio_pool_reports_a_leak_once_and_times_its_checkouts(otel, test_db_url, caplog):
    from dataclasses import replace

    from kit.aio import AsyncDatabase
    from kit.config import load_settings

    caplog.set_level(logging.WARNING, logger="kit.db")
    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_leak_threshold_ms=300))

    async def forgets_to_release() -> None:
        await adb.aconnect()  # taken, and kept past the threshold twice over
        await asyncio.sleep(0.8)
        await adb.aclose()

    async def main() -> None:
        try:
            await asyncio.create_task(forgets_to_release(), name="leaky-task")
            async with adb.atomic():
                await adb.aexecute_sql("SELECT 1")
        finally:
            await adb.close_pool()

    asyncio.run(main())
    reports = [r.getMessage() for r in caplog.records if "possible connection leak" in r.getMessage()]
    assert len(reports) == 1 and adb.counts["leaks"] == 1
    assert "by task leaky-task" in reports[0] and "in forgets_to_release" in reports[0]
    found = metrics(otel[1])
    for metric in ("db.client.connection.wait_time", "db.client.connection.use_time"):
        assert any(p.attributes["db.client.connection.pool.name"] == adb.pool_name for p in found[metric]), metric
    names = [s.name for s in statements(otel[0])][-3:]
    assert names == ["BEGIN", "SELECT", "COMMIT"]


def test_the_asyncio_path_tags_its_statements_with_the_route_and_resets_nothing_for_it(switched, monitor, spans):
    from kit.aio import AsyncDatabase

    switched(tags=True)
    hostile = "GET /y'*/; DROP TABLE organizations; --"

    async def main() -> tuple[int, int]:
        adb = AsyncDatabase()
        try:
            with tag(route=hostile):
                pid = (await adb.aexecute_sql("SELECT pg_backend_pid()")).fetchone()[0]
            return pid, len(adb._unclean)
        finally:
            await adb.close_pool()

    pid, unclean = asyncio.run(main())
    assert unclean == 0  # the tag is sent, never judged: the statement itself is clean
    [span] = [s for s in statements(spans) if s.attributes.get("kit.route") == hostile]
    assert span.name == "SELECT"


def test_a_search_is_named_after_its_statement_never_after_the_settings_riding_before_it(spans):
    org = Organization.create(name="Named", slug=f"named-{secrets.token_hex(4)}")
    spans.clear()
    DocumentChunk.search(np.ones(1536, dtype=np.float32), org.id, k=3)
    DocumentChunk.hybrid_search("words", np.ones(1536, dtype=np.float32), org.id, k=3)
    names = {s.name for s in statements(spans)}
    assert "SELECT document_chunks" in names and not any(name.startswith("SET") for name in names), names


def test_a_literal_never_names_a_span(spans):
    database.execute_sql("SELECT 'x from secret_table' AS y")
    [span] = statements(spans)
    assert "secret_table" not in span.name and span.name == "SELECT"
