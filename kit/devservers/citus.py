"""A Citus cluster for development and tests, on the embedded server's binaries: `kit db citus start|stop|status`.

Citus ships as source, not as a package any registry here has, so `start` builds it once from a
source tarball it is given (`--source`, or KIT_CITUS_SOURCE; CI uses `../shared/citus/`), against the
embedded PostgreSQL's own `pg_config`, and keeps the build outside the project
(`$XDG_CACHE_HOME/kit/citus/<tarball digest>-pg16-<installation digest>`): a second start does not
build again. The build is copied into the embedded server's installation (its `citus.so` and
extension scripts), then three nodes are made in `<data dir>/citus/`: a coordinator and two
workers, each a PostgreSQL of its own on a Unix socket in its directory (no TCP), with
`shared_preload_libraries = 'citus'`, the `kit` database, pgvector and citus in it, and the kit's
roles (`kit.roles.bootstrap`) on every node. The coordinator knows the workers
(`citus_set_coordinator_host`, `citus_add_node`). `start` prints the coordinator's URL as the
application role; use it as DATABASE_URL.

Without a tarball, a compiler or make, `start` says in one sentence what is missing, and that an
existing Citus (a managed one, say) is used by pointing DATABASE_URL at its coordinator instead.
Only for development: a production cluster is set up as Citus documents.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2

from kit import embedded
from kit.errors import KitError
from kit.roles import APP, OWNER, bootstrap

CITUS_DIR = "citus"
NODES = (("coordinator", 9700), ("worker-1", 9701), ("worker-2", 9702))
SOURCE_VARIABLE = "KIT_CITUS_SOURCE"
BUILD_TIMEOUT_S = 1800  # configure and make on a 2-core machine take about a minute
READY_TIMEOUT_S = 60.0
PREPARED = "kit-prepared"  # a node's marker: its kit database, extensions and roles are made
ELSEWHERE = "or point DATABASE_URL at an existing Citus coordinator instead"


class CitusError(KitError):
    """The development Citus cluster could not be built, started or stopped; one sentence says why."""


def cluster_dir(data_dir: Path) -> Path:
    """Where the cluster beside the embedded server in `data_dir` keeps its nodes."""
    return Path(data_dir).absolute() / CITUS_DIR


def node_url(data_dir: Path, node: str = "coordinator", role: str = APP, database: str = embedded.DATABASE_NAME) -> str:
    """The URL of one node's database as `role`."""
    port = dict(NODES)[node]
    return embedded.url(cluster_dir(data_dir) / node, port, database, role)


def find_source(given: Path | None = None) -> Path:
    """The Citus source tarball to build from: `given`, else KIT_CITUS_SOURCE; CitusError when there is none."""
    path = given or (Path(os.environ[SOURCE_VARIABLE]) if os.environ.get(SOURCE_VARIABLE) else None)
    if path is None:
        raise CitusError(f"no Citus source to build: give a Citus source tarball (citus-13.2.2.tar.gz from "
                         f"github.com/citusdata/citus) with --source or {SOURCE_VARIABLE}, {ELSEWHERE}")
    if not Path(path).is_file():
        raise CitusError(f"the Citus source {path} is not a file: give a Citus source tarball with --source or "
                         f"{SOURCE_VARIABLE}, {ELSEWHERE}")
    return Path(path).absolute()


