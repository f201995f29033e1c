"""The one pooled database object every model uses: `from kit.db import database`.

Nothing connects at import. The first query reads the settings (`kit.config`), starts or reuses the
embedded server when DATABASE_URL is unset, and opens the pool.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2.extensions
from peewee import OperationalError

from kit import embedded
from kit.config import ConfigError, KitError, Settings, check_database_url, load_settings, mask_password
from kit.pool import PooledDatabase, PoolExhausted, PoolTooLarge

__all__ = ["Database", "DatabaseUnavailable", "PoolExhausted", "PoolTooLarge", "database", "resolve_url"]

APPLICATION_NAME = "kit"
CONNECT_TIMEOUT_S = 10


class DatabaseUnavailable(KitError, OperationalError):
    """The database could not be reached; the message names the (password-masked) URL."""


def resolve_url(settings: Settings) -> str:
    """The URL in use: DATABASE_URL, else the embedded server's (started if it is not running)."""
    return settings.database_url or embedded.start(settings.data_dir)


class Database(PooledDatabase):
    """The kit's pooled PostgreSQL database, configured from the environment on first use."""

    def __init__(self) -> None:
        super().__init__(None)
        self._configure_lock = threading.Lock()
        self.settings: Settings | None = None

    def configure(self, url: str | None = None, settings: Settings | None = None) -> str:
        """Point the pool at `url` (default: from the settings) with the settings' pool sizes; return the URL."""
        with self._configure_lock:
            return self._configure(url, settings)

    def _configure(self, url: str | None, settings: Settings | None) -> str:
        settings = settings or load_settings()
        url = check_database_url(url, "url") if url else resolve_url(settings)
        params: dict[str, Any] = {}
        given = psycopg2.extensions.parse_dsn(url)
        if "application_name" not in given:
            params["application_name"] = APPLICATION_NAME
        if "connect_timeout" not in given:
            params["connect_timeout"] = CONNECT_TIMEOUT_S
        self.connect_params = {}
        self.init(
            mask_password(url),  # what peewee and pw_migrate print; the real URL goes to the driver as dsn
            dsn=url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            max_idle=settings.pool_idle_timeout_ms / 1000,
            timeout=settings.pool_timeout_ms / 1000,
            **params,
        )
        self.settings = settings
        return url

    def connect(self, reuse_if_open: bool = False) -> bool:
        """Check out a connection, configuring the pool first if this is the first use."""
        if self.deferred:
            with self._configure_lock:
                if self.deferred:
                    self._configure(None, None)
        try:
            return super().connect(reuse_if_open)
        except PoolExhausted:
            raise
        except PoolTooLarge as exc:  # say it in the setting's own words
            raise ConfigError(f"DATABASE_POOL_MIN={self.min_size} is too large: {exc}") from None
        except OperationalError as exc:
            if not self._state.closed:
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(
                f"could not connect to the database at {self.database}: {reason}"
            ) from exc

    @property
    def url(self) -> str | None:
        """The URL the pool connects to, password included (None until configured)."""
        return self.connect_params.get("dsn") if not self.deferred else None


database = Database()
