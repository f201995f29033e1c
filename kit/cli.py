"""The `kit` command: `kit db url|status|start|stop|psql|roles|check|...`, `kit migrate [...]`, `kit maintain`.

Exit codes: 0 done (for `status`: every migration applied and unchanged); 1 refused, or something to
act on (`status`: a migration pending, edited or missing; `verify`: a problem found); 2 a setting is
wrong; 3 `kit db status`: the embedded server is stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg2.extensions

from kit import embedded
from kit.config import Settings, load_settings
from kit.errors import ConfigError, KitError, describe
from kit.roles import APP, AUTH, OWNER

EXIT_CONFIG = 2
MAX_RETAIN_MONTHS = 1200  # a century: more is a typo, and would reach back before any date partitions hold


def _db_url(settings: Settings, args: argparse.Namespace) -> int:
    from kit.config import mask_password
    from kit.db import resolve_url

    if args.better_auth:
        if settings.database_url:
            print("kit: error: --better-auth prints the embedded server's kit_auth URL; with DATABASE_URL set, "
                  f"Better Auth connects to that server as {AUTH} (its password: KIT_AUTH_PASSWORD at "
                  "`kit db roles`)", file=sys.stderr)
            return 1
        url = embedded.start(settings.data_dir, AUTH)
    else:
        url = resolve_url(settings, OWNER if args.owner else APP)
    print(url if args.show_password else mask_password(url))
    return 0


def _db_roles(settings: Settings, args: argparse.Namespace) -> int:
    from kit import roles
    from kit.config import check_database_url, mask_password

    admin = os.environ.get("DATABASE_ADMIN_URL", "").strip()
    if not admin:
        if settings.database_url:
            print("kit: error: DATABASE_ADMIN_URL (a superuser's URL of the same database) is not set; "
                  "`kit db roles` makes the kit's roles with it", file=sys.stderr)
            return EXIT_CONFIG
        admin = embedded.start(settings.data_dir, roles.ADMIN)
    admin = check_database_url(admin, "DATABASE_ADMIN_URL")
    passwords = {role: os.environ[name] for role, name in roles.PASSWORD_VARIABLES.items() if os.environ.get(name)}
    roles.bootstrap(admin, passwords)
    print(f"roles {roles.OWNER}, {roles.APP}, {roles.DOOR} and {roles.AUTH} ready; the database {mask_password(admin)} "
          f"belongs to {roles.OWNER}")
    return 0


def _db_check(settings: Settings, args: argparse.Namespace) -> int:
    from kit.check import check
    from kit.models import project_models

    findings = check(settings, project_models())
    for finding in findings:
        print(f"{'ok  ' if finding.ok else 'FAIL'} {finding.text}")
    return 0 if all(f.ok for f in findings) else 1


def _db_status(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        print(f"database: {settings.safe_url} (DATABASE_URL)")
        return _report_server(settings.database_url)
    state = embedded.status(settings.data_dir)
    print(f"database: embedded PostgreSQL {embedded.PG_MAJOR} in {state.pgdata}")
    if not state.running or state.socket_dir is None:
        print("server:   stopped" + ("" if state.initialized else " (not initialised yet)"))
        print("start it with `kit db start` (any query also starts it)")
        return 3
    print(f"server:   running, pid {state.pid}, socket {state.socket_dir}")
    url = embedded.url(state.socket_dir, state.port, embedded.DATABASE_NAME, APP)
    print(f"url:      {url}")
    return _report_server(url)


def _report_server(url: str) -> int:
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=5, application_name="kit-status")
    except psycopg2.Error as exc:
        reason = describe(exc)
        print(f"reachable: no ({reason})")
        return 1
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
            cur.execute(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
                " (SELECT default_version FROM pg_available_extensions WHERE name = 'vector')"
            )
            installed, available = cur.fetchone()
    finally:
        conn.close()
    print(f"reachable: yes, PostgreSQL {version}")
    if installed:
        print(f"pgvector: {installed} installed")
    elif available:
        print(f"pgvector: {available} available, not yet installed in this database (migrations install it)")
    else:
        print("pgvector: not available on this server (use the pgvector/pgvector:pg16 image)")
    return 0


def _db_start(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        print(f"DATABASE_URL is set ({settings.safe_url}); the embedded server is not used.")
        return 0
    url = embedded.start(settings.data_dir)
    print(f"embedded PostgreSQL {embedded.PG_MAJOR} running: {url}")
    return 0


def _db_pgbouncer(settings: Settings, args: argparse.Namespace) -> int:
    from kit.devservers import pgbouncer

    return _companion(settings, "pgbouncer", args.pgbouncer_command, pgbouncer.start_pgbouncer,
                      pgbouncer.stop_pgbouncer, (
                          "runs PgBouncer in front of the embedded server only; for your own server, configure "
                          "PgBouncer as its documentation says.",
                          "pgbouncer stopped", "pgbouncer was not running",
                          f"PgBouncer (pool_mode = transaction) running in front of the embedded PostgreSQL in "
                          f"{pgbouncer.pgbouncer_dir(settings.data_dir)}; use it with DATABASE_POOLER=pgbouncer:"))


def _db_replica(settings: Settings, args: argparse.Namespace) -> int:
    from kit.devservers import replica

    return _companion(settings, "replica", args.replica_command, replica.start_replica, replica.stop_replica, (
        "makes a replica of the embedded server only; for your own server, set one up as PostgreSQL documents.",
        "replica stopped", "the replica was not running",
        f"streaming replica of the embedded PostgreSQL {embedded.PG_MAJOR} running in "
        f"{replica.replica_dir(settings.data_dir)}:"))


def _db_citus(settings: Settings, args: argparse.Namespace) -> int:
    from kit.devservers import citus

    if args.citus_command == "status":
        for node, running in citus.citus_status(settings.data_dir):
            print(f"{node}: {'running' if running else 'stopped'} ({citus.cluster_dir(settings.data_dir) / node})")
        return 0
    return _companion(settings, "citus", args.citus_command,
                      lambda data_dir: citus.start_citus(data_dir, args.source), citus.stop_citus, (
                          "runs a development Citus cluster on the embedded server's binaries only; to use an "
                          "existing Citus, point DATABASE_URL at its coordinator.",
                          "citus stopped", "citus was not running",
                          f"Citus: a coordinator and two workers running in {citus.cluster_dir(settings.data_dir)}; "
                          "the coordinator as the application role (use it as DATABASE_URL):"))


def _db_distribute(settings: Settings, args: argparse.Namespace) -> int:
    from kit.db import database
    from kit.distribute import distribute
    from kit.models import project_models

    database.configure_owner(settings)  # Citus places a table for its owner only
    planned = distribute(database, project_models(), dry_run=args.dry_run)
    return 1 if planned.blockers else 0


def _companion(settings: Settings, name: str, action: str, start: Callable[[Path], str],
               stop: Callable[[Path], bool], said: tuple[str, str, str, str]) -> int:
    """`kit db NAME start|stop` for a development companion of the embedded server; start refused with DATABASE_URL.

    Stopping is not: what runs in the data directory is stopped whatever DATABASE_URL names (after
    `export DATABASE_URL=<the companion's URL>`, say).
    """
    elsewhere, stopped, not_running, started = said
    if action == "stop":
        print(stopped if stop(settings.data_dir) else not_running)
        return 0
    if settings.database_url:
        print(f"DATABASE_URL is set ({settings.safe_url}); `kit db {name}` {elsewhere}", file=sys.stderr)
        return 1
    url = start(settings.data_dir)
    print(started)
    print(url)  # the last line: what scripts read
    return 0


def _db_stop(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url:
        print(f"DATABASE_URL is set ({settings.safe_url}); there is no embedded server to stop.")
        return 0
    stopped = embedded.stop(settings.data_dir)
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


def _db_psql(settings: Settings, args: argparse.Namespace) -> int:
    from kit.db import resolve_url

    # The password goes to psql by environment (PGPASSWORD), never on its command line, which every
    # local user can read in `ps`; the rest of the URL goes as a key=value conninfo.
    params = psycopg2.extensions.parse_dsn(resolve_url(settings, OWNER if args.owner else APP))
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    conninfo = " ".join(f"{key}={_conninfo_value(value)}" for key, value in params.items())
    psql = str(embedded.psql_path())
    sys.stdout.flush()
    os.execve(psql, [psql, conninfo, *args.psql_args], env)
    return 0  # not reached


def _conninfo_value(value: str) -> str:
    """A value quoted for a libpq key=value conninfo string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _migrate_apply(settings: Settings, args: argparse.Namespace) -> int:
    from kit import migrate
    from kit.db import database

    database.configure_owner(settings)

    done = migrate.apply(database, args.dir)
    print(f"{len(done)} migration(s) applied" if done else "nothing to migrate: the database is up to date")
    return 0


