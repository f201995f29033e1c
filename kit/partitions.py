"""Monthly range partitions for append-heavy tables: convert a table, keep partitions ahead, retire old ones.

A model says `Meta.partition_by = "created_at"` (a timestamptz column); its table is then
`PARTITION BY RANGE (created_at)`, one partition per calendar month (UTC) named `<table>_pYYYYMM`, and
a `<table>_default` partition that takes any row no monthly partition covers, so an insert never fails
for want of a partition. The primary key becomes `(id, created_at)` (PostgreSQL requires the partition
key in every unique index); ids stay `gen_random_uuid()`.

- `partition_table` converts a plain table in place (inside the caller's transaction: the migration's),
  moving every row, re-creating its indexes, foreign keys and triggers on the new table;
  `unpartition_table` undoes it.
- `ensure_partitions` creates the partitions from the current month to `ahead` months on (idempotent:
  `kit maintain` runs it from cron). A month whose rows already sit in the default partition is not
  created (PostgreSQL would refuse); it is reported, and those rows stay where they are, still found.
- `retire_partitions` detaches (or drops) the monthly partitions wholly older than `keep` months.
  A detached partition is a plain table of the same name: archive it, then drop it.

Triggers: row-level triggers of the parent (such as the append-only ones) apply to every partition by
themselves; statement-level TRUNCATE triggers do not, so each partition gets the parent's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from peewee import Database

from kit.errors import KitError

__all__ = ["PartitionError", "Upkeep", "ensure_partitions", "month_partitions", "partition_table",
           "retire_partitions", "unpartition_table"]

AHEAD_MONTHS = 3  # partitions made ahead of the current month
_NAME = re.compile(r"_p(\d{4})(\d{2})$")


class PartitionError(KitError):
    """A table cannot be partitioned or maintained as asked; one sentence says why."""


@dataclass
class Upkeep:
    """What `ensure_partitions` / `retire_partitions` did to one table."""

    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # months whose rows sit in the default partition
    retired: list[str] = field(default_factory=list)


def _month(value: date | datetime, shift: int = 0) -> date:
    """The first day of the month `shift` months after `value`'s."""
    index = value.year * 12 + value.month - 1 + shift
    return date(index // 12, index % 12 + 1, 1)


def _bound(day: date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


def _range(month: date) -> str:
    """The bounds of `month`'s partition."""
    return f"FOR VALUES FROM ('{_bound(month)}') TO ('{_bound(_month(month, 1))}')"


def partition_name(table: str, month: date) -> str:
    """The name of `table`'s partition for `month` (`audit_logs_p202611`)."""
    return f"{table}_p{month.year:04d}{month.month:02d}"


def month_partitions(database: Database, table: str) -> dict[date, str]:
    """The monthly partitions `table` has now, by their month."""
    rows = database.execute_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (f'"{table}"',)).fetchall()
    found = {}
    for (name,) in rows:
        match = _NAME.search(name)
        if match and name == f"{table}_p{match[1]}{match[2]}":
            found[date(int(match[1]), int(match[2]), 1)] = name
    return found


def is_partitioned(database: Database, table: str) -> bool:
    """True when `table` is a partitioned table."""
    row = database.execute_sql("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
                               (f'"{table}"',)).fetchone()
    return bool(row and row[0])


def _truncate_triggers(database: Database, table: str) -> list[tuple[str, str]]:
    """The parent's statement-level TRUNCATE triggers: (name, its definition)."""
    return database.execute_sql(
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
        "AND tgtype & 32 <> 0 AND tgparentid = 0", (f'"{table}"',)).fetchall()


def _add_partition(database: Database, table: str, name: str, bounds: str) -> None:
    database.execute_sql(f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" {bounds}')
    _copy_truncate_triggers(database, table, name)


def _copy_truncate_triggers(database: Database, table: str, name: str) -> None:
    """Give partition `name` the TRUNCATE triggers of its parent `table` it lacks."""
    for trigger, definition in _truncate_triggers(database, table):
        exists = database.execute_sql("SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s",
                                      (f'"{name}"', trigger)).fetchone()
        if not exists:
            database.execute_sql(re.sub(r" ON (?:\S+\.)?\"?" + re.escape(table) + r"\"? ", f' ON "{name}" ',
                                        definition, count=1).replace("%", "%%"))


def ensure_partitions(database: Database, table: str, column: str = "created_at", ahead: int = AHEAD_MONTHS,
                      now: datetime | None = None) -> Upkeep:
    """Create `table`'s monthly partitions from this month to `ahead` months on; return what was done."""
    done = Upkeep()
    start = _month(now or datetime.now(UTC))
    have = month_partitions(database, table)
    for shift in range(ahead + 1):
        month = _month(start, shift)
        if month in have:
            continue
        name = partition_name(table, month)
        low, high = _bound(month), _bound(_month(month, 1))
        with database.atomic():
            waiting = database.execute_sql(
                f'SELECT EXISTS (SELECT 1 FROM "{table}_default" WHERE "{column}" >= %s AND "{column}" < %s)',
                (low, high)).fetchone()[0]
            if waiting:
                done.skipped.append(name)
                continue
            _add_partition(database, table, name, _range(month))
        done.created.append(name)
    return done


def retire_partitions(database: Database, table: str, keep: int, drop: bool = False,
                      now: datetime | None = None) -> Upkeep:
    """Detach (or with `drop`, drop) `table`'s monthly partitions that end before the last `keep` months."""
    if keep < 1:
        raise PartitionError(f"{table}: keep at least 1 month of partitions, got {keep}")
    done = Upkeep()
    oldest_kept = _month(now or datetime.now(UTC), -(keep - 1))
    for month, name in sorted(month_partitions(database, table).items()):
        if month >= oldest_kept:
            continue
        with database.atomic():
            database.execute_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
            if drop:
                database.execute_sql(f'DROP TABLE "{name}"')
        done.retired.append(name)
    return done


def _definitions(database: Database, table: str) -> dict[str, list[str]]:
    """What re-creating `table` needs: its indexes (but the primary key), foreign keys, triggers, as SQL."""
    regclass = f'"{table}"'
    indexes = [d for (d,) in database.execute_sql(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s::regclass AND NOT i.indisprimary "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)", (regclass,)).fetchall()]
    unique = [d for d in indexes if d.startswith("CREATE UNIQUE")]
    if unique:
        raise PartitionError(f"{table} has a unique index ({unique[0]}) without the partition key; "
                             "it cannot be partitioned as it is")
    foreign = [f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}' for name, definition in
               database.execute_sql("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                                    "WHERE conrelid = %s::regclass AND contype = 'f'", (regclass,)).fetchall()]
    triggers = [d for (d,) in database.execute_sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
        "AND tgparentid = 0", (regclass,)).fetchall()]
    return {"indexes": indexes, "foreign": foreign, "triggers": triggers}


def _months_with_rows(database: Database, table: str, column: str) -> list[date]:
    low, high = database.execute_sql(f'SELECT min("{column}"), max("{column}") FROM "{table}"').fetchone()
    if low is None:
        return []
    months, month = [], _month(low)
    while month <= _month(high):
        months.append(month)
        month = _month(month, 1)
    return months


def partition_table(database: Database, table: str, column: str = "created_at", ahead: int = AHEAD_MONTHS,
                    now: datetime | None = None) -> int:
    """Make plain `table` range-partitioned by month on `column`, moving every row; return the rows moved.

    Run inside a transaction (a migration's): the table is locked while its rows move, and a failure
    leaves it as it was.
    """
    if is_partitioned(database, table):
        return 0
    _require_transaction(database, "partition_table")
    months = _months_with_rows(database, table, column)
    partitions = [(partition_name(table, month), _range(month)) for month in months] + [(f"{table}_default", "DEFAULT")]
    moved = _rebuild(database, table, f'PARTITION BY RANGE ("{column}")', f'id, "{column}"', partitions)
    ensure_partitions(database, table, column, ahead, now)
    return moved


def unpartition_table(database: Database, table: str) -> int:
    """Make partitioned `table` a plain table again with `id` as its key, moving every row; return the rows moved."""
    if not is_partitioned(database, table):
        return 0
    _require_transaction(database, "unpartition_table")
    return _rebuild(database, table, "", "id", [])  # its partitions go with the old table


def _require_transaction(database: Database, what: str) -> None:
    if not database.in_transaction():
        raise PartitionError(f"{what} needs an open transaction (use database.atomic())")


def _rebuild(database: Database, table: str, partitioning: str, key: str, partitions: list[tuple[str, str]]) -> int:
    """Re-create `table` (`partitioning`, primary key `key`, these partitions), moving every row; return the count.

    Its indexes, foreign keys and triggers are made again on the new table; each partition gets the
    parent's TRUNCATE triggers.
    """
    database.execute_sql(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    saved = _definitions(database, table)
    new = f"{table}_rebuilt"
    database.execute_sql(f'CREATE TABLE "{new}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                         f'INCLUDING GENERATED INCLUDING STORAGE) {partitioning}')
    for name, bounds in partitions:
        database.execute_sql(f'CREATE TABLE "{name}" PARTITION OF "{new}" {bounds}')
    moved = database.execute_sql(f'INSERT INTO "{new}" SELECT * FROM "{table}"').rowcount
    database.execute_sql(f'DROP TABLE "{table}"')
    database.execute_sql(f'ALTER TABLE "{new}" RENAME TO "{table}"')
    database.execute_sql(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ({key})')
    for statement in saved["indexes"] + saved["foreign"] + saved["triggers"]:
        database.execute_sql(statement.replace("%", "%%"))
    for name, _ in partitions:  # the parent's TRUNCATE triggers exist only now
        _copy_truncate_triggers(database, table, name)
    return moved


def describe(upkeep: Upkeep, table: str) -> str:
    """One line saying what upkeep did to `table`."""
    parts = [f"{len(upkeep.created)} created"]
    if upkeep.retired:
        parts.append(f"{len(upkeep.retired)} retired ({', '.join(upkeep.retired)})")
    if upkeep.skipped:
        parts.append(f"{len(upkeep.skipped)} not created, their rows being in {table}_default "
                     f"({', '.join(upkeep.skipped)})")
    return f"{table}: partitions: " + ", ".join(parts)

