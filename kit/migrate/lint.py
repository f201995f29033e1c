"""`kit migrate lint`: what a migration will run, checked against rules for statements that stall traffic.

A migration runs while the application does. Some statements hold a lock every query of a table
waits for (ACCESS EXCLUSIVE, or SHARE, which blocks writes) for as long as they scan or rewrite the
table; others break the code still running (a column renamed or dropped under it), or fail when
applied (CREATE INDEX CONCURRENTLY inside the migration's transaction). The rules below are squawk's
and strong_migrations' families, each with why and the safe form. A rule about a table concerns one
that already holds rows: a table the same migration creates, or one the database does not have yet or
holds empty, is exempt (building an index on an empty table takes no time).

**How a statement is read.** By PostgreSQL's own parser (pglast, libpg_query), never by matching its
spelling: every clause of an `ALTER TABLE` is checked, `IF EXISTS`, quoting, comments and case make
no difference, and a statement the parser cannot read is a finding (`unreadable-statement`), not a
pass. A default is volatile (so adding the column rewrites the table) when it calls a volatile
function: as the database's catalog says on a live database, else by the list of PostgreSQL's
volatile built-ins below (`now()` is stable: no rewrite; `clock_timestamp()` is volatile).

- `check(statements, has_rows)` returns findings: a planner that returns data, over what
  `kit.migrate.render` says a migration will run. `lint(database, directory, names)` puts both on a
  live database. Steps that run after the migration's transaction (`kit.migrate.steps`: CONCURRENTLY
  builds, validations, batched backfills) are the safe forms, and are not checked.

Python steps (`migrator.run(f)`) are listed as unchecked, not findings: only their code knows what they
lock, and lint's verdict says it does not cover them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from peewee import Database

from kit.errors import MigrationError
from kit.migrate.render import AFTER_COMMIT, PYTHON_STEP, render

try:
    from pglast import ast, parse_sql
    from pglast.enums import AlterTableType, ConstrType, ObjectType
    from pglast.parser import ParseError
    from pglast.visitors import Visitor
except ImportError:  # an optional extra: the rest of `kit.migrate` runs without it
    ast = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Rule:
    """A kind of statement that stalls traffic, breaks running code or fails, why, and what to do instead."""

    name: str
    why: str
    instead: str


RULES = [
    Rule("require-concurrent-index-creation",
         "CREATE INDEX holds a SHARE lock (no writes) while it reads the whole table",
         "CREATE INDEX CONCURRENTLY, which must run outside the migration's transaction (as `kit maintain` builds)"),
    Rule("ban-concurrent-index-creation-in-transaction",
         "CREATE INDEX CONCURRENTLY cannot run inside the migration's transaction: the migration fails",
         "build it after the migration commits (`kit.migrate.steps`), as the generator writes it"),
    Rule("require-concurrent-index-deletion",
         "DROP INDEX holds an ACCESS EXCLUSIVE lock on the index's table (no reads, no writes) until commit",
         "DROP INDEX CONCURRENTLY, after the migration's transaction"),
    Rule("adding-foreign-key-constraint",
         "a foreign key is checked against every row while both tables are locked against writes",
         "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT next migration (no write lock)"),
    Rule("constraint-missing-not-valid",
         "a CHECK is tested on every row under an ACCESS EXCLUSIVE lock (no reads, no writes)",
         "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in the next migration"),
    Rule("adding-not-nullable-field",
         "SET NOT NULL scans every row under an ACCESS EXCLUSIVE lock",
         "CHECK (column IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL (it trusts the CHECK: no scan)"),
    Rule("changing-column-type",
         "changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE lock",
         "add a column of the new type, backfill it in batches, switch the code, drop the old one later"),
    Rule("adding-field-with-volatile-default",
         "a volatile default is computed for every row: the table is rewritten under an ACCESS EXCLUSIVE lock",
         "add the column without a default (or a constant or stable one), set the default, then backfill in batches"),
    Rule("adding-stored-generated-column",
         "a stored generated column is computed for every row: the table is rewritten under an ACCESS EXCLUSIVE lock",
         "add a plain column, fill it with a trigger for new rows and backfill old ones in batches"),
    Rule("unbatched-backfill",
         "one UPDATE or DELETE of a whole table locks every row it touches until the migration commits",
         "batches of rows (by key range), each its own short transaction, outside the migration"),
    Rule("adding-field-with-references",
         "a column added with REFERENCES validates its foreign key with both tables locked",
         "add the column, then ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, and VALIDATE it in the next migration"),
    Rule("disallowed-unique-constraint",
         "a UNIQUE or PRIMARY KEY constraint builds its index under an ACCESS EXCLUSIVE lock",
         "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX"),
    Rule("renaming-column",
         "the code still running reads the old name and fails until it is deployed anew",
         "add the new column, write both, backfill, move reads, then drop the old one in a later release"),
    Rule("renaming-table",
         "the code still running queries the old name and fails until it is deployed anew",
         "create the new table (or a view under the old name) and move the code over two releases"),
    Rule("ban-drop-column",
         "the code still running selects the column (peewee names every field) and fails",
         "remove the field from the model and deploy first; drop the column in a later migration"),
    Rule("ban-drop-table",
         "the code still running queries it, and its rows are gone for good",
         "remove the model and deploy first; archive the rows, then drop it in a later migration"),
    Rule("unbatched-copy",
         "one INSERT ... SELECT copies a whole table inside the migration's transaction: every lock the migration "
         "holds is held for as long as the copy runs",
         "copy in batches (by key range), each its own short transaction, outside the migration"),
    Rule("ban-truncate",
         "TRUNCATE holds an ACCESS EXCLUSIVE lock until commit, and the code still running loses every row",
         "delete in batches outside the migration, or drop the table in a later release"),
    Rule("ban-lock-table",
         "LOCK TABLE holds its lock (ACCESS EXCLUSIVE unless another mode is named) until the migration commits",
         "no explicit lock: use statements whose locks are short, or the safe forms of each rule"),
    Rule("ban-rewrite",
         "VACUUM FULL, CLUSTER and SET LOGGED/UNLOGGED rewrite the table under an ACCESS EXCLUSIVE lock",
         "pg_repack, or leave it to autovacuum; for UNLOGGED, a new table filled in batches"),
    Rule("unreadable-statement",
         "PostgreSQL's parser cannot read it, so lint cannot say what it locks",
         "write it as one statement PostgreSQL 16 accepts, or move it to a Python step (reported as not checked)"),
]
_RULE = {rule.name: rule for rule in RULES}

# PostgreSQL's volatile built-ins a default may call (the rest are immutable or stable: no rewrite).
# On a live database the catalog says instead (`lint`).
VOLATILE = frozenset(("random", "random_normal", "setseed", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc",
                      "uuid_generate_v4", "clock_timestamp", "timeofday", "nextval", "txid_current",
                      "pg_current_xact_id"))
SERIAL = frozenset(("smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"))  # nextval() defaults


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


def _called(node: Any) -> Iterator[str]:
    """The names of the functions an expression calls (a volatile one makes a default rewrite the table)."""
    names: list[str] = []

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, call: Any) -> None:  # noqa: N802 - pglast's visitor protocol
            names.append(call.funcname[-1].sval.lower())

    Calls()(node)
    yield from names


def _column_rules(column: Any, volatile: Callable[[str], bool]) -> Iterator[str]:
    """The rules an added column breaks (its default, a stored expression, an inline REFERENCES)."""
    type_name = column.typeName.names[-1].sval.lower() if column.typeName is not None else ""
    if type_name in SERIAL:  # a sequence's next value for every row: the table is rewritten
        yield "adding-field-with-volatile-default"
    for constraint in column.constraints or ():
        kind = constraint.contype
        if kind == ConstrType.CONSTR_DEFAULT and any(volatile(name) for name in _called(constraint.raw_expr)):
            yield "adding-field-with-volatile-default"
        elif kind == ConstrType.CONSTR_IDENTITY:  # a value for every row, from a sequence
            yield "adding-field-with-volatile-default"
        elif kind == ConstrType.CONSTR_GENERATED:
            yield "adding-stored-generated-column"
        elif kind == ConstrType.CONSTR_FOREIGN:
            yield "adding-field-with-references"


def _alter_rules(command: Any, volatile: Callable[[str], bool]) -> Iterator[str]:
    """The rules one clause of an ALTER TABLE breaks."""
    kind = command.subtype
    if kind == AlterTableType.AT_AddColumn:
        yield from _column_rules(command.def_, volatile)
    elif kind == AlterTableType.AT_AlterColumnType:
        yield "changing-column-type"
    elif kind == AlterTableType.AT_SetNotNull:
        yield "adding-not-nullable-field"
    elif kind == AlterTableType.AT_DropColumn:
        yield "ban-drop-column"
    elif kind in (AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged):
        yield "ban-rewrite"
    elif kind == AlterTableType.AT_AddConstraint:
        constraint = command.def_
        if constraint.contype == ConstrType.CONSTR_FOREIGN and not constraint.skip_validation:
            yield "adding-foreign-key-constraint"
        elif constraint.contype == ConstrType.CONSTR_CHECK and not constraint.skip_validation:
            yield "constraint-missing-not-valid"
        elif constraint.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not constraint.indexname:
            yield "disallowed-unique-constraint"


def _relname(relation: Any) -> str:
    """A statement's table name (its RangeVar's)."""
    return relation.relname if relation is not None else ""


Rules = Iterator[tuple[str, str | None]]  # (rule, table) pairs


def _created(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    yield "created", _relname(statement.relation)


def _index(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    if statement.idxname:
        yield "created-index", f"{INDEX}{statement.idxname} {_relname(statement.relation)}"
    if statement.concurrent:
        yield "ban-concurrent-index-creation-in-transaction", None  # it fails, rows or not
    else:
        yield "require-concurrent-index-creation", _relname(statement.relation)


def _alter(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    if statement.objtype == ObjectType.OBJECT_TABLE:
        for command in statement.cmds or ():
            for rule in _alter_rules(command, volatile):
                yield rule, _relname(statement.relation)


def _rename(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    renamed = {ObjectType.OBJECT_COLUMN: "renaming-column", ObjectType.OBJECT_TABLE: "renaming-table"}
    if statement.relation is not None and statement.renameType in renamed:
        yield renamed[statement.renameType], _relname(statement.relation)


def _drop(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    if statement.removeType == ObjectType.OBJECT_TABLE:
        for name in statement.objects or ():
            yield "ban-drop-table", name[-1].sval
    elif statement.removeType == ObjectType.OBJECT_INDEX and not statement.concurrent:
        for name in statement.objects or ():
            yield "require-concurrent-index-deletion", INDEX + name[-1].sval


def _insert(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    if statement.selectStmt is not None:
        for source in _tables_read(statement.selectStmt):  # INSERT ... SELECT: as long as the tables it reads
            yield "unbatched-copy", source


def _rows_changed(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    yield "unbatched-backfill", _relname(statement.relation)


def _each_relation(rule: str) -> Callable[[Any, Callable[[str], bool]], Rules]:
    def rules(statement: Any, volatile: Callable[[str], bool]) -> Rules:
        for relation in statement.relations or ():
            yield rule, relation.relname
    return rules


def _vacuum(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    if any(option.defname == "full" for option in statement.options or ()):
        for relation in statement.rels or ():
            yield "ban-rewrite", relation.relation.relname


def _cluster(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    yield "ban-rewrite", _relname(statement.relation) if statement.relation else None


_CLASSIFIERS: dict[str, Callable[[Any, Callable[[str], bool]], Rules]] = {
    "CreateStmt": _created, "IndexStmt": _index, "AlterTableStmt": _alter, "RenameStmt": _rename, "DropStmt": _drop,
    "InsertStmt": _insert, "UpdateStmt": _rows_changed, "DeleteStmt": _rows_changed,
    "TruncateStmt": _each_relation("ban-truncate"), "LockStmt": _each_relation("ban-lock-table"),
    "VacuumStmt": _vacuum, "ClusterStmt": _cluster,
}  # by the parser's node class: what each kind of statement breaks


def classify(statement: Any, volatile: Callable[[str], bool]) -> Rules:
    """(rule, table) for each rule a parsed statement breaks; a new table is ("created", name).

    A rule about an index names it as `INDEX + name` (DROP INDEX names no table: `check` finds it).
    """
    classifier = _CLASSIFIERS.get(type(statement).__name__)
    return classifier(statement, volatile) if classifier is not None else iter(())


INDEX = "index "  # what `classify` puts before an index's name where a rule's table would be
def _tables_read(node: Any) -> list[str]:
    """The tables a query reads (every table named in its FROM clauses, subqueries and joins included)."""
    names: list[str] = []

    class Tables(Visitor):
        def visit_RangeVar(self, ancestors: Any, relation: Any) -> None:  # noqa: N802 - pglast's visitor protocol
            names.append(relation.relname)

    Tables()(node)
    return names


_PARAMETER = re.compile(r"%s")  # peewee's placeholders: a parameter to the parser ($1) is the same expression


def check(migration: str, statements: Iterable[str], has_rows: Callable[[str], bool] = lambda table: True,
          volatile: Callable[[str], bool] = VOLATILE.__contains__,
          index_table: Callable[[str], str | None] = lambda index: None) -> list[Finding]:
    """The findings of `statements` (one migration's SQL, in order).

    `has_rows(table)`: may it hold rows? `volatile(function)`: does it rewrite a table as a default?
    `index_table(index)`: the table an existing index is on ('' when there is no such index, None when
    it cannot be known: such a DROP INDEX is flagged).
    """
    if ast is None:
        raise MigrationError("kit migrate lint reads statements with PostgreSQL's own parser, pglast, which is not "
                             "installed: pip install 'peewee-saas-kit[lint]'")
    created: set[str] = set()
    made_indexes: dict[str, str] = {}
    found = []
    for statement in statements:
        if statement.startswith((AFTER_COMMIT, PYTHON_STEP)):  # a step after commit, or not checkable
            continue
        text = " ".join(statement.split())
        try:
            parsed = [raw.stmt for raw in parse_sql(_PARAMETER.sub("$1", statement))]
        except ParseError:
            found.append(Finding(migration, _RULE["unreadable-statement"], text, None))
            continue
        for node in parsed:
            for rule, table in classify(node, volatile):
                if rule == "created":
                    created.add(cast(str, table).lower())  # these two rules always name their table
                    continue
                if rule == "created-index":
                    index, on = cast(str, table)[len(INDEX):].split(" ", 1)
                    made_indexes[index.lower()] = on
                    continue
                if table is not None and table.startswith(INDEX):  # an index: the table it is on
                    index = table[len(INDEX):]
                    table = made_indexes.get(index.lower()) or index_table(index)
                    if table == "":  # no such index: nothing to drop, nothing locked
                        continue
                if table is None or (table.lower() not in created and has_rows(table)):
                    found.append(Finding(migration, _RULE[rule], text, table))
                    break  # one finding a statement: the first rule that fits says most
            else:
                continue
            break
    return found


def index_table_in(database: Database) -> Callable[[str], str | None]:
    """The table an index is on in `database` ('' when it has no such index)."""
    def table_of(index: str) -> str:
        found = database.execute_sql("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                                     "WHERE i.indexrelid = to_regclass(%s)", (f'"{index}"',)).fetchone()
        return found[0] if found else ""
    return table_of


def volatile_in(database: Database) -> Callable[[str], bool]:
    """Whether a function of this name is volatile, as `database`'s catalog says (any overload of it)."""
    def is_volatile(name: str) -> bool:
        found = database.execute_sql("SELECT bool_or(provolatile = 'v') FROM pg_proc WHERE proname = %s",
                                     (name,)).fetchone()[0]
        return bool(found) if found is not None else name in VOLATILE
    return is_volatile


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
        report.findings += check(name, statements, has_rows(database), volatile_in(database),
                                 index_table_in(database))
    return report


__all__ = ["RULES", "VOLATILE", "Finding", "Report", "Rule", "check", "classify", "has_rows", "index_table_in", "lint",
           "volatile_in"]
