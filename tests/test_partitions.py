"""Monthly partitions of audit_logs and ai_usage: the migration keeps every row, append-only holds on each
partition, `kit maintain` keeps partitions ahead and retires old ones, and time filters prune."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import peewee
import pytest
from helpers import Writer, migrate_up_to, table_rows

from kit import migrate
from kit.maintain import maintain
from kit.models import ALL_MODELS
from kit.partitions import ensure_partitions, month_partitions, retire_partitions

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"say": lambda _: None}
MONTHS = ["2026-08-15 10:00:00+00", "2026-09-30 23:59:59+00", "2026-10-01 00:00:00+00"]


@pytest.fixture
def before_008(fresh_database, tmp_path):
    """A database migrated up to 007, holding audit and AI usage rows of three months."""
    db = fresh_database
    migrate_up_to(db, "007", tmp_path)
    org = db.execute_sql("INSERT INTO organizations (name, slug) VALUES ('Acme', 'acme') RETURNING id").fetchone()[0]
    for n, at in enumerate(MONTHS * 10):
        db.execute_sql("INSERT INTO audit_logs (organization_id, action, created_at, metadata) "
                       "VALUES (%s, %s, %s, %s)", (org, f"act{n}", at, f'{{"n": {n}}}'))
        db.execute_sql("INSERT INTO ai_usage (organization_id, model, input_tokens, created_at) VALUES (%s, 'm', %s, %s)",
                       (org, n, at))
    return db


def refused(db, sql: str) -> str:
    with pytest.raises(peewee.DatabaseError) as caught:
        with db.atomic():
            db.execute_sql(sql)
    return str(caught.value)


def test_the_migration_keeps_every_row_and_append_only_holds_on_every_partition(before_008):
    db = before_008
    kept = {table: table_rows(db, table) for table in ("audit_logs", "ai_usage")}
    assert len(kept["audit_logs"]) == 30
    migrate.apply(db, ROOT / "migrations", **QUIET)
    for table in ("audit_logs", "ai_usage"):
        assert table_rows(db, table) == kept[table]  # every row, every value
        assert db.execute_sql("SELECT relkind FROM pg_class WHERE relname = %s", (table,)).fetchone()[0] == "p"
        months = month_partitions(db, table)
        assert {m.strftime("%Y-%m") for m in months} >= {"2026-08", "2026-09", "2026-10"}
    assert db.execute_sql("SELECT count(*) FROM audit_logs_p202609").fetchone()[0] == 10  # 23:59:59 stays in September
    # append-only: on the table and on each partition directly, whatever the statement
    db.execute_sql("INSERT INTO audit_logs (action, created_at) VALUES ('far', '2040-01-01+00')")  # the default's
    kept["audit_logs"] = table_rows(db, "audit_logs")
    for target in ["audit_logs", "audit_logs_p202608", "audit_logs_default"]:
        assert "append-only" in refused(db, f"UPDATE {target} SET action = 'x'")
        assert "append-only" in refused(db, f"DELETE FROM {target}")
        assert "append-only" in refused(db, f"TRUNCATE {target}")
    # foreign keys came back: deleting the organization takes its AI usage with it
    assert "foreign key" in refused(db, "INSERT INTO ai_usage (organization_id, model) VALUES (gen_random_uuid(), 'm')")
    assert migrate.verify(db, ROOT / "migrations") == []  # no drift: the partitions are not extra tables
    # rollback: plain tables again, with the same rows, and append-only still holds
    assert migrate.rollback(db, ROOT / "migrations", count=5, **QUIET) == ["012_tenant_keys",
                                                                           "011_webhook_deliveries_own_organization",
                                                                           "010_tenant_bound_to_transaction",
                                                                           "009_roles_and_row_security",
                                                                           "008_partition_audit_logs_and_ai_usage"]
    for table in ("audit_logs", "ai_usage"):
        assert table_rows(db, table) == kept[table]
        assert db.execute_sql("SELECT relkind FROM pg_class WHERE relname = %s", (table,)).fetchone()[0] == "r"
    assert "append-only" in refused(db, "DELETE FROM audit_logs")


def test_partitions_are_made_ahead_idempotently_and_old_ones_retired(before_008):
    db = before_008
    migrate.apply(db, ROOT / "migrations", **QUIET)
    later = datetime(2027, 5, 20, tzinfo=UTC)
    made = ensure_partitions(db, "audit_logs", now=later)
    assert made.created == ["audit_logs_p202705", "audit_logs_p202706", "audit_logs_p202707", "audit_logs_p202708"]
    assert ensure_partitions(db, "audit_logs", now=later).created == []  # again: nothing to do
    assert "append-only" in refused(db, "TRUNCATE audit_logs_p202706")  # new partitions refuse TRUNCATE too
    # a row for a month with no partition lands in the default one, never lost; that month's partition
    # is then made with the row moved into it, and the default partition is append-only again after
    db.execute_sql("INSERT INTO audit_logs (action, created_at) VALUES ('far', '2030-01-05+00')")
    assert db.execute_sql("SELECT count(*) FROM audit_logs_default").fetchone()[0] == 1
    waiting = ensure_partitions(db, "audit_logs", now=datetime(2030, 1, 1, tzinfo=UTC))
    assert waiting.moved == ["audit_logs_p203001"] and waiting.rows_moved == 1
    assert "audit_logs_p203002" in waiting.created and waiting.in_default == {}
    assert db.execute_sql("SELECT action FROM audit_logs_p203001").fetchall() == [("far",)]
    assert db.execute_sql("SELECT count(*) FROM audit_logs_default").fetchone()[0] == 0
    assert {row[0] for row in db.execute_sql("SELECT tgenabled FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN "
                                              "('audit_logs_default'::regclass, 'audit_logs_p203001'::regclass)")} == {"O"}
    db.execute_sql("INSERT INTO audit_logs (action, created_at) VALUES ('farther', '2040-01-05+00')")
    for target in ["audit_logs_default", "audit_logs_p203001"]:
        assert "append-only" in refused(db, f"DELETE FROM {target}")
        assert "append-only" in refused(db, f"TRUNCATE {target}")
    # retention: keep 3 months before 2026-11: August goes (detached, kept as a table), September stays
    retired = retire_partitions(db, "audit_logs", keep=3, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert retired.retired == ["audit_logs_p202608"]
    assert db.execute_sql("SELECT count(*) FROM audit_logs_p202608").fetchone()[0] == 10  # detached, not lost
    assert db.execute_sql("SELECT count(*) FROM audit_logs").fetchone()[0] == 22
    dropped = retire_partitions(db, "ai_usage", keep=2, drop=True, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert dropped.retired == ["ai_usage_p202608", "ai_usage_p202609"]
    assert db.execute_sql("SELECT to_regclass('ai_usage_p202608')").fetchone()[0] is None


def test_kit_maintain_keeps_partitions_ahead_and_checks_its_retention(before_008):
    db = before_008
    migrate.apply(db, ROOT / "migrations", **QUIET)
    said: list[str] = []
    maintain(db, ALL_MODELS, say=said.append, retain={"audit_logs": 120})
    assert any(line.startswith("audit_logs: partitions: 0 created") for line in said), said
    with pytest.raises(Exception, match="--retain names users, which is not a partitioned table"):
        maintain(db, ALL_MODELS, say=said.append, retain={"users": 3})


def test_a_time_filter_reads_only_the_partitions_it_needs(before_008):
    db = before_008
    migrate.apply(db, ROOT / "migrations", **QUIET)
    plan = "\n".join(r[0] for r in db.execute_sql(
        "EXPLAIN SELECT count(*) FROM audit_logs WHERE created_at >= '2026-09-01+00' "
        "AND created_at < '2026-10-01+00'").fetchall())
    assert "audit_logs_p202609" in plan
    for other in ("audit_logs_p202608", "audit_logs_p202610", "audit_logs_default"):
        assert other not in plan
    assert db.execute_sql("SELECT count(*) FROM audit_logs WHERE created_at >= '2026-09-01+00' "
                          "AND created_at < '2026-10-01+00'").fetchone()[0] == 10


def count(db, table: str) -> int:
    return db.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_outlier_dates_make_no_partitions_and_are_warned_of_then_retired(before_008):
    db = before_008
    for at in ["1990-03-01+00", "0001-01-01+00", "9999-12-01+00"]:  # the seed accepts each of them
        db.execute_sql("INSERT INTO audit_logs (action, created_at) VALUES ('odd', %s)", (at,))
    migrate.apply(db, ROOT / "migrations", **QUIET)  # year 1 once failed it (out of shared memory)
    months = month_partitions(db, "audit_logs")
    assert len(months) <= 3 + 1 + 3 + 1 + 3  # the rows' three months, this month and three ahead (overlapping)
    assert count(db, "audit_logs_default") == 3 and count(db, "audit_logs") == 33
    said: list[str] = []
    maintain(db, ALL_MODELS, say=said.append)
    warning = [line for line in said if line.startswith("warning: audit_logs_default holds 3 rows")]
    assert warning and "0001-01 to 9999-12" in warning[0], said
    # retention retires the old ones (moved to a table of their own, or dropped); the future one stays
    maintain(db, ALL_MODELS, say=said.append, retain={"audit_logs": 240})
    assert count(db, "audit_logs_default") == 1 and count(db, "audit_logs") == 31
    archive = [name for (name,) in db.execute_sql("SELECT relname FROM pg_class WHERE relname LIKE "
                                                 "'audit_logs_default_before_%%'")]
    assert len(archive) == 1 and count(db, archive[0]) == 2
    assert any("2 rows of audit_logs_default" in line for line in said), said


def test_months_cron_missed_get_their_partitions_with_their_rows_moved(before_008):
    db = before_008
    migrate.apply(db, ROOT / "migrations", **QUIET)
    last = max(month_partitions(db, "audit_logs"))
    # four months past the last partition, rows land in the default partition, as when cron stopped
    for shift in range(1, 5):
        month = last.replace(year=last.year + (last.month + shift - 1) // 12, month=(last.month + shift - 1) % 12 + 1)
        for day in (1, 15):
            db.execute_sql("INSERT INTO audit_logs (action, created_at) VALUES ('late', %s)", (f"{month}T0{day % 9}:00+00",))
    before = table_rows(db, "audit_logs")
    assert count(db, "audit_logs_default") == 8
    now = datetime(last.year + (last.month + 3) // 12, (last.month + 3) % 12 + 1, 10, tzinfo=UTC)
    writer = Writer(db.scratch_url)  # a row every 20 ms, into this month's partition, meanwhile
    writer.start()
    assert writer.writes()
    try:
        done = ensure_partitions(db, "audit_logs", now=now)
    finally:
        writer.writes()  # and after, into the partitions as they now are
        writer.stop.set()
        writer.join()
    assert not writer.errors and writer.longest < 0.5, writer.longest
    assert len(done.moved) == 4 and done.rows_moved == 8 and done.in_default == {}
    assert count(db, "audit_logs_default") == 0
    assert [r for r in table_rows(db, "audit_logs") if r[2].get("action") != "tick"] == before  # every row, every value
    for name in done.moved:
        assert count(db, name) == 2
