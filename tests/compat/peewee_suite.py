"""peewee's own test suite on PostgreSQL, stock and with the kit's statement path swapped in: no new failure.

Runs a peewee checkout's `tests` package twice against the embedded server (database `peewee_test`,
as its superuser): once as it is, once with every `Database.execute(query)` taking its SQL from the
kit's statement cache (`kit.db.shapes`, with `KIT_SHAPES_VERIFY=1`: each hit is rendered again by
peewee and compared) and model rows built by the kit's row plans (`kit.db.rows`). Prints the failures
only the kit's run has, and exits 1 if there are any. Failures both runs share are the checkout's
against the installed peewee, not the kit's.

Run: `python tests/compat/peewee_suite.py PEEWEE_CHECKOUT` (a work tree of github.com/coleifer/peewee;
this file's own run used commit 408aa4c1, peewee 4.3.0's tests, against peewee 4.5.3 installed:
1,924 tests, the same 9 failures in both runs (hstore is not in the embedded build; 4 SQL shapes that
peewee changed after 4.3.0), 0 only with the kit).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg2

from kit import embedded
from kit.config import load_settings

PATCH = """
import peewee
from kit.db.rows import ModelRows
from kit.db.shapes import ShapedStatements

for name in ("execute", "sql_of", "shapes", "shape_stats", "_shapes"):
    setattr(peewee.Database, name, ShapedStatements.__dict__[name])
_wrapper = peewee.ModelSelect._get_model_cursor_wrapper


def _rows(self, cursor):
    if len(self._from_list) == 1 and not self._joins:
        return ModelRows(cursor, self.model, self._returning, self.model)
    return _wrapper(self, cursor)


peewee.ModelSelect._get_model_cursor_wrapper = _rows
"""
# The installed peewee and playhouse are imported first, so the checkout's own copies are never used.
RUN = ("import runpy, sys\nsys.path = [p for p in sys.path if p not in ('', '.')]\nimport peewee, playhouse\n"
       "sys.path.insert(0, '.')\n{patch}\nsys.argv = ['tests']\nrunpy.run_module('tests', run_name='__main__', alter_sys=True)")
OUTCOME = re.compile(r"^(FAIL|ERROR): (\S+) \(([^)]+)\)", re.M)


def run(checkout: Path, with_kit: bool) -> tuple[set[str], str]:
    """One run of the suite: the failing tests' names, and the summary line."""
    settings = load_settings()
    embedded.start(settings.data_dir)
    found = embedded.status(settings.data_dir)
    admin = embedded.url(found.socket_dir, found.port, "postgres")
    env = {**os.environ, "PEEWEE_TEST_BACKEND": "postgresql", "PEEWEE_PSQL_HOST": str(found.socket_dir),
           "PEEWEE_PSQL_PORT": str(found.port or 5432), "PEEWEE_PSQL_USER": admin.split("//")[1].split("@")[0],
           "KIT_SHAPES_VERIFY": "1"}
    conn = psycopg2.connect(admin)  # a new database per run (hstore is not in the embedded build: those fail twice)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS peewee_test WITH (FORCE)")
        cursor.execute("CREATE DATABASE peewee_test")
    conn.close()
    code = RUN.format(patch=PATCH if with_kit else "")
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=3600)
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if line.startswith(("Ran ", "OK", "FAILED"))]
    return {f"{cls} {name}" for _, name, cls in OUTCOME.findall(output)}, " ".join(summary[-3:])


def main() -> int:
    """Both runs, then the failures only the kit's run has."""
    checkout = Path(sys.argv[1]).absolute()
    stock, stock_summary = run(checkout, with_kit=False)
    kit, kit_summary = run(checkout, with_kit=True)
    print(f"stock peewee: {stock_summary}")
    print(f"the kit's statement path: {kit_summary}")
    new = sorted(kit - stock)
    for name in new:
        print(f"only with the kit: {name}")
    print(f"{len(new)} new failures ({len(stock)} failures in both runs are the checkout's against this peewee)")
    return 1 if new else 0


if __name__ == "__main__":
    raise SystemExit(main())
