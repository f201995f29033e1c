"""`kit migrate lint` beside squawk on the kit's own migrations, over a migrated and seeded database.

Every statement the migrations run that touches a table holding rows (not one the same migration
creates) goes to both. They must agree on every such statement, except where `DIFFERENCES` says
why. The kit's findings are the 16 `docs/migrations.md` lists. squawk is a dev dependency
(`squawk-cli`, pinned); without it this is skipped with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from pglast import parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor

from kit import migrate
from kit.fixtures import load, parse
from kit.migrate.executor import router_for
from kit.migrate.lint import check, has_rows, index_table_in, volatile_in
from kit.migrate.render import AFTER_COMMIT, PYTHON_STEP, render

ROOT = Path(__file__).resolve().parent.parent
STYLE = {"require-lock-timeout", "require-statement-timeout", "prefer-robust-stmts", "prefer-bigint-over-int",
         "prefer-bigint-over-smallint", "prefer-text-field", "prefer-identity", "prefer-timestamptz", "ban-char-field",
         "transaction-nesting"}  # squawk's rules about style and habits, not about what stalls or breaks
DIFFERENCES = {  # (migration, statement start) -> ((the kit flags it, squawk's rules), why they differ)
    ("005", 'ALTER TABLE "invitations" DROP CONSTRAINT "fk_invitations_in'): (
        (False, ["ban-drop-constraint"]),
        "a catalog change under the migration's lock timeout (no scan, no rewrite), and no running code fails for "
        "a foreign key gone (005 puts it back as Better Auth names it); squawk warns that clients may rely on it"),
    ("005", 'ALTER TABLE "organizations" ALTER COLUMN "metadata" DROP DEF'): (
        (False, ["ban-drop-default"]),
        "the column becomes nullable text in the same migration: a writer that leaves it out stores NULL, so no "
        "running insert fails; squawk warns of any default dropped"),
    ("005", 'UPDATE "two_factors" SET "failed_verification_count" = %s'): (
        (True, []), "a whole-table UPDATE holds its row locks until commit; squawk has no rule for DML"),
    ("005", 'UPDATE "two_factors" SET "verified" = %s'): (
        (True, []), "a whole-table UPDATE holds its row locks until commit; squawk has no rule for DML"),
    ("006", 'UPDATE "document_chunks" SET "language" = %s'): (
        (True, []), "a whole-table UPDATE holds its row locks until commit; squawk has no rule for DML"),
}

pytestmark = [pytest.mark.skipif(shutil.which("squawk") is None, reason="squawk is not installed (pip install "
                                                                        "squawk-cli): the comparison is skipped"),
              pytest.mark.once]  # rendering and reading statements: no pooler in the way


class _Tables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def visit_RangeVar(self, ancestors, node) -> None:  # noqa: N802 - pglast's visitor protocol
        self.names.append(node.relname)


def squawk(statements: list[str], tmp_path: Path) -> list[list[str]]:
    """squawk's rules (style left out) for each statement, run as one migration inside its transaction."""
    path = tmp_path / "m.sql"
    path.write_text("".join(s + ";\n" for s in statements))
    ran = subprocess.run(["squawk", str(path), "--reporter", "json", "--assume-in-transaction", "--pg-version", "16"],
                         capture_output=True, text=True, timeout=120)
    said: list[set[str]] = [set() for _ in statements]
    for finding in json.loads(ran.stdout or "[]"):
        if finding["rule_name"] not in STYLE:
            said[finding["line"]].add(finding["rule_name"])
    return [sorted(rules) for rules in said]


def test_on_the_kit_s_own_migrations_lint_and_squawk_agree_about_every_table_with_rows(fresh_database, tmp_path):
    db = fresh_database
    directory = ROOT / "migrations"
    migrate.apply(db, directory, say=lambda _: None)
    load(parse(ROOT / "seeds" / "fixtures" / "dev.yaml"), db)
    router = router_for(db, directory)
    rows, volatile, index_table = has_rows(db), volatile_in(db), index_table_in(db)
    compared, kit_findings, differences = 0, Counter(), {}
    for state in migrate.status(db, directory):
        name = state.name
        statements = render(router, name)
        flagged = {f.statement for f in check(name, statements, rows, volatile, index_table)}
        kit_findings[name[:3]] += len(flagged)
        created: set[str] = set()
        chosen: list[tuple[str, str]] = []  # (as the kit reads it, one line for squawk)
        for statement in statements:
            if statement.startswith((AFTER_COMMIT, PYTHON_STEP)):
                continue
            for raw in parse_sql(statement.replace("%s", "NULL")):
                tables = _Tables()
                tables(raw.stmt)
                if type(raw.stmt).__name__ == "CreateStmt":
                    created.add(raw.stmt.relation.relname)
                touched = [t for t in tables.names if t not in created and rows(t)]
                if touched:
                    chosen.append((" ".join(statement.split()), RawStream()(raw.stmt)))
        said = squawk([line for _, line in chosen], tmp_path) if chosen else []
        for (text, _), by_squawk in zip(chosen, said, strict=True):
            compared += 1
            if (text in flagged) != bool(by_squawk):
                differences[(name[:3], text[:60])] = (text in flagged, by_squawk)
    assert compared > 50  # the comparison saw the statements that matter
    assert dict(kit_findings) == {"001": 0, "002": 0, "003": 0, "004": 0, "005": 11, "006": 4, "007": 1, "008": 0,
                                  "009": 0, "010": 0, "011": 0, "012": 1}  # as docs/migrations.md says
    assert differences == {key: value for key, (value, _) in DIFFERENCES.items()}
