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
  `kit maintain` runs it from cron), each made beside the table and attached; a month whose rows sit
  in the default partition (cron missed it, or a row came early) gets its partition with those rows
  moved into it. Only months from `PAST_MONTHS` back to `ahead` on ever get one, so an outlier date
  (1990, year 1) stays in the default partition instead of making hundreds of partitions.
- `retire_partitions` detaches (or drops) the monthly partitions wholly older than `keep` months, and
  retires the default partition's rows that old too. A detached partition is a plain table of the
  same name: archive it, then drop it.

Every change is one transaction under brief, retried lock waits (`kit.ddl`): while one waits, the
traffic queued behind it waits at most `DATABASE_LOCK_TIMEOUT`.

Triggers: row-level triggers of the parent (such as the append-only ones) apply to every partition by
themselves; statement-level TRUNCATE triggers do not, so each partition gets the parent's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial

from peewee import Database

from kit.ddl import LockPolicy, after_commit, run_ddl
from kit.errors import KitError

__all__ = ["PartitionError", "Upkeep", "ensure_partitions", "month_partitions", "partition_online", "partition_table",
           "retire_partitions", "unpartition_table"]

AHEAD_MONTHS = 3  # partitions made ahead of the current month
PAST_MONTHS = 120  # the oldest month that may get a partition: a row dated 1990 (or year 1) stays in the default
_NAME = re.compile(r"_p(\d{4})(\d{2})$")
_INDEX_DEF = re.compile(r"^CREATE (UNIQUE )?INDEX (\S+) ON (?:ONLY )?\S+ USING")  # pg_get_indexdef's opening


class PartitionError(KitError):
    """A table cannot be partitioned or maintained as asked; one sentence says why."""


@dataclass
class Upkeep:
    """What `ensure_partitions` / `retire_partitions` did to one table."""

    created: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # made for rows that sat in the default partition
    rows_moved: int = 0
    skipped: list[str] = field(default_factory=list)  # a table of the name exists outside the partitions
    retired: list[str] = field(default_factory=list)
    rows_retired: int = 0
    in_default: dict[date, int] = field(default_factory=dict)  # rows left in the default partition, by month


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


def _months_in_default(database: Database, table: str, column: str) -> dict[date, int]:
    """The months of the rows in `table`'s default partition, with how many rows each has."""
    rows = database.execute_sql(
        f'SELECT date_trunc(\'month\', "{column}" AT TIME ZONE \'UTC\')::date, count(*) FROM "{table}_default" '
        "GROUP BY 1").fetchall()
    return {_month(month): count for month, count in rows}


def _window(now: datetime | None, ahead: int) -> tuple[date, date]:
    """The first and last months that may get a partition of their own: outliers never make more."""
    start = _month(now or datetime.now(UTC))
    return _month(start, -PAST_MONTHS), _month(start, ahead)


def ensure_partitions(database: Database, table: str, column: str = "created_at", ahead: int = AHEAD_MONTHS,
                      now: datetime | None = None, keep: int | None = None,
                      policy: LockPolicy | None = None, say: Callable[[str], None] | None = None) -> Upkeep:
    """Create `table`'s monthly partitions from this month to `ahead` months on, and give each month whose
    rows wait in the default partition (within the window, and within `keep` months if given) a partition
    with those rows moved into it; return what was done.

    Each month is one transaction under brief, retried lock waits (`kit.ddl`): a new month is made beside
    the table and attached (the parent is never locked against reads or writes; the default partition
    is, for its check that none of its rows belong to the month); a month of default rows is moved with
    the default partition locked for the move. Either way a blocked attempt stalls others at most
    `DATABASE_LOCK_TIMEOUT`, and a given-up one leaves nothing behind (`LockBusy`).
    """
    done = Upkeep()
    start = _month(now or datetime.now(UTC))
    low, high = _window(now, ahead)
    if keep is not None:
        low = max(low, _month(start, -(keep - 1)))
    have = month_partitions(database, table)
    waiting = _months_in_default(database, table, column)
    months = {_month(start, shift) for shift in range(ahead + 1)} | {m for m in waiting if low <= m <= high}
    for month in sorted(months - set(have)):
        name = partition_name(table, month)
        if database.execute_sql("SELECT to_regclass(%s)", (f'"{name}"',)).fetchone()[0] is not None:
            done.skipped.append(name)  # a table of that name outside the partitions: a retired month kept
            continue
        moved = run_ddl(database, f"{table}: making partition {name}",
                        partial(_make_partition, database, table, column, name, month, month in waiting),
                        policy=policy, say=say)
        (done.moved if month in waiting else done.created).append(name)
        done.rows_moved += moved
    done.in_default = _months_in_default(database, table, column)
    return done


