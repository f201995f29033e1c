"""Settings read from the environment, validated once, with errors that name the variable.

`VARIABLES` is the one list of the environment variables the kit reads, with their defaults and
meanings; `variables_markdown()` renders it for docs/configuration.md (checked by the suite), so the
table lives here and nowhere else. Defaults shown come from `Settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2.extensions

from kit.errors import ConfigError, KitError
from kit.masking import mask_password
from kit.project import load_project

__all__ = ["ConfigError", "KitError", "Settings", "check_database_url", "load_settings", "mask_password"]

URL_SCHEMES = ("postgresql", "postgres")
POOLERS = (None, "pgbouncer")


@dataclass(frozen=True)
class Settings:
    """The kit's validated settings."""

    database_url: str | None = None
    owner_url: str | None = None  # DATABASE_OWNER_URL (None: DATABASE_URL, or the embedded server's owner)
    door_url: str | None = None  # DATABASE_DOOR_URL (None: the owner's URL when one is set, or the embedded door)
    pool_min: int = 2
    pool_max: int = 10
    pool_idle_timeout_ms: int = 30_000
    pool_timeout_ms: int = 10_000
    data_dir: Path = Path(".kit")
    replica_urls: tuple[str, ...] = ()
    replica_max_lag_ms: int = 10_000
    pooler: str | None = None  # "pgbouncer": connections go through a transaction-pooling PgBouncer
    statement_timeout_ms: int = 30_000  # the application's statements (not the owner's commands); 0: none
    search_timeout_ms: int = 5_000  # a search (kit.vector.search, hybrid_search) outside a transaction; 0: none
    lock_timeout_ms: int = 2_000  # one lock wait of a schema change (kit.ddl); everyone queued behind waits as long
    lock_budget_ms: int = 60_000  # how long a schema change retries after lock timeouts
    pool_leak_threshold_ms: int = 0  # a connection checked out longer is reported as leaked; 0: off
    slow_query_ms: int = 0  # a statement that took longer is logged on `kit.slow`; 0: off
    query_tags: bool = False  # statements carry a sqlcommenter comment (route, tenant, traceparent)

    @property
    def safe_url(self) -> str | None:
        """The database URL with its password masked, for messages and logs."""
        return mask_password(self.database_url) if self.database_url else None


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the `Settings` field it sets (if one), its default and meaning."""

    name: str
    field: str | None
    default: str  # in words, where the field's own default does not say it all ("" to show the field's)
    meaning: str


VARIABLES = (
    Variable("DATABASE_URL", "database_url", "unset: the embedded server (as `kit_app`)",
             "the application's role: a `postgresql://` or `postgres://` URL; the unix-socket form "
             "`postgresql://user@/db?host=/path` works too"),
    Variable("DATABASE_OWNER_URL", "owner_url", "`DATABASE_URL`; both unset: the embedded server's `kit_owner`",
             "the owner's URL: `pw_migrate`, `kit migrate`, `python -m kit.seed` and `kit maintain` connect "
             "with it, never the application ([tenancy](tenancy.md))"),
    Variable("DATABASE_DOOR_URL", "door_url", "`DATABASE_OWNER_URL` (`kit db check` fails on it); both unset: "
             "the embedded server's `kit_door`",
             "the door's URL: `kit.all_tenants()` connects with it, as `kit_door` (reads and writes past "
             "row-level security, nothing more) ([tenancy](tenancy.md))"),
    Variable("DATABASE_ADMIN_URL", None, "unset",
             "a superuser's URL, read by `kit db roles` only, to make the kit's roles on a server of yours; "
             "`KIT_OWNER_PASSWORD`, `KIT_APP_PASSWORD`, `KIT_DOOR_PASSWORD`, `KIT_AUTH_PASSWORD` set their passwords"),
    Variable("DATABASE_POOL_MIN", "pool_min", "", "connections opened on first use and kept open"),
    Variable("DATABASE_POOL_MAX", "pool_max", "", "most connections open at once"),
    Variable("DATABASE_POOL_IDLE_TIMEOUT", "pool_idle_timeout_ms", "",
             "ms an idle connection above MIN is kept before it is closed; `0`: kept"),
    Variable("DATABASE_POOL_TIMEOUT", "pool_timeout_ms", "",
             "ms a caller waits for a free connection before `PoolExhausted`; `0`: waits without end"),
    Variable("DATABASE_REPLICA_URLS", "replica_urls", "unset",
             "comma-separated URLs of streaming replicas; reads go to them ([replicas](replicas.md)); each has "
             "its own pool, sized by MIN and MAX"),
    Variable("DATABASE_REPLICA_MAX_LAG", "replica_max_lag_ms", "",
             "ms a replica may lag behind the primary before reads skip it"),
    Variable("DATABASE_STATEMENT_TIMEOUT", "statement_timeout_ms", "",
             "ms any statement of the application may run before the server cancels it "
             "(`kit.StatementTimeout`, one sentence); `0`: no limit. The owner's commands are not cut by it "
             "([limits](limits.md))"),
    Variable("DATABASE_SEARCH_TIMEOUT", "search_timeout_ms", "",
             "ms a vector search (`nearest`, `search`) or `hybrid_search` outside a transaction may run; "
             "`0`: none ([limits](limits.md))"),
    Variable("DATABASE_LOCK_TIMEOUT", "lock_timeout_ms", "",
             "ms one lock wait of a schema change may last (`kit migrate`, `pw_migrate migrate`, "
             "`kit maintain`); then the attempt is rolled back whole and retried ([limits](limits.md))"),
    Variable("DATABASE_LOCK_BUDGET", "lock_budget_ms", "",
             "ms a schema change keeps retrying; then `kit.LockBusy`, naming the session that blocks it"),
    Variable("DATABASE_POOL_LEAK_THRESHOLD", "pool_leak_threshold_ms", "`0`: off",
             "ms a connection may stay checked out before it is reported once as a possible leak, with the stack "
             "that took it ([observability](observability.md))"),
    Variable("DATABASE_SLOW_QUERY_MS", "slow_query_ms", "`0`: off",
             "a statement that took this many ms or more is logged once on `kit.slow`, with its summary, server, "
             "tenant and route ([observability](observability.md))"),
    Variable("DATABASE_QUERY_TAGS", "query_tags", "`0`: off",
             "`1`: each statement carries a sqlcommenter comment with its route or job, tenant id and "
             "`traceparent`, shown in `pg_stat_activity` ([observability](observability.md))"),
    Variable("DATABASE_POOLER", "pooler", "unset",
             "`pgbouncer`: `DATABASE_URL` is a PgBouncer in transaction mode ([pgbouncer](pgbouncer.md))"),
    Variable("KIT_DATA_DIR", "data_dir", "`.kit` in the project root; outside any project `~/.local/share/kit`",
             "where the embedded server keeps its data"),
    Variable("KIT_MIGRATIONS_DIR", None, "the project's", "overrides `[tool.kit] migrations`"),
    Variable("KIT_SEEDS_DIR", None, "the project's", "overrides `[tool.kit] seeds`"),
    Variable("KIT_PROJECT_ROOT", None, "found from the current directory",
             "the project root, named outright (`pw_migrate --directory DIR` sets it from `DIR`)"),
    Variable("BETTER_AUTH_SECRET", None, "Better Auth's development default",
             "the secret seeds encrypt two-factor values with, as Better Auth does ([better-auth](better-auth.md))"),
)


def variables_markdown() -> str:
    """The environment variables as a Markdown table (docs/configuration.md holds it verbatim)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable in VARIABLES:
        default = variable.default or f"`{getattr(Settings, variable.field or '')}`"
        rows.append(f"| `{variable.name}` | {default} | {variable.meaning} |")
    return "\n".join(rows) + "\n"


