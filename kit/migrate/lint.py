"""`kit migrate lint`: what a migration will run, checked against rules for statements that stall traffic.

A migration runs while the application does. Some statements hold a lock every query of a table
waits for (ACCESS EXCLUSIVE, or SHARE, which blocks writes) for as long as they scan or rewrite the
table; others break the code still running (a column renamed or dropped under it). The rules below
are squawk's and strong_migrations' families, each with why and the safe form. A rule concerns a
table that already holds rows: a table the same migration creates, or one the database does not
have yet or holds empty, is exempt (building an index on an empty table takes no time).

- `check(statements, has_rows)` returns findings: a planner that returns data, over what
  `kit.migrate.render` says a migration will run. `lint(database, directory, names)` puts both on a
  live database. Steps that run after the migration's transaction (`kit.migrate.steps`: CONCURRENTLY
  builds, validations, batched backfills) are the safe forms, and are not checked.

Python steps (`migrator.run(f)`) are listed as unchecked, not findings: only their code knows what they lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from peewee import Database

from kit.errors import MigrationError
from kit.migrate.render import AFTER_COMMIT, PYTHON_STEP, render


@dataclass(frozen=True)
class Rule:
    """A kind of statement that stalls traffic or breaks running code, why, and what to do instead."""

    name: str
    pattern: re.Pattern[str]
    why: str
    instead: str


_T = r'(?:ONLY\s+)?(?:"?\w+"?\.)?"?(?P<table>\w+)"?'  # a table name after ALTER TABLE / ON
RULES = [
    Rule("require-concurrent-index-creation",
         re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)(?:IF\s+NOT\s+EXISTS\s+)?\S*\s*ON\s+{_T}", re.I),
         "CREATE INDEX holds a SHARE lock (no writes) while it reads the whole table",
         "CREATE INDEX CONCURRENTLY, which must run outside the migration's transaction (as `kit maintain` builds)"),
    Rule("adding-foreign-key-constraint",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:CONSTRAINT\s+\S+\s+)?FOREIGN\s+KEY(?!.*\bNOT\s+VALID\b)",
                    re.I | re.S),
         "a foreign key is checked against every row while both tables are locked against writes",
         "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT next migration (no write lock)"),
    Rule("constraint-missing-not-valid",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:CONSTRAINT\s+\S+\s+)?CHECK\b(?!.*\bNOT\s+VALID\b)",
                    re.I | re.S),
         "a CHECK is tested on every row under an ACCESS EXCLUSIVE lock (no reads, no writes)",
         "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in the next migration"),
    Rule("adding-not-nullable-field",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ALTER\s+(?:COLUMN\s+)?\S+\s+SET\s+NOT\s+NULL", re.I),
         "SET NOT NULL scans every row under an ACCESS EXCLUSIVE lock",
         "CHECK (column IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL (it trusts the CHECK: no scan)"),
    Rule("changing-column-type",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b", re.I),
         "changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE lock",
         "add a column of the new type, backfill it in batches, switch the code, drop the old one later"),
    Rule("adding-field-with-volatile-default",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)\S+.*\bDEFAULT\s+\(?\s*"
                    r"(?:now|random|gen_random_uuid|uuid_generate_v4|clock_timestamp|statement_timestamp|nextval)\s*\(",
                    re.I | re.S),
         "a volatile default is computed for every row: the table is rewritten under an ACCESS EXCLUSIVE lock",
         "add the column without a default (or a constant one), set the default, then backfill in batches"),
    Rule("adding-stored-generated-column",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)\S+.*\bGENERATED\s+ALWAYS\s+AS\s*\(",
                    re.I | re.S),
         "a stored generated column is computed for every row: the table is rewritten under an ACCESS EXCLUSIVE lock",
         "add a plain column, fill it with a trigger for new rows and backfill old ones in batches"),
    Rule("unbatched-backfill",
         re.compile(rf"^(?:UPDATE|DELETE\s+FROM)\s+{_T}\s", re.I),
         "one UPDATE or DELETE of a whole table locks every row it touches until the migration commits",
         "batches of rows (by key range), each its own short transaction, outside the migration"),
    Rule("adding-field-with-references",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)\S+\s[^;]*\bREFERENCES\b",
                    re.I | re.S),
         "a column added with REFERENCES validates its foreign key with both tables locked",
         "add the column, then ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, and VALIDATE it in the next migration"),
    Rule("disallowed-unique-constraint",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+ADD\s+(?:CONSTRAINT\s+\S+\s+)?(?:UNIQUE|PRIMARY\s+KEY)\s*\((?!.*USING\s+INDEX)",
                    re.I | re.S),
         "a UNIQUE or PRIMARY KEY constraint builds its index under an ACCESS EXCLUSIVE lock",
         "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX"),
    Rule("renaming-column",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+RENAME\s+(?:COLUMN\s+)?(?!TO\b)\S+\s+TO\b", re.I),
         "the code still running reads the old name and fails until it is deployed anew",
         "add the new column, write both, backfill, move reads, then drop the old one in a later release"),
    Rule("renaming-table",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+RENAME\s+TO\b", re.I),
         "the code still running queries the old name and fails until it is deployed anew",
         "create the new table (or a view under the old name) and move the code over two releases"),
    Rule("ban-drop-column",
         re.compile(rf"^ALTER\s+TABLE\s+{_T}\s+DROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)", re.I),
         "the code still running selects the column (peewee names every field) and fails",
         "remove the field from the model and deploy first; drop the column in a later migration"),
    Rule("ban-drop-table",
         re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_T}", re.I),
         "the code still running queries it, and its rows are gone for good",
         "remove the model and deploy first; archive the rows, then drop it in a later migration"),
    Rule("ban-rewrite",
         re.compile(rf"^(?:VACUUM\s+(?:\(\s*)?FULL|CLUSTER)\b.*?{_T}?", re.I | re.S),
         "VACUUM FULL and CLUSTER rewrite the table under an ACCESS EXCLUSIVE lock",
         "pg_repack, or leave it to autovacuum"),
]


@dataclass(frozen=True)
class Finding:
    """One statement of a migration that breaks a rule."""

    migration: str
    rule: Rule
    statement: str
    table: str | None

    def describe(self) -> str:
        """`011_x: require-concurrent-index-creation on orders: why; instead: how`."""
        on = f" on {self.table}" if self.table else ""
        return f"{self.migration}: {self.rule.name}{on}: {self.rule.why}; instead: {self.rule.instead}"


_CREATES = re.compile(r"^CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:\"?\w+\"?\.)?\"?(\w+)\"?", re.I)


def check(migration: str, statements: Iterable[str], has_rows: Callable[[str], bool] = lambda table: True
          ) -> list[Finding]:
    """The findings of `statements` (one migration's SQL, in order); `has_rows(table)`: may it hold rows?"""
    created: set[str] = set()
    found = []
    for statement in statements:
        if statement.startswith(("--", AFTER_COMMIT, PYTHON_STEP)):  # a step after commit, or not checkable
            continue
        text = " ".join(statement.split())
        made = _CREATES.match(text)
        if made:
            created.add(made[1].lower())
            continue
        for rule in RULES:
            match = rule.pattern.match(text)
            if not match:
                continue
            table = match.groupdict().get("table")
            if table and (table.lower() in created or not has_rows(table)):
                continue
            found.append(Finding(migration, rule, text, table))
            break  # one finding a statement: the first rule that fits says most
    return found


def has_rows(database: Database) -> Callable[[str], bool]:
    """Whether a table holds rows in `database` (one that does not exist yet holds none)."""
    def holds(table: str) -> bool:
        exists = database.execute_sql("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',)).fetchone()[0]
        return bool(exists and database.execute_sql(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0])
    return holds


@dataclass
class Report:
    """What `lint` found: the migrations checked, the findings, and the steps it could not check."""

    names: list[str]
    findings: list[Finding]
    unchecked: list[tuple[str, str]]  # (migration, the step: a Python function, or one that reads the schema)


def lint(database: Database, directory: Path, names: list[str] | None = None) -> Report:
    """Check `names` (default: the pending migrations; a name may be its start) against the tables as they are."""
    from kit.migrate.executor import by_prefix, router_for, status

    states = status(database, directory)
    known = [s.name for s in states]
    names = [by_prefix(name, known) for name in names or []] or [s.name for s in states if s.state == "pending"]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise MigrationError(f"no migration named {unknown[0]} in {directory} (known: {', '.join(known) or 'none'})")
    router = router_for(database, directory)
    report = Report(names, [], [])
    for name in names:
        statements = render(router, name)
        report.unchecked += [(name, s[len(PYTHON_STEP):]) for s in statements if s.startswith(PYTHON_STEP)]
        report.findings += check(name, statements, has_rows(database))
    return report


__all__ = ["RULES", "Finding", "Report", "Rule", "check", "has_rows", "lint"]