def _make_partition(database: Database, table: str, column: str, name: str, month: date, move: bool) -> int:
    """Make `name` beside `table`, move `month`'s rows out of the default partition if `move`, and attach it."""
    default = f"{table}_default"
    database.execute_sql(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                         f"INCLUDING GENERATED INCLUDING STORAGE)")
    moved = 0
    if move:
        low, high = _bound(month), _bound(_month(month, 1))
        where = f'"{column}" >= %s AND "{column}" < %s'
        database.execute_sql(f'LOCK TABLE "{default}" IN ACCESS EXCLUSIVE MODE')  # no row of the month slips in
        moved = database.execute_sql(f'INSERT INTO "{name}" SELECT * FROM "{default}" WHERE {where}',
                                     (low, high)).rowcount
        _delete_from_default(database, default, where, (low, high))
    database.execute_sql(f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" {_range(month)}')
    _copy_truncate_triggers(database, table, name)
    return moved


def _delete_from_default(database: Database, default: str, where: str, params: tuple) -> None:
    """Delete rows of the default partition (moved or retired), its append-only triggers set aside meanwhile.

    Inside the caller's transaction, with the partition locked: no other session ever sees the
    triggers off, and the rows leave only with the transaction that put them elsewhere.
    """
    database.execute_sql(f'ALTER TABLE "{default}" DISABLE TRIGGER USER')
    database.execute_sql(f'DELETE FROM "{default}" WHERE {where}', params)
    database.execute_sql(f'ALTER TABLE "{default}" ENABLE TRIGGER USER')


def retire_partitions(database: Database, table: str, keep: int, drop: bool = False,
                      now: datetime | None = None, column: str = "created_at",
                      policy: LockPolicy | None = None, say: Callable[[str], None] | None = None) -> Upkeep:
    """Detach (or with `drop`, drop) `table`'s monthly partitions that end before the last `keep` months,
    and retire the default partition's rows that old too (moved to `<table>_default_before_YYYYMM`, or deleted)."""
    if keep < 1:
        raise PartitionError(f"{table}: keep at least 1 month of partitions, got {keep}")
    done = Upkeep()
    oldest_kept = _month(now or datetime.now(UTC), -(keep - 1))
    for month, name in sorted(month_partitions(database, table).items()):
        if month >= oldest_kept:
            continue
        run_ddl(database, f"{table}: retiring partition {name}",
                partial(_detach, database, table, name, drop), policy=policy, say=say)
        done.retired.append(name)
    if any(month < oldest_kept for month in _months_in_default(database, table, column)):
        archive = f"{table}_default_before_{oldest_kept.year:04d}{oldest_kept.month:02d}"
        done.rows_retired = run_ddl(
            database, f"{table}: retiring rows of {table}_default",
            lambda: _retire_default_rows(database, table, column, oldest_kept, None if drop else archive),
            policy=policy, say=say)
        done.retired.append(f"{done.rows_retired} rows of {table}_default" + ("" if drop else f" (into {archive})"))
    done.in_default = _months_in_default(database, table, column)
    return done


def _detach(database: Database, table: str, name: str, drop: bool) -> None:
    database.execute_sql(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
    if drop:
        database.execute_sql(f'DROP TABLE "{name}"')


def _retire_default_rows(database: Database, table: str, column: str, before: date, archive: str | None) -> int:
    """Move (to `archive`, a plain table) or delete the default partition's rows dated before `before`."""
    default = f"{table}_default"
    database.execute_sql(f'LOCK TABLE "{default}" IN ACCESS EXCLUSIVE MODE')
    where, params = f'"{column}" < %s', (_bound(before),)
    if archive is not None:
        database.execute_sql(f'CREATE TABLE IF NOT EXISTS "{archive}" (LIKE "{table}" INCLUDING DEFAULTS)')
        database.execute_sql(f'INSERT INTO "{archive}" SELECT * FROM "{default}" WHERE {where}', params)
    count = database.execute_sql(f'SELECT count(*) FROM "{default}" WHERE {where}', params).fetchone()[0]
    _delete_from_default(database, default, where, params)
    return count


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


def _months_with_rows(database: Database, table: str, column: str, window: tuple[date, date]) -> list[date]:
    """The months within `window` that hold rows of `table` (rows of others go to the default partition)."""
    rows = database.execute_sql(
        f'SELECT DISTINCT date_trunc(\'month\', "{column}" AT TIME ZONE \'UTC\')::date FROM "{table}" '
        f'WHERE "{column}" >= %s AND "{column}" < %s', (_bound(window[0]), _bound(_month(window[1], 1)))).fetchall()
    return sorted(_month(month) for (month,) in rows)


def partition_table(database: Database, table: str, column: str = "created_at", ahead: int = AHEAD_MONTHS,
                    now: datetime | None = None) -> int:
    """Make plain `table` range-partitioned by month on `column`, moving every row; return the rows moved now.

    Run inside a transaction (a migration's). Inside a migration, a table that holds rows is
    converted after the migration commits, by a step of it (`partition_online`: writers go on
    meanwhile), and 0 is returned; anywhere else, or on an empty table, the table is converted in
    the transaction, locked while its rows move, and a failure leaves it as it was.
    """
    if is_partitioned(database, table):
        return 0
    _require_transaction(database, "partition_table")
    holds_rows = database.execute_sql(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]
    if holds_rows and after_commit(database, "partition", table, column, (ahead,)):
        return 0
    months = _months_with_rows(database, table, column, _window(now, ahead))
    partitions = [(partition_name(table, month), _range(month)) for month in months] + [(f"{table}_default", "DEFAULT")]
    moved = _rebuild(database, table, f'PARTITION BY RANGE ("{column}")', f'id, "{column}"', partitions)
    ensure_partitions(database, table, column, ahead, now)
    return moved


def unpartition_table(database: Database, table: str) -> int:
    """Make partitioned `table` a plain table again with `id` as its key, moving every row; return the rows moved."""
    if not is_partitioned(database, table):
        _drop_shadow(database, table)  # a conversion not finished when its migration is rolled back
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
    if upkeep.moved:
        parts.append(f"{len(upkeep.moved)} made for {upkeep.rows_moved:,} rows moved out of {table}_default "
                     f"({', '.join(upkeep.moved)})")
    if upkeep.retired:
        parts.append(f"{len(upkeep.retired)} retired ({', '.join(upkeep.retired)})")
    if upkeep.skipped:
        parts.append(f"{len(upkeep.skipped)} not made, a table of the name being outside the partitions "
                     f"(a retired month? archive or drop it: {', '.join(upkeep.skipped)})")
    return f"{table}: partitions: " + ", ".join(parts)


def _label(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def default_warning(upkeep: Upkeep, table: str) -> str | None:
    """A warning when rows are left in the default partition (read by every query, pruned by none)."""
    if not upkeep.in_default:
        return None
    months = sorted(upkeep.in_default)
    return (f"warning: {table}_default holds {sum(upkeep.in_default.values()):,} rows dated "
            f"{_label(months[0])} to {_label(months[-1])}, outside the months given partitions ({PAST_MONTHS} back to "
            f"{AHEAD_MONTHS} ahead): every query reads them; check those dates, and --retain retires the old ones")


# -- converting a table that holds rows without stopping its writers -------------------------------------

BATCH_ROWS = 5_000  # rows copied per transaction by `partition_online`


def _shadow(table: str) -> tuple[str, str, str]:
    """The partitioned copy being filled, the table of keys deleted meanwhile, and the trigger function."""
    return f"{table}_rebuilt", f"{table}_rebuilt_gone", f"{table}_rebuilt_mirror"


def _temporary_index_name(name: str) -> str:
    """The name an index of the copy carries until the swap gives it `name` (names are per schema)."""
    return "kit_rebuilt_" + hashlib.md5(name.encode()).hexdigest()[:20]  # noqa: S324 - a name, not a secret


def partition_online(database: Database, table: str, column: str = "created_at", ahead: int = AHEAD_MONTHS,
                     now: datetime | None = None, policy: LockPolicy | None = None,
                     say: Callable[[str], None] | None = None, batch_rows: int | None = None) -> int:
    """Make plain `table` range-partitioned by month on `column` while its writers go on; return the rows copied.

    Outside any transaction (a migration's step after its commit). Three stages, each safe to run
    again after a kill:
    1. one short transaction makes the partitioned copy `<table>_rebuilt` (its key, indexes under
       temporary names, foreign keys), and a trigger on `table` that mirrors every later write into it
       (an insert or update upserted, a delete removed and its key kept in `<table>_rebuilt_gone`);
    2. the rows already there are copied `batch_rows` (`BATCH_ROWS`) at a time in key order, each batch a transaction
       of its own that takes no lock a writer waits for (a row the trigger wrote first is kept);
    3. one short transaction locks `table`, removes from the copy the rows deleted while a batch held
       them, drops `table` and gives the copy its name, its indexes' names and its triggers.
    Stages 1 and 3 wait for locks under `policy` (`kit.ddl`): a writer is stalled at most the lock
    timeout by a waiting attempt, and by the swap itself for the few catalog changes it makes.
    """
    if is_partitioned(database, table):  # swapped already (a run killed after stage 3)
        return 0
    if database.in_transaction():
        raise PartitionError(f"partition_online({table}) runs its own transactions; call it outside one")
    run_ddl(database, f"{table}: making its partitioned copy", partial(
        _make_shadow, database, table, column, _window(now, ahead)), policy=policy, say=say)
    copied = _copy_rows(database, table, batch_rows or BATCH_ROWS)
    run_ddl(database, f"{table}: switching to its partitioned copy", partial(_swap, database, table, column),
            policy=policy, say=say)
    ensure_partitions(database, table, column, ahead, now, policy=policy, say=say)
    return copied


def _make_shadow(database: Database, table: str, column: str, window: tuple[date, date]) -> None:
    """Stage 1 (in a transaction): the partitioned copy, and the trigger that keeps it up to date."""
    shadow, gone, mirror = _shadow(table)
    if database.execute_sql("SELECT to_regclass(%s)", (f'"{shadow}"',)).fetchone()[0] is not None:
        return  # made by an earlier run
    saved = _definitions(database, table)
    months = _months_with_rows(database, table, column, window)
    database.execute_sql(f'CREATE TABLE "{shadow}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                         f'INCLUDING GENERATED INCLUDING STORAGE) PARTITION BY RANGE ("{column}")')
    for name, bounds in [(partition_name(table, m), _range(m)) for m in months] + [(f"{table}_default", "DEFAULT")]:
        database.execute_sql(f'CREATE TABLE "{name}" PARTITION OF "{shadow}" {bounds}')
    database.execute_sql(f'ALTER TABLE "{shadow}" ADD CONSTRAINT "{shadow}_pkey" PRIMARY KEY (id, "{column}")')
    for statement in saved["indexes"]:
        _index_name(table, statement)  # readable, or one sentence before anything is made
        database.execute_sql(_INDEX_DEF.sub(
            lambda m: f'CREATE {m[1] or ""}INDEX "{_temporary_index_name(m[2].strip(chr(34)))}" ON "{shadow}" USING',
            statement, count=1).replace("%", "%%"))
    for statement in saved["foreign"]:  # on an empty table: checked at once
        database.execute_sql(statement.replace(f'ALTER TABLE "{table}"', f'ALTER TABLE "{shadow}"', 1)
                             .replace("%", "%%"))
    columns = [name for (name,) in database.execute_sql(
        "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum", (f'"{table}"',)).fetchall()]
    key = ("id", f'"{column}"')
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key) or "id = EXCLUDED.id"
    database.execute_sql(f'CREATE TABLE "{gone}" AS SELECT id, "{column}" FROM "{table}" WITH NO DATA')
    copy, tombstones = _qualified(database, shadow), _qualified(database, gone)
    database.execute_sql(f"""
        CREATE FUNCTION "{mirror}"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $mirror$
        BEGIN
            IF TG_OP <> 'INSERT' AND (TG_OP = 'DELETE' OR (OLD.id, OLD."{column}") IS DISTINCT FROM
                                                          (NEW.id, NEW."{column}")) THEN
                DELETE FROM {copy} WHERE id = OLD.id AND "{column}" = OLD."{column}";
                INSERT INTO {tombstones} VALUES (OLD.id, OLD."{column}");
            END IF;
            IF TG_OP <> 'DELETE' THEN
                INSERT INTO {copy} SELECT NEW.*
                ON CONFLICT (id, "{column}") DO UPDATE SET {updates};
            END IF;
            RETURN NULL;
        END
        $mirror$""".replace("%", "%%"))
    database.execute_sql(f'CREATE TRIGGER "{mirror}" AFTER INSERT OR UPDATE OR DELETE ON "{table}" '
                         f'FOR EACH ROW EXECUTE FUNCTION "{mirror}"()')


def _index_name(table: str, statement: str) -> str:
    """The name in an index's definition (`pg_get_indexdef`)."""
    opening = _INDEX_DEF.match(statement)
    if opening is None:
        raise PartitionError(f"{table}: cannot read the definition of one of its indexes ({statement})")
    return opening[2].strip('"')


def _qualified(database: Database, name: str) -> str:
    """`schema."name"` for a table in the current schema (a SECURITY DEFINER function searches no schema)."""
    schema = database.execute_sql("SELECT quote_ident(current_schema())").fetchone()[0]
    return f'{schema}."{name}"'


def _copy_rows(database: Database, table: str, batch_rows: int) -> int:
    """Stage 2: copy the rows into the partitioned copy, a batch per transaction, in key order; the rows copied."""
    shadow, _, _ = _shadow(table)
    last, copied = None, 0
    while True:
        after = "" if last is None else "WHERE id > %s"
        with database.atomic():
            count, last_id = database.execute_sql(
                f'WITH batch AS (SELECT * FROM "{table}" {after} ORDER BY id LIMIT %s), '
                f'copied AS (INSERT INTO "{shadow}" SELECT * FROM batch ON CONFLICT DO NOTHING) '
                f"SELECT count(*), (SELECT id FROM batch ORDER BY id DESC LIMIT 1) FROM batch",
                ((last,) if last is not None else ()) + (batch_rows,)).fetchone()
        if not count:
            return copied
        copied += count
        last = last_id


def _swap(database: Database, table: str, column: str) -> None:
    """Stage 3 (in a transaction): the copy takes the table's place, names, triggers and partitions' triggers."""
    if is_partitioned(database, table):
        return
    shadow, gone, mirror = _shadow(table)
    database.execute_sql(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    saved = _definitions(database, table)
    database.execute_sql(f'DELETE FROM "{shadow}" s USING "{gone}" g WHERE s.id = g.id AND s."{column}" = g."{column}"')
    database.execute_sql(f'DROP TABLE "{table}"')  # its mirror trigger with it
    database.execute_sql(f'DROP TABLE "{gone}"')
    database.execute_sql(f'DROP FUNCTION "{mirror}"()')
    database.execute_sql(f'ALTER TABLE "{shadow}" RENAME TO "{table}"')
    database.execute_sql(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{shadow}_pkey" TO "{table}_pkey"')
    for statement in saved["indexes"]:
        name = _index_name(table, statement)
        database.execute_sql(f'ALTER INDEX "{_temporary_index_name(name)}" RENAME TO "{name}"')
    for statement in saved["triggers"]:
        if f'"{mirror}"' not in statement and f" {mirror} " not in statement:
            database.execute_sql(statement.replace("%", "%%"))
    partitions = database.execute_sql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                      "WHERE i.inhparent = %s::regclass", (f'"{table}"',)).fetchall()
    for (name,) in partitions:
        _copy_truncate_triggers(database, table, name)


def _drop_shadow(database: Database, table: str) -> None:
    """Drop a partitioned copy a conversion left unfinished (its migration is being rolled back)."""
    shadow, gone, mirror = _shadow(table)
    database.execute_sql(f'DROP FUNCTION IF EXISTS "{mirror}"() CASCADE')  # the trigger on `table` with it
    database.execute_sql(f'DROP TABLE IF EXISTS "{gone}"')
    database.execute_sql(f'DROP TABLE IF EXISTS "{shadow}"')