def _installation() -> tuple[Path, Path, Path]:
    """The embedded server's `pg_config`, library directory and extension directory."""
    bin_path = embedded._pgserver().utils.POSTGRES_VERSIONS[embedded.PG_MAJOR]
    pg_config = bin_path / "pg_config"
    libdir = Path(subprocess.check_output([str(pg_config), "--pkglibdir"], text=True).strip())
    sharedir = Path(subprocess.check_output([str(pg_config), "--sharedir"], text=True).strip())
    return pg_config, libdir, sharedir / "extension"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kit" / CITUS_DIR


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder or starter at a time (another process waits for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(source: Path) -> Path:
    """Build Citus from `source` once for the embedded server's PostgreSQL; the staged installation's root."""
    pg_config, _, _ = _installation()
    key = f"{_digest(source)}-pg{embedded.PG_MAJOR}-{hashlib.sha256(str(pg_config).encode()).hexdigest()[:8]}"
    target = _cache_root() / key
    stage = target / "stage"
    with _locked(target.with_suffix(".lock")):
        if (target / "built").exists():
            return stage
        missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
        if missing:
            raise CitusError(f"building Citus needs {' and '.join(missing)} (apt-get install build-essential), "
                             f"{ELSEWHERE}")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        log = target / "build.log"
        with tarfile.open(source) as archive:
            archive.extractall(target / "src", filter="data")
        tops = [p for p in (target / "src").iterdir() if (p / "configure").exists()]
        if len(tops) != 1:
            raise CitusError(f"{source} does not hold one Citus source tree (a directory with configure), {ELSEWHERE}")
        steps = [
            ["./configure", f"PG_CONFIG={pg_config}", "--without-libcurl", "--without-lz4", "--without-zstd"],
            ["make", f"-j{os.cpu_count() or 2}"],
            ["make", "install", f"DESTDIR={stage}"],
        ]
        with open(log, "w") as out:
            for step in steps:
                try:
                    subprocess.run(step, cwd=tops[0], stdout=out, stderr=subprocess.STDOUT, check=True,
                                   timeout=BUILD_TIMEOUT_S)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    raise CitusError(f"building Citus from {source} failed at `{' '.join(step[:2])}`; see {log}, "
                                     f"{ELSEWHERE}") from None
        shutil.rmtree(target / "src", ignore_errors=True)
        (target / "built").write_text(str(source) + "\n")
    return stage


def install(stage: Path) -> None:
    """Copy a staged build into the embedded server's installation (only what differs)."""
    _, libdir, extdir = _installation()
    for real in (libdir, extdir):
        staged = stage / real.relative_to(real.anchor)
        for file in staged.rglob("*"):
            if file.is_file():
                into = real / file.relative_to(staged)
                if not into.exists() or not filecmp.cmp(file, into, shallow=False):
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, into)


def _exec(command: str, args: tuple[str, ...], failure: str) -> None:
    pgserver = embedded._pgserver()
    user = "pgserver" if os.geteuid() == 0 else None
    if user:
        pgserver.utils.ensure_user_exists(user)
    try:
        pgserver.pgexec.pgexec(command, args, bin_path=pgserver.utils.POSTGRES_VERSIONS[embedded.PG_MAJOR],
                               user=user)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise CitusError(f"{failure} ({detail[-1] if detail else f'exit {exc.returncode}'})") from None


def _make_node(where: Path, port: int) -> None:
    """initdb a node (trust on its socket only, as the embedded server) and write its settings."""
    where.mkdir(parents=True, mode=0o700, exist_ok=True)
    if os.geteuid() == 0:  # the nodes run as the embedded server's own user, as it does (never as root)
        embedded._pgserver().utils.ensure_prefix_permissions(where.parent)  # its user may reach the directory
        shutil.chown(where, "pgserver")
        shutil.chown(where.parent, "pgserver")
    _exec("initdb", ("--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", embedded.USER, "-D", str(where)),
          f"could not make the Citus node in {where}")
    with open(where / "postgresql.auto.conf", "a") as conf:
        conf.write(f"\n# kit: a development Citus node\nshared_preload_libraries = 'citus'\n"
                   f"unix_socket_directories = '{where}'\nunix_socket_permissions = 0700\nlisten_addresses = ''\n"
                   f"port = {port}\nmax_prepared_transactions = 100\nwal_level = logical\n")


def _connect(url: str, where: Path) -> psycopg2.extensions.connection:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            conn = psycopg2.connect(url, connect_timeout=5, application_name="kit-citus")
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise CitusError(f"the Citus node in {where} did not accept connections within "
                                 f"{READY_TIMEOUT_S:g}s; see {where / 'log'}") from None
            time.sleep(0.2)