def _migrate_status(settings: Settings, args: argparse.Namespace) -> int:
    from kit import migrate
    from kit.db import database

    database.configure_owner(settings)

    states = migrate.status(database, args.dir)
    if not states:
        print(f"no migrations in {args.dir}")
        return 1
    for item in states:
        print(f"  {item.state:<10} {item.name:<40} {item.detail}".rstrip())
    unsettled = [s for s in states if s.state in ("pending", "edited", "missing")]
    if unsettled:
        kinds = sorted({s.state for s in unsettled})
        print(f"status: {len(unsettled)} migration(s) {' or '.join(kinds)}")
        return 1
    return 0


def _migrate_verify(settings: Settings, args: argparse.Namespace) -> int:
    from kit import migrate
    from kit.db import database

    database.configure_owner(settings)

    problems = migrate.verify(database, args.dir)
    for problem in problems:
        print(f"  - {problem}")
    if problems:
        print(f"verify: {len(problems)} problem(s)")
        return 1
    print("verify: migrations, history and live schema agree")
    return 0


def _migrate_lint(settings: Settings, args: argparse.Namespace) -> int:
    from kit.db import database
    from kit.migrate.lint import lint

    database.configure_owner(settings)
    with database.connection_context():
        report = lint(database, args.dir, args.names)
    for name, step in report.unchecked:
        print(f"  {name}: not checked: a Python step ({step})")
    for finding in report.findings:
        print(f"  - {finding.describe()}")
    unchecked = f"; {len(report.unchecked)} Python step(s) not checked (listed above)" if report.unchecked else ""
    if report.findings:
        print(f"lint: {len(report.findings)} finding(s) in {len(report.names)} migration(s){unchecked}")
        return 1
    print(f"lint: {len(report.names)} migration(s) checked, nothing that stalls traffic on a table with rows"
          f"{unchecked}")
    return 0


