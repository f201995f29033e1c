"""`Database`, configured from the environment on first use, and `database`, the one every model uses.

It connects as the run-time role (DATABASE_URL) or, in the commands that need it, as the owner
(DATABASE_OWNER_URL); inside `kit.all_tenants()` a context's connections come from a small second
pool on the door's URL (DATABASE_DOOR_URL, `kit_door`); reads are routed to replicas (`kit.db.reads`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import psycopg2
import psycopg2.extensions
from peewee import OperationalError, ProgrammingError, __exception_wrapper__  # type: ignore[attr-defined]  # peewee: not in its stubs

from kit import embedded
from kit.config import Settings, check_database_url, load_settings, mask_password
from kit.db.contract import cannot_connect, pool_exhausted
from kit.db.forks import silence
from kit.db.outcomes import sqlstate
from kit.db.pooled import KitState, PooledDatabase, ThreadState
from kit.db.reads import ReadRouting
from kit.errors import (
    ConfigError,
    KitError,
    NotMigrated,
    PoolExhausted,
    PoolTooLarge,
    describe,
)
from kit.pool import ConnectionPool, Hooks
from kit.project import find_root
from kit.roles import APP, DOOR, OWNER
from kit.routing import Replica, Router
from kit.telemetry import watch as telemetry_watch
from kit.telemetry.watch import Target
from kit.tenancy import crossing_tenants, on_leaving_all_tenants

APPLICATION_NAME = "kit"
CONNECT_TIMEOUT_S = 10
DOOR_POOL_MAX = 4  # owner connections `all_tenants()` may hold at once: a door for rare work, not a second pool
REPLICA_CONNECT_TIMEOUT_S = 3  # a replica that does not answer is skipped soon, and the primary serves


def resolve_url(settings: Settings, role: str = APP) -> str:
    """The URL in use for `role` (APP, OWNER or DOOR): from the settings, else the embedded server's (started then).

    The door without DATABASE_DOOR_URL on a server of one's own is the owner's URL, as before the door had a
    role of its own (`kit db check` says so); on the embedded server it is always `kit_door`.
    """
    if role == DOOR:
        given = settings.door_url or (settings.owner_url if settings.database_url else None)
    else:
        given = settings.owner_url if role == OWNER else settings.database_url
    return given or embedded.start(settings.data_dir, role)



def door_for(url: str | None, door_url: str | None, settings: Settings) -> str:
    """The door's URL (`all_tenants()`) of a pool on `url`: `door_url`, else the settings' (`resolve_url`).

    `url` is the URL a pool was given in code (None: it came from the settings too). A door from the
    settings that reads another database than that URL is refused in one sentence: `all_tenants()`
    would read and write another database's rows (the environment's, or the embedded server's) while
    the pool reads this one.
    """
    if door_url:
        return door_url
    door = resolve_url(settings, DOOR)
    if url is not None and _database_of(door) != _database_of(url):
        raise ConfigError(f"all_tenants() has no door to database {_database_of(url)!r}: the pool was given its URL "
                          f"in code, and the door's from the environment reads {_database_of(door)!r}; pass "
                          "door_url= (the kit_door role's URL of that database) or set DATABASE_DOOR_URL; "
                          "nothing was sent")
    return door


def _database_of(url: str) -> str:
    return str(psycopg2.extensions.parse_dsn(url).get("dbname", ""))


class Database(ReadRouting):
    """The kit's pooled PostgreSQL database, configured from the environment on first use, reading from replicas.

    It connects as the run-time role (DATABASE_URL), or as the owner (DATABASE_OWNER_URL) in the
    commands that need it (`configure(owner=True)`: migrations, seeds, `kit maintain`). Inside
    `kit.all_tenants()` a context's connections come from a second, small pool on the door's URL:
    the connection state and the pool a context uses are chosen by that context, so the rest of the
    pooled contract (transactions, re-sends, `SessionLost`) holds there unchanged.
    """

    def __init__(self) -> None:
        self._door_connections: ConnectionPool | None = None
        self._given_url: str | None = None
        self._door_state = ThreadState()
        self._door_url: str | None = None
        self.owner = False  # True: the pool itself connects as the owner (migrations, seeds, upkeep)
        super().__init__(None)
        self._configure_lock = threading.Lock()
        self.settings: Settings | None = None
        self._init_routing()
        on_leaving_all_tenants(self._release_door)

    def configure(self, url: str | None = None, settings: Settings | None = None,
                  replicas: Sequence[str] | None = None, *, owner: bool = False, door_url: str | None = None,
                  owner_url: str | None = None) -> str:
        """Point the pool at `url` (default: from the settings), reading from `replicas` (default: the settings').

        `owner`: connect as the owner role (`url` is then the owner's); `door_url`: the URL `all_tenants()`
        uses (default: the settings'); `owner_url`: the same, for code written before the door had a role.
        """
        with self._configure_lock:
            self.owner = owner
            return self._configure(url, settings, replicas, door_url or owner_url)

    def configure_owner(self, settings: Settings | None = None) -> None:
        """Connect as the owner (DATABASE_OWNER_URL), as migrations, seeds and upkeep do; a configured pool is kept.

        Kept as it is when already configured: a test or an application that pointed the pool at a
        database on purpose (`configure(url, owner=True)`) is not sent back to the environment's.
        """
        if self.deferred:
            self.configure(settings=settings, owner=True)

    def _configure(self, url: str | None, settings: Settings | None, replicas: Sequence[str] | None = None,
                   door_url: str | None = None) -> str:
        settings = settings or load_settings()
        role = OWNER if self.owner else APP
        self._given_url = url if url and not self.owner else None  # the door then must read the same database
        url = check_database_url(url, "url") if url else resolve_url(settings, role)
        self._door_url = url if self.owner else (check_database_url(door_url, "door_url") if door_url else None)
        if self._door_connections is not None:
            self._door_connections.close_all()
            self._door_connections = None
        self.connect_params: dict[str, Any] = {}
        self.init(
            mask_password(url),  # what peewee and pw_migrate print; the real URL goes to the driver as dsn
            dsn=url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            max_idle=settings.pool_idle_timeout_ms / 1000,
            timeout=settings.pool_timeout_ms / 1000,
            leak_after=settings.pool_leak_threshold_ms / 1000 or None,
            pooler=settings.pooler,
            # the application's statements are bounded; the owner's commands (DDL, loads) bound their own waits
            statement_timeout=None if self.owner else (settings.statement_timeout_ms / 1000 or None),
            **_driver_params(url, CONNECT_TIMEOUT_S),
        )
        self.settings = settings
        telemetry_watch.configure(slow_after=settings.slow_query_ms / 1000 or None, tags=settings.query_tags)
        urls = settings.replica_urls if replicas is None else [check_database_url(r, "replica URL") for r in replicas]
        self._set_replicas(urls, settings)
        return url

    def _set_replicas(self, urls: Sequence[str], settings: Settings) -> None:
        """Read from these replicas from now on (none: the primary serves every read)."""
        old, self._router = self._router, None
        for replica in old.replicas if old else ():
            replica.database.close_all()
        if urls:
            made = [Replica(mask_password(url), PooledDatabase(
                mask_password(url), dsn=url, min_size=settings.pool_min, max_size=settings.pool_max,
                max_idle=settings.pool_idle_timeout_ms / 1000,
                timeout=None,  # a full replica pool sends the read to the primary rather than wait
                pooler=settings.pooler, statement_timeout=settings.statement_timeout_ms / 1000 or None,
                role="replica", leak_after=settings.pool_leak_threshold_ms / 1000 or None,
                **_driver_params(url, REPLICA_CONNECT_TIMEOUT_S))) for url in urls]
            self._router = Router(made, settings.replica_max_lag_ms / 1000)

    # -- all_tenants(): the door's connections, for the contexts inside it -----------------------

    @property
    def _state(self) -> KitState:
        return self._door_state if self._crossing() else self._app_state

    @_state.setter
    def _state(self, value: KitState) -> None:
        self._app_state = value

    @property
    def _pool(self) -> ConnectionPool:
        return self._door_pool() if self._crossing() else self._app_pool

    @_pool.setter
    def _pool(self, value: ConnectionPool) -> None:
        self._app_pool = value

    def _own_pool(self) -> ConnectionPool:
        """The run-time role's pool, which `init()` configures (never the door's, even inside it)."""
        return self._app_pool

    def _crossing(self) -> bool:
        """True when this context's statements go to the door's pool (inside `all_tenants()`, run-time role)."""
        return not self.owner and crossing_tenants()

    def _door_pool(self) -> ConnectionPool:
        """The door's pool for `all_tenants()`, made on first use (DOOR_POOL_MAX connections at most)."""
        if self._door_connections is None:
            self._configured()
            with self._configure_lock:
                if self._door_connections is None:
                    url = door_for(self._given_url, self._door_url, self._loaded)
                    params = {**self.connect_params, "dsn": url}
                    pool = ConnectionPool(Hooks(open=lambda: self._open_as(params), close=self._close_raw,
                                                is_closed=self._is_closed, ping=self._ping,
                                                can_reuse=self._can_reuse, reset=self._reset_session))
                    pool.configure(min_size=0, max_size=DOOR_POOL_MAX, timeout=self._app_pool.timeout,
                                   max_idle=self._loaded.pool_idle_timeout_ms / 1000,
                                   leak_after=self._app_pool.leak_after)
                    pool.name = f"{self.target.pool_name()} (door, all_tenants)"
                    self._door_connections = pool
        return self._door_connections

    def _release_door(self) -> None:
        """Give this thread's door connection back when its context leaves `all_tenants()` (none is kept)."""
        state = self._door_state
        if self._door_connections is not None and not state.closed and not state.transactions \
                and not state.raw_transaction:
            conn = state.conn
            state.reset()
            self._door_connections.putconn(conn)

    def _open_as(self, params: dict[str, Any]) -> Any:
        """Open a driver connection with `params` (the door's), as peewee opens its own."""
        with __exception_wrapper__:
            conn = self._adapter.connect(self, **self._with_limit(params))
        conn.autocommit = True
        return conn

    @property
    def target(self) -> Target:
        """The server statements go to (configured from the environment first, on first use)."""
        self._configured()
        return self._own_target()

    @property
    def _loaded(self) -> Settings:
        """The settings in use (configured from the environment first, on first use)."""
        self._configured()
        return cast(Settings, self.settings)

    def _configured(self) -> None:
        """Configure from the environment if this is the first use."""
        if self.deferred:
            with self._configure_lock:
                if self.deferred:
                    self._configure(None, None)

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check out a connection, configuring the pool first if this is the first use."""
        self._configured()
        try:
            return super().connect(reuse_if_open)
        except PoolExhausted as exc:  # say it in the settings' own words
            raise pool_exhausted(exc, self.max_size, self._loaded.pool_timeout_ms) from None
        except PoolTooLarge as exc:
            raise ConfigError(f"DATABASE_POOL_MIN={self.min_size} is too large: {exc}") from None
        except KitError:
            raise
        except OperationalError as exc:
            if not self._state.closed:
                raise
            raise cannot_connect(self.database, exc) from exc

    def execute(self, query: Any, commit: Any = None, **context: Any) -> Any:
        """Run a peewee query (`ReadRouting.execute`); on a database never migrated, one sentence that says so."""
        try:
            return super().execute(query, commit, **context)
        except ProgrammingError as exc:
            raise self._not_migrated(exc) from exc

    def execute_sql(self, sql: str, params: Any = None, named_cursor: Any = None) -> Any:
        """Run one statement (`ReadRouting.execute_sql`); on a database never migrated, one sentence that says so."""
        try:
            return super().execute_sql(sql, params, named_cursor)
        except ProgrammingError as exc:
            raise self._not_migrated(exc) from exc

    def _not_migrated(self, exc: ProgrammingError) -> Exception:
        """`NotMigrated` for a missing table in a database with no migration history; else `exc` as it is."""
        if isinstance(exc, KitError) or sqlstate(exc) != "42P01" or self.in_transaction():
            return exc
        try:
            history = super().execute_sql("SELECT to_regclass('migratehistory') IS NOT NULL").fetchone()[0]
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return exc
        if history:
            return exc  # migrated: a table of the caller's that is missing, not the kit's
        where = ""
        if self.settings is not None and not self.settings.database_url and find_root() is None:
            where = (f"; no project was found from {Path.cwd()}, so this is the per-user embedded server in "
                     f"{self.settings.data_dir}: run from inside your project, or set DATABASE_URL")
        return NotMigrated(f"the database at {self.database} has none of the kit's tables ({describe(exc)}): it was "
                           f"never migrated; run `pw_migrate migrate`{where}")

    @property
    def url(self) -> str | None:
        """The URL the pool connects to, password included (None until configured)."""
        return self.connect_params.get("dsn") if not self.deferred else None

    @property
    def current_url(self) -> str | None:
        """The URL this context's statements go to: the door's inside `all_tenants()`, else `url`."""
        if self._crossing():
            self._configured()
            return door_for(self._given_url, self._door_url, self._loaded)
        return self.url

    # -- read routing ----------------------------------------------------------------------------

    # -- the replicas' connections go and come with the primary's -------------------------------

    def close(self) -> bool:
        """Return this thread's connections (the primary's and any replica's) to their pools."""
        closed = super().close()
        for replica in self._router.replicas if self._router else ():
            replica.database.close()
        return closed

    def close_all(self) -> None:
        """Close every connection, to the primary (the door's too) and to each replica."""
        super().close_all()
        if self._door_connections is not None:
            self._door_connections.close_all()
        for replica in self._router.replicas if self._router else ():
            replica.database.close_all()

    def dispose(self) -> None:
        """In a forked child: drop every inherited connection, the door's pool's too."""
        super().dispose()
        if self._door_connections is not None:
            silence(self._door_connections.forget())
            self._door_connections = None
        self._door_state = ThreadState()

    def pool_stats(self) -> dict[str, Any]:
        """The primary's counts, and with replicas `servers`: each one's state, lag, reads and pool counts.

        Before first use, `min` and `max` are the sizes the settings will configure (nothing is opened to say so).
        """
        stats = super().pool_stats()
        if self.deferred:
            settings = self.settings or load_settings()
            stats.update(min=settings.pool_min, max=settings.pool_max)
        if self._router is not None:
            stats["servers"] = [{"server": "primary", **super().pool_stats()},
                                *(replica.stats() for replica in self._router.replicas)]
        return stats


def _driver_params(url: str, connect_timeout: int) -> dict[str, Any]:
    """Driver parameters the URL leaves out: the kit's application_name and a connect timeout."""
    given = psycopg2.extensions.parse_dsn(url)
    params: dict[str, Any] = {}
    if "application_name" not in given:
        params["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        params["connect_timeout"] = connect_timeout
    return params


database = Database()