def _run_sql(url: str, where: Path, *statements: str) -> list[tuple]:
    conn = _connect(url, where)
    try:
        rows: list[tuple] = []
        with conn.cursor() as cur:
            for statement in statements:
                try:
                    cur.execute(statement)
                except psycopg2.Error as exc:
                    first = (exc.pgerror or str(exc)).strip().splitlines()[0]
                    raise CitusError(f"the Citus node in {where} refused `{statement[:60]}`: {first}") from None
                rows = cur.fetchall() if cur.description else []
        return rows
    finally:
        conn.close()


def start_citus(data_dir: Path, source: Path | None = None) -> str:
    """Start (building and making it first if needed) the development Citus cluster; the coordinator's URL."""
    root = cluster_dir(data_dir)
    with _locked(root.parent / ".citus.lock"):
        if source is not None or os.environ.get(SOURCE_VARIABLE) or not _installed():
            install(build(find_source(source)))  # built once per tarball (cached); installed where it differs
        for name, port in NODES:
            where = root / name
            if not (where / "PG_VERSION").exists():
                _make_node(where, port)
            if not (where / "postmaster.pid").exists():
                _exec("pg_ctl", ("-w", "-D", str(where), "-l", str(where / "log"), "start"),
                      f"the Citus node in {where} did not start; see {where / 'log'}")
        for name, _ in NODES:  # workers first: the roles exist there before the coordinator's DDL names them
            _prepare_node(data_dir, name)
        coordinator = ("coordinator", NODES[0][1])
        admin = node_url(data_dir, "coordinator", role=embedded.USER)
        _run_sql(admin, root / coordinator[0],
                 f"SELECT citus_set_coordinator_host('{root / 'coordinator'}', {coordinator[1]})",
                 *(f"SELECT citus_add_node('{root / name}', {port}) WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node "
                   f"WHERE nodename = '{root / name}' AND nodeport = {port})" for name, port in NODES[1:]))
    return node_url(data_dir)


def _installed() -> bool:
    _, libdir, extdir = _installation()
    return (libdir / "citus.so").exists() and (extdir / "citus.control").exists()


def _prepare_node(data_dir: Path, name: str) -> None:
    """The kit database on a new node, with citus and pgvector, the kit's roles and its owner (once per node).

    Once a worker is in the cluster, Citus takes DDL on it only from the coordinator: a node is prepared
    before it joins, and marked so.
    """
    where = cluster_dir(data_dir) / name
    if (where / PREPARED).exists():
        return
    admin = node_url(data_dir, name, role=embedded.USER, database=embedded.ADMIN_DATABASE)
    if not _run_sql(admin, where, f"SELECT 1 FROM pg_database WHERE datname = '{embedded.DATABASE_NAME}'"):
        _run_sql(admin, where, f'CREATE DATABASE "{embedded.DATABASE_NAME}"')
    kit_admin = node_url(data_dir, name, role=embedded.USER)
    _run_sql(kit_admin, where, "CREATE EXTENSION IF NOT EXISTS citus", "CREATE EXTENSION IF NOT EXISTS vector")
    bootstrap(kit_admin)
    # Migration 001 (CREATE EXTENSION IF NOT EXISTS vector) runs as the owner; on Citus that marks the
    # extension distributed on every node, which only its owner may (docs/scaling.md).
    _run_sql(kit_admin, where, f"UPDATE pg_extension SET extowner = '{OWNER}'::regrole WHERE extname = 'vector'")
    (where / PREPARED).write_text("the kit database, citus, pgvector and the kit's roles are made\n")


def stop_citus(data_dir: Path) -> bool:
    """Stop the cluster's nodes; False if none was running."""
    stopped = False
    for name, _ in reversed(NODES):
        where = cluster_dir(data_dir) / name
        if (where / "postmaster.pid").exists():
            _exec("pg_ctl", ("-w", "-D", str(where), "-m", "fast", "stop"), f"could not stop the Citus node in {where}")
            stopped = True
    return stopped


def citus_status(data_dir: Path) -> list[tuple[str, bool]]:
    """Each node's name and whether it runs."""
    return [(name, (cluster_dir(data_dir) / name / "postmaster.pid").exists()) for name, _ in NODES]


__all__ = ["CitusError", "citus_status", "cluster_dir", "find_source", "node_url", "start_citus", "stop_citus"]