def _migrate_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from kit import migrate
    from kit.db import database

    database.configure_owner(settings)

    undone = migrate.rollback(database, args.dir, count=args.count)
    print(f"{len(undone)} migration(s) rolled back" if undone else "nothing to roll back")
    return 0


def _migrate_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from kit import migrate
    from kit.db import database

    database.configure_owner(settings)

    print(migrate.resolve(database, args.dir, args.name, applied=args.applied))
    return 0


def _init(settings: Settings | None, args: argparse.Namespace) -> int:
    from kit import new_project

    written = new_project.create(args.directory)
    root = Path(args.directory).absolute()
    print(f"created a kit project in {root} ({len(written)} files)")
    print(f"next: cd {args.directory} && pw_migrate migrate && python -m kit.seed fixtures/dev.yaml")
    return 0


def _run(settings: Settings | None, args: argparse.Namespace) -> int:
    import runpy

    from kit.project import find_root

    script = Path(args.script).absolute()
    if not script.is_file():
        raise KitError(f"{args.script}: no such script")
    root = find_root(script.parent) or find_root()
    sys.argv = [str(script), *args.script_args]
    sys.path[:0] = [str(script.parent), *([str(root)] if root else [])]  # the script's folder, then the project's
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _maintain(settings: Settings, args: argparse.Namespace) -> int:
    from kit.db import database
    from kit.maintain import maintain
    from kit.models import project_models

    retain = dict(args.retain or [])
    if len(retain) < len(args.retain or []):
        twice = next(t for t, _ in args.retain if [r[0] for r in args.retain].count(t) > 1)
        print(f"kit: error: --retain names {twice} more than once; give each table one retention; nothing was done",
              file=sys.stderr)
        return EXIT_CONFIG
    database.configure_owner(settings)  # upkeep is DDL: the owner's connection
    options = {"retain": retain, "drop": args.drop_retired}
    if args.min_rows is not None:
        options["min_rows"] = args.min_rows
    maintain(database, project_models(), **options)
    return 0