_NEXT_URL = re.compile(r"[\s,]*,[\s,]*(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)  # where a list's next URL starts


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _switch(env: Mapping[str, str], name: str) -> bool:
    """An on/off variable: 1/true/on or 0/false/off (unset: off); anything else is one sentence naming it."""
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise ConfigError(f"{name} must be 1 or 0 (on or off), got {env[name]!r}")


def check_database_url(url: str, name: str = "DATABASE_URL") -> str:
    """Validate a PostgreSQL URL and return it in the `postgresql://` form libpq and peewee accept.

    Every message quotes the URL masked, and nothing of a malformed one reaches a parser whose error
    could quote a piece of its password.
    """
    shown = mask_password(url)
    authority = url.partition("://")[2]
    # A parser's or libpq's error would quote a piece of a password holding '@', '/', '#' or '?' (each
    # ends the part of a URL the password is in): say so without quoting it.
    if authority.count("@") > 1 or ("@" in authority and re.search(r"[/?#]", authority.rpartition("@")[0])):
        raise ConfigError(f"{name} is not a valid URL: its user or password holds an '@', '/', '#' or '?'; "
                          f"percent-encode them (%40, %2F, %23, %3F): {shown}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL (its port is not a number): {shown}") from None
    if parts.scheme not in URL_SCHEMES:
        found = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ConfigError(
            f"{name} must start with postgresql:// or postgres://, got {found} in {shown}"
        )
    url = urlunsplit(parts._replace(scheme="postgresql"))
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        reason = mask_password(str(exc).strip().splitlines()[0])
        raise ConfigError(f"{name} is not a valid PostgreSQL URL ({reason}): {shown}") from None
    return url


def _role_url(env: Mapping[str, str], name: str, role: str, url: str | None) -> str | None:
    """Another role's URL from `name`, checked; set only beside DATABASE_URL (None when unset)."""
    given = env.get(name, "").strip() or None
    if given is None:
        return None
    given = check_database_url(given, name)
    if url is None:
        raise ConfigError(f"{name} is set but DATABASE_URL is not: set both to the same server (the {role}'s and "
                          "the application's roles), or neither for the embedded server")
    return given


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the kit's settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    url = env.get("DATABASE_URL", "").strip() or None
    if url is not None:
        url = check_database_url(url)
    owner_url = _role_url(env, "DATABASE_OWNER_URL", "owner", url)
    if owner_url is None and url is not None:
        owner_url = url  # one role for everything: an external server set up without the kit's roles
    door_url = _role_url(env, "DATABASE_DOOR_URL", "door", url)
    pool_min = _integer(env, "DATABASE_POOL_MIN", Settings.pool_min)
    pool_max = _integer(env, "DATABASE_POOL_MAX", Settings.pool_max)
    if pool_max < 1:
        raise ConfigError(f"DATABASE_POOL_MAX must be at least 1, got {pool_max}")
    if pool_min > pool_max:
        raise ConfigError(
            f"DATABASE_POOL_MIN ({pool_min}) must not be greater than DATABASE_POOL_MAX ({pool_max})"
        )
    pooler = env.get("DATABASE_POOLER", "").strip().lower() or None
    if pooler not in POOLERS:
        raise ConfigError(f"DATABASE_POOLER must be pgbouncer or unset, got {env['DATABASE_POOLER']!r}")
    data_dir = load_project(env=env).data_dir
    replicas = [part.strip() for part in _NEXT_URL.split(env.get("DATABASE_REPLICA_URLS", "").strip(" ,"))]
    replica_urls = tuple(check_database_url(part, f"DATABASE_REPLICA_URLS (URL {n})")
                         for n, part in enumerate(replicas, 1) if part)
    lock_timeout_ms = _integer(env, "DATABASE_LOCK_TIMEOUT", Settings.lock_timeout_ms)
    lock_budget_ms = _integer(env, "DATABASE_LOCK_BUDGET", Settings.lock_budget_ms)
    if lock_timeout_ms < 1:
        raise ConfigError("DATABASE_LOCK_TIMEOUT must be at least 1 ms: a schema change waiting for a lock without "
                          "end stalls everyone queued behind it")
    if lock_budget_ms < lock_timeout_ms:
        raise ConfigError(f"DATABASE_LOCK_BUDGET ({lock_budget_ms} ms) must be at least DATABASE_LOCK_TIMEOUT "
                          f"({lock_timeout_ms} ms)")
    return Settings(
        database_url=url,
        owner_url=owner_url,
        door_url=door_url,
        pool_min=pool_min,
        pool_max=pool_max,
        pool_idle_timeout_ms=_integer(env, "DATABASE_POOL_IDLE_TIMEOUT", Settings.pool_idle_timeout_ms),
        pool_timeout_ms=_integer(env, "DATABASE_POOL_TIMEOUT", Settings.pool_timeout_ms),
        data_dir=data_dir,
        replica_urls=replica_urls,
        replica_max_lag_ms=_integer(env, "DATABASE_REPLICA_MAX_LAG", Settings.replica_max_lag_ms),
        pooler=pooler,
        statement_timeout_ms=_integer(env, "DATABASE_STATEMENT_TIMEOUT", Settings.statement_timeout_ms),
        search_timeout_ms=_integer(env, "DATABASE_SEARCH_TIMEOUT", Settings.search_timeout_ms),
        lock_timeout_ms=lock_timeout_ms,
        lock_budget_ms=lock_budget_ms,
        pool_leak_threshold_ms=_integer(env, "DATABASE_POOL_LEAK_THRESHOLD", Settings.pool_leak_threshold_ms),
        slow_query_ms=_integer(env, "DATABASE_SLOW_QUERY_MS", Settings.slow_query_ms),
        query_tags=_switch(env, "DATABASE_QUERY_TAGS"),
    )
