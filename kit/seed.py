"""`python -m kit.seed PATH [PATH ...]`: load YAML seed fixtures into the kit's database.

A PATH is taken as given if it exists, else under the seeds directory (`seeds/`, or KIT_SEEDS_DIR):
`python -m kit.seed fixtures/dev.yaml` loads `seeds/fixtures/dev.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import peewee

from kit import migrate
from kit.db import database
from kit.errors import ConfigError, KitError, describe
from kit.migrate.loader import default_directory
from kit.models import project_models
from kit.project import load_project


def seeds_directory() -> Path:
    """Where fixture paths are looked up: KIT_SEEDS_DIR, else the project's (`[tool.kit] seeds`, `seeds/`)."""
    return load_project().seeds


def find_fixture(name: str) -> Path:
    """The fixture file `name`: as given, else under the seeds directory."""
    given = Path(name)
    if given.is_file():
        return given
    under = seeds_directory() / name
    if under.is_file():
        return under
    raise KitError(f"no fixture file {name} (looked at {given.absolute()} and {under})")


def refuse_pending_migrations(database: peewee.Database) -> None:
    """Stop with a sentence if the database has migrations to apply."""
    directory = default_directory()
    if not directory.is_dir():
        raise KitError(f"no migrations directory at {directory}, so pending migrations cannot be checked: run from "
                       "your project (`kit init` makes one), or set KIT_MIGRATIONS_DIR")
    pending = [s.name for s in migrate.status(database, directory) if s.state == "pending"]
    if pending:
        raise KitError(f"the database has {len(pending)} pending migration(s) ({', '.join(pending)}): "
                       "run `pw_migrate migrate` first")


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        """Show `done` of `total` rows of `table`."""
        if not self.enabled or total < 1000:
            return
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(f"\r  {table:<20} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def print_report(report: dict, dry_run: bool) -> None:
    """The per-table table of rows inserted, updated and unchanged."""
    heading = "would insert" if dry_run else "inserted"
    print(f"{'table':<22}{heading:>13}{'updated':>10}{'unchanged':>11}")
    totals = [0, 0, 0]
    for table, counts in report.items():
        values = (counts.inserted, counts.updated, counts.unchanged)
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        print(f"{table:<22}{values[0]:>13,}{values[1]:>10,}{values[2]:>11,}")
    print(f"{'total':<22}{totals[0]:>13,}{totals[1]:>10,}{totals[2]:>11,}")
    if dry_run:
        print("dry run: nothing was written")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the seed command; errors are one sentence on stderr and a non-zero exit."""
    parser = argparse.ArgumentParser(prog="python -m kit.seed", description="Load YAML seed fixtures.")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="fixture files (as given, or under seeds/)")
    parser.add_argument("--dry-run", action="store_true", help="validate and resolve everything, write nothing")
    parser.add_argument("--reset", action="store_true",
                        help="empty the tables the files name first (same transaction); refused if that would "
                             "empty other tables holding rows")
    parser.add_argument("--reset-cascade", action="store_true",
                        help="like --reset, and also empty the tables that reference them")
    parser.add_argument("--allow-any-include", action="store_true",
                        help="let files include files outside the top-level file's directory and seeds/")
    parser.add_argument("--seed", type=int, default=0, help="random seed for generated data (default 0)")
    parser.add_argument("--dump", metavar="TABLE[,TABLE]", help="write these tables' rows as a fixture file")
    parser.add_argument("--out", type=Path, help="where --dump writes (a new file, readable by you only)")
    parser.add_argument("--force", action="store_true", help="let --dump replace existing files")
    args = parser.parse_args(argv)
    if args.dump and not args.out:
        parser.error("--dump needs --out FILE")
    if not args.dump and not args.paths:
        parser.error("give at least one fixture PATH (or --dump TABLES --out FILE)")
    try:
        from kit import fixtures  # the seed extra (PyYAML): without it, one sentence naming the extra

        database.configure_owner()  # seeds write every organization's rows: the owner's connection
        refuse_pending_migrations(database)
        if args.dump:
            tables = [t.strip() for t in args.dump.split(",") if t.strip()]
            count = fixtures.dump(tables, args.out, database, force=args.force, models=project_models())
            print(f"wrote {count:,} rows of {', '.join(tables)} to {args.out}")
            return 0
        fixture = fixtures.parse(*(find_fixture(p) for p in args.paths), models=project_models(),
                                 allow_any_include=args.allow_any_include,
                                 include_roots=(seeds_directory(),))
        report = fixtures.load(fixture, database, seed=args.seed, reset=args.reset, dry_run=args.dry_run,
                               progress=Progress(), notes=print, reset_cascade=args.reset_cascade)
        print_report(report, args.dry_run)
        return 0
    except ConfigError as exc:
        print(f"kit.seed: error: {exc}", file=sys.stderr)
        return 2
    except KitError as exc:
        print(f"kit.seed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kit.seed: interrupted; the transaction was rolled back, nothing was written", file=sys.stderr)
        return 130
    except peewee.DatabaseError as exc:  # not about one row: say what the database said, in one line
        print(f"kit.seed: error: the database said: {describe(exc)}; nothing was written",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