def _retention(text: str) -> tuple[str, int]:
    table, _, months = text.partition("=")
    if not table or not months.isdigit() or not 1 <= int(months) <= MAX_RETAIN_MONTHS:
        raise argparse.ArgumentTypeError(f"must be TABLE=MONTHS (MONTHS a whole number from 1 to "
                                         f"{MAX_RETAIN_MONTHS:,}), got {text[:60]!r}")
    return table, int(months)


def _rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be a whole number of rows, 2 or more, got {text!r}")
    return value


def _models(settings: Settings | None, args: argparse.Namespace) -> int:
    from kit.models import project_models
    from kit.reference import markdown

    print(markdown(project_models()), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `kit` command."""
    parser = argparse.ArgumentParser(prog="kit", description="The kit's database tools.")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{init,run,models,db,migrate,maintain}")
    init = groups.add_parser("init", help="create a new project: pyproject.toml, migrations, seeds, models.py")
    init.add_argument("directory", nargs="?", default=".", type=Path, help="where (default: here)")
    init.set_defaults(action=_init, needs_settings=False)  # a new project needs no database
    run = groups.add_parser("run", help="run a Python script with its project's root importable (models.py)")
    run.add_argument("script", help="the script, anywhere inside the project (scripts/report.py)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    run.set_defaults(action=_run, needs_settings=False)
    groups.add_parser("models", help="print the reference of the models' columns (Markdown)"
                      ).set_defaults(action=_models, needs_settings=False)
    upkeep = groups.add_parser("maintain", help="upkeep, safe from cron: partitions, tenant vector indexes")
    upkeep.add_argument("--min-rows", type=_rows, default=None, metavar="N",
                        help="rows from which a tenant gets its own index (default: the search planner's threshold)")
    upkeep.add_argument("--retain", type=_retention, action="append", metavar="TABLE=MONTHS",
                        help="keep this many months of a partitioned table; older partitions are detached")
    upkeep.add_argument("--drop-retired", action="store_true",
                        help="drop the partitions --retain retires instead of detaching them")
    upkeep.set_defaults(action=_maintain)
    db = groups.add_parser("db", help="the database in use: DATABASE_URL or the embedded server")
    commands = db.add_subparsers(dest="command", required=True,
                                 metavar="{url,status,start,stop,psql,roles,check,replica,pgbouncer,citus,distribute}")
    actions: dict[str, tuple[str, Callable[[Settings, argparse.Namespace], int]]] = {
        "url": ("print the URL in use (starts the embedded server if needed)", _db_url),
        "status": ("show which server is used and whether it is up", _db_status),
        "start": ("start the embedded server (kept running between runs)", _db_start),
        "stop": ("stop the embedded server", _db_stop),
        "psql": ("open psql on the database in use", _db_psql),
        "roles": ("make the kit's roles (kit_owner, kit_app, kit_auth) with DATABASE_ADMIN_URL", _db_roles),
        "check": ("check least privilege: the run-time role, row-level security, the pooler", _db_check),
    }
    for name, (help_text, action) in actions.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(action=action)
        if name == "psql":
            sub.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed on to psql")
            sub.add_argument("--owner", action="store_true", help="as the owner (DATABASE_OWNER_URL)")
        if name == "url":
            which = sub.add_mutually_exclusive_group()
            which.add_argument("--owner", action="store_true", help="the owner's URL (DATABASE_OWNER_URL)")
            which.add_argument("--better-auth", action="store_true", help="the URL Better Auth uses (role kit_auth)")
            sub.add_argument("--show-password", action="store_true", help="print the password (masked otherwise)")
    replica = commands.add_parser("replica", help="a streaming replica of the embedded server, for development")
    replica.add_argument("replica_command", choices=("start", "stop"),
                         help="start (prints its URL on the last line) or stop it")
    replica.set_defaults(action=_db_replica)
    bouncer = commands.add_parser("pgbouncer", help="PgBouncer in transaction mode in front of the embedded server")
    bouncer.add_argument("pgbouncer_command", choices=("start", "stop"),
                         help="start (prints its URL on the last line) or stop it")
    bouncer.set_defaults(action=_db_pgbouncer)
    spread = commands.add_parser("distribute", help="place the tables on Citus as the models say (docs/scaling.md); "
                                                    "exit 1 while a table cannot be placed")
    spread.add_argument("--dry-run", action="store_true", help="print the plan (on any server), change nothing")
    spread.set_defaults(action=_db_distribute)
    cluster = commands.add_parser("citus", help="a Citus cluster (coordinator, two workers) for development")
    cluster.add_argument("citus_command", choices=("start", "stop", "status"),
                         help="start (building Citus once; prints the coordinator's URL last), stop, or status")
    cluster.add_argument("--source", type=Path, default=None,
                         help="a Citus source tarball to build from (default: KIT_CITUS_SOURCE)")
    cluster.set_defaults(action=_db_citus)
    mig = groups.add_parser("migrate", help="apply pending migrations under a lock (and status, verify, ...)")
    mig.add_argument("--dir", type=Path, default=None, help="migrations directory (default: the project's)")
    mig.set_defaults(action=_migrate_apply)
    steps = mig.add_subparsers(dest="command", metavar="{status,verify,lint,rollback,resolve}")
    where = argparse.ArgumentParser(add_help=False)  # --dir also after the step: `kit migrate status --dir X`
    where.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="migrations directory (./migrations)")
    steps.add_parser("status", parents=[where], help="applied, pending, edited, missing"
                     ).set_defaults(action=_migrate_status)
    steps.add_parser("verify", parents=[where],
                     help="exit 1 on edited, missing, out-of-order migrations or schema drift",
                     ).set_defaults(action=_migrate_verify)
    lint = steps.add_parser("lint", parents=[where],
                            help="exit 1 when a migration (default: the pending ones) would stall traffic")
    lint.add_argument("names", nargs="*", metavar="NAME", help="migrations to check (or the start of their names)")
    lint.set_defaults(action=_migrate_lint)
    back = steps.add_parser("rollback", parents=[where], help="roll back the latest migration(s)")
    back.add_argument("--count", type=int, default=1)
    back.set_defaults(action=_migrate_rollback)
    resolve = steps.add_parser("resolve", parents=[where],
                               help="reconcile history after a migration was applied or undone by hand")
    resolve.add_argument("name", help="the migration's name, or the start of it when only one begins so (005)")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--applied", action="store_true", help="record it as applied (checked against the schema)")
    how.add_argument("--rolled-back", action="store_true", help="remove its record")
    resolve.set_defaults(action=_migrate_resolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `kit` command; errors are one sentence on stderr and a non-zero exit."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "action", None) is not _db_psql:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.psql_args = [*extra, *args.psql_args]
    try:
        settings = load_settings() if getattr(args, "needs_settings", True) else None
        if getattr(args, "dir", False) is None:  # read here, so a bad [tool.kit] is one sentence, not a traceback
            from kit.migrate.loader import default_directory

            args.dir = default_directory()
        code = args.action(settings, args)
        sys.stdout.flush()  # here, where a reader gone away is caught below, not at the interpreter's exit
        return code
    except ConfigError as exc:
        print(f"kit: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KitError as exc:
        print(f"kit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`kit db status | head -3`): what it wanted was written
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's last flush has nowhere to fail
        return 0


if __name__ == "__main__":
    sys.exit(main())
