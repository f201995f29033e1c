"""The safe forms of statements that would stall traffic on a table with rows: a planner, no I/O.

`safe_forms(statements)` splits what peewee would run into what the migration's transaction runs now
and the steps run after it commits (`kit.migrate.steps`), each one short or free of write locks:

- CREATE [UNIQUE] INDEX: after, CREATE INDEX CONCURRENTLY (an invalid one left by a crash is dropped first);
- ADD CONSTRAINT ... FOREIGN KEY or CHECK: now, the same NOT VALID; after, VALIDATE CONSTRAINT;
- ADD COLUMN ... REFERENCES: now, ADD COLUMN and the foreign key NOT VALID; after, VALIDATE CONSTRAINT;
- ALTER COLUMN ... SET NOT NULL: after, CHECK (column IS NOT NULL) NOT VALID, VALIDATE it, SET NOT NULL
  (no scan: the CHECK proves it), drop the CHECK;
- UPDATE t SET c = value (a new column's fill): after, the same in batches of the rows still NULL.

VALIDATE takes SHARE UPDATE EXCLUSIVE, which lets reads and writes go on; NOT VALID constraints hold
for every new row at once. Backfills run first, so the NOT NULL CHECK comes only once no row lacks a
value (before, an update of an old row would fail it). Anything else is kept as it is (and `kit migrate lint` says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BACKFILL_BATCH", "Later", "safe_forms"]

BACKFILL_BATCH = 1000  # rows per backfill transaction: row locks held for milliseconds, not the whole table

_NAME = r'"?(\w+)"?'
_INDEX = re.compile(r"^CREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME +
                    r"\s+(ON\s.*)$", re.I | re.S)
_CONSTRAINT = re.compile(r"^ALTER\s+TABLE\s+" + _NAME + r"\s+ADD\s+CONSTRAINT\s+" + _NAME +
                         r"\s+(?:FOREIGN\s+KEY|CHECK)\b(?!.*\bNOT\s+VALID\b).*$", re.I | re.S)
_REFERENCES = re.compile(r"^(ALTER\s+TABLE\s+" + _NAME + r"\s+ADD\s+COLUMN\s+" + _NAME +
                         r"\s.*?)\s+(REFERENCES\s.*)$", re.I | re.S)
_NOT_NULL = re.compile(r"^ALTER\s+TABLE\s+" + _NAME + r"\s+ALTER\s+COLUMN\s+" + _NAME + r"\s+SET\s+NOT\s+NULL\s*$",
                       re.I)
_FILL = re.compile(r"^UPDATE\s+" + _NAME + r"\s+SET\s+" + _NAME + r"\s*=\s*%s\s*$", re.I)


@dataclass(frozen=True)
class Later:
    """A statement to run after the migration commits: `index` (CONCURRENTLY), `sql`, or `backfill` (batched)."""

    kind: str
    sql: str
    params: tuple = ()
    name: str | None = None  # the index a CONCURRENTLY build makes (to find an invalid one left behind)


def safe_forms(statements: list[tuple[str, tuple]]) -> tuple[list[tuple[str, tuple]], list[Later]]:
    """`statements` as (now, later): what the migration's transaction runs, and the steps after it."""
    now: list[tuple[str, tuple]] = []
    later: list[Later] = []
    for sql, params in statements:
        text = " ".join(sql.split())
        if match := _INDEX.match(text):
            unique, name, rest = match[1] or "", match[2], match[3]
            later.append(Later("index", f'CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS "{name}" {rest}', params,
                               name))
        elif match := _CONSTRAINT.match(text):
            table, name = match[1], match[2]
            now.append((f"{sql} NOT VALID", params))
            later.append(Later("sql", f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{name}"'))
        elif match := _REFERENCES.match(text):
            add, table, column, references = match[1], match[2], match[3], match[4]
            name = f"{table}_{column}_fkey"
            now.append((add, params))
            now.append((f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" FOREIGN KEY ("{column}") {references} '
                        "NOT VALID", ()))
            later.append(Later("sql", f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{name}"'))
        elif match := _NOT_NULL.match(text):
            table, column = match[1], match[2]
            check = f"{table}_{column}_not_null"
            later += [Later("sql", f'ALTER TABLE "{table}" ADD CONSTRAINT "{check}" CHECK ("{column}" IS NOT NULL) '
                                   "NOT VALID"),
                      Later("sql", f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{check}"'),
                      Later("sql", f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET NOT NULL'),
                      Later("sql", f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{check}"')]
        elif (match := _FILL.match(text)) and len(params) == 1:
            table, column = match[1], match[2]
            batch = f'SELECT ctid FROM "{table}" WHERE "{column}" IS NULL LIMIT {BACKFILL_BATCH}'
            later.append(Later("backfill", f'UPDATE "{table}" SET "{column}" = %s WHERE ctid = ANY (ARRAY({batch}))',
                               params))
        else:
            now.append((sql, params))
    return now, _backfills_first(later)


def _backfills_first(later: list[Later]) -> list[Later]:
    """Fill a column before validating that it is set: a backfill goes ahead of the steps that check it."""
    return [s for s in later if s.kind == "backfill"] + [s for s in later if s.kind != "backfill"]
