"""A real PgBouncer in transaction mode in front of the embedded server: `kit db pgbouncer start|stop`.

For development and tests: the kit is meant to run unchanged behind a transaction-pooling PgBouncer
(`DATABASE_POOLER=pgbouncer`), and this is how its tests prove it. `start` writes
`<data dir>/pgbouncer/pgbouncer.ini` (`pool_mode = transaction`, every database passed through to the
embedded server's socket, logging in as its user), starts PgBouncer as a daemon listening on a unix
socket in that directory only (mode 0700: like the embedded server, only you and root can connect),
waits until it answers and returns its URL. When running as root PgBouncer runs as the embedded
server's system user, as the server does (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg2

from kit import embedded
from kit.errors import (
    KitError,
    describe,
)
from kit.roles import ADMIN, APP, AUTH, DOOR, OWNER

DIRECTORY = "pgbouncer"
PORT = 6432
START_S = 15.0
INSTALL = ("PgBouncer is not installed; install it with `apt-get install pgbouncer` (Debian, Ubuntu) or your "
           "system's package manager (`brew install pgbouncer` on macOS)")

CONFIG = """\
; written by `kit db pgbouncer start`: transaction pooling in front of the server
[databases]
* = host={socket_dir} port={server_port}

[pgbouncer]
pool_mode = transaction
listen_addr =
listen_port = {port}
unix_socket_dir = {directory}
unix_socket_mode = 0700
auth_type = trust
auth_file = {directory}/users.txt
max_client_conn = 4000
default_pool_size = 40
max_db_connections = 80
server_reset_query =
; after a server restart: try it again every second (default 15 s), and give up on a client waiting for a
; server connection after 10 s (default 120 s), so a client's wait is bounded as its statements are
server_login_retry = 1
query_wait_timeout = 10
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


class PgBouncerError(KitError):
    """PgBouncer could not be found, started or stopped; one sentence says why."""


def pgbouncer_dir(data_dir: Path) -> Path:
    """Where the development PgBouncer keeps its configuration, log, pid file and socket."""
    return Path(data_dir).absolute() / DIRECTORY


def url(data_dir: Path, database: str = embedded.DATABASE_NAME, role: str = APP) -> str:
    """The URL of the development PgBouncer for `database`, as `role` (each role has server connections of its own)."""
    user = embedded.USER if role == ADMIN else role
    return f"postgresql://{user}@/{database}?host={pgbouncer_dir(data_dir)}&port={PORT}"


def _binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (str(p) for p in (Path("/usr/sbin/pgbouncer"), Path("/usr/local/sbin/pgbouncer")) if p.exists()), None)
    if found is None:
        raise PgBouncerError(INSTALL)
    return found


def _running_pid(directory: Path) -> int | None:
    """The pid of the PgBouncer whose pid file is in `directory`, if that process is alive."""
    try:
        pid = int((directory / "pgbouncer.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_pgbouncer(data_dir: Path, server: tuple[Path, int] | None = None) -> str:
    """Start (or find running) PgBouncer in transaction mode in front of a server; return its URL.

    `server`: the socket directory and port of the server to pool (the Citus coordinator, say);
    default: the embedded server in `data_dir`, started if need be.
    """
    binary = _binary()
    if server is None:
        embedded.start(data_dir)
        info = embedded.status(data_dir)
        server = (Path(info.socket_dir or embedded.pgdata_dir(data_dir)), info.port or 5432)
    directory = pgbouncer_dir(data_dir)
    config = CONFIG.format(socket_dir=server[0], server_port=server[1], port=PORT, directory=directory)
    # trust: the socket (0700) is the boundary, as for the server; the names PgBouncer lets in, each as itself
    users = "".join(f'"{name}" ""\n' for name in (embedded.USER, OWNER, APP, DOOR, AUTH))
    if _running_pid(directory) is not None and not _configured_as(directory, config, users):
        stop_pgbouncer(data_dir)  # started with another configuration (an older kit's): it would not apply this one
    if _running_pid(directory) is None:
        directory.mkdir(mode=0o700, exist_ok=True)
        (directory / "pgbouncer.ini").write_text(config)
        (directory / "users.txt").write_text(users)
        command = [binary, "-d", "-q"]
        if os.geteuid() == 0:  # it refuses to run as root: as the server's own user
            owner = server[0].stat().st_uid
            shutil.chown(directory, owner)
            for path in directory.iterdir():
                shutil.chown(path, owner)
            import pwd

            command += ["-u", pwd.getpwuid(owner).pw_name]
        result = subprocess.run([*command, str(directory / "pgbouncer.ini")], capture_output=True, text=True,
                                timeout=START_S)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PgBouncerError(f"PgBouncer did not start ({detail[-1] if detail else f'exit {result.returncode}'}); "
                                 f"see {directory / 'pgbouncer.log'}")
    found = url(data_dir)
    deadline = time.monotonic() + START_S
    while True:
        try:
            psycopg2.connect(found, connect_timeout=2).close()
            return found
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                reason = describe(exc)
                raise PgBouncerError(f"PgBouncer in {directory} does not answer ({reason}); "
                                     f"see {directory / 'pgbouncer.log'}") from None
            time.sleep(0.1)


def _configured_as(directory: Path, config: str, users: str) -> bool:
    """Whether the running PgBouncer's files say what this kit would write."""
    try:
        return (directory / "pgbouncer.ini").read_text() == config and (directory / "users.txt").read_text() == users
    except OSError:
        return False


def stop_pgbouncer(data_dir: Path) -> bool:
    """Stop the development PgBouncer; False if it was not running."""
    directory = pgbouncer_dir(data_dir)
    pid = _running_pid(directory)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)  # immediate shutdown: clients are disconnected
    deadline = time.monotonic() + START_S
    while _running_pid(directory) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


__all__ = ["PgBouncerError", "pgbouncer_dir", "start_pgbouncer", "stop_pgbouncer", "url"]
