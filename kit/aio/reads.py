"""Read routing for the asyncio database: the sync pool's rules (`kit.db.reads`, `kit.routing`) on asyncpg.

A plain peewee SELECT (no FOR UPDATE, no data-modifying WITH) outside a transaction goes to a fit
replica (DATABASE_REPLICA_URLS, each with an asyncpg pool of its own); everything else goes to the
primary. Read-your-writes: a context's writes, and those of the tasks and threads it started
(`kit.db.scope.Written`), are waited for by WAL position. A replica that answered after being
promoted is found from the `in_hot_standby` it reports (`kit.routing.promoted`): its answer is set
aside and the primary reads. A replica whose pool is full, or that fails, leaves the read to the
primary. A probe another task is running is not waited for (`Router(wait_for_probes=False)`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from peewee import DatabaseError, InterfaceError

from kit.db.reads import plain_read
from kit.db.scope import written
from kit.errors import KitError, describe
from kit.routing import Replica, Router, lsn_int, promoted
from kit.tenancy import crossing_tenants

log = logging.getLogger("kit.db")


class AsyncReadRouting:
    """The routing half of `kit.aio.AsyncDatabase` (its methods run inside `run()`, in a greenlet)."""

    _router: Router | None = None
    # what the database this is mixed into (`AsyncDatabase`) provides
    database: Any
    counts: Any
    _state: Any
    sql_of: Callable[..., tuple[str, Any]]
    aexecute_sql: Callable[..., Any]
    is_replica = False  # a replica's own database: it routes nothing, and a full pool leaves the read to the primary

    def _set_replicas(self, urls: Any, settings: Any) -> None:
        """Read from these replicas from now on (none: the primary serves every read)."""
        from dataclasses import replace

        made = []
        for url in urls:
            database = cast(Any, type(self))(url, replace(settings, replica_urls=()), stands_for=None)
            database.is_replica = True
            made.append(Replica(database.database, database))
        self._router = Router(made, settings.replica_max_lag_ms / 1000, wait_for_probes=False) if made else None

    def _reads_here(self, query: Any) -> bool:
        """True when a query may go to a replica: a plain read, outside a transaction, with replicas to read."""
        if self._router is None or not plain_read(query) or self._state.transactions or crossing_tenants():
            return False
        conn = self._state.conn
        return conn is None or not (conn.raw_transaction or conn.session)

    def execute(self, query: Any, commit: Any = None, **context: Any) -> Any:
        """Run a peewee query: a plain read outside a transaction on a fit replica, everything else on the primary."""
        if not self._reads_here(query):
            return super().execute(query, commit, **context)  # type: ignore[misc]  # the database's own
        sql, params = self.sql_of(query, **context)
        return self.read_sql(sql, params)

    def read_sql(self, sql: str, params: Any = None) -> Any:
        """Run raw SQL that only reads, routed as a peewee SELECT is (a fit replica outside a transaction)."""
        replica = self._router.choose(self._written_position()) if self._router is not None \
            and not self._state.transactions else None
        if replica is not None:
            return self._read_on(replica, sql, params)
        return self._primary_read(sql, params)

    def _primary_read(self, sql: str, params: Any) -> Any:
        """A read on the primary (not counted as a write)."""
        from playhouse.pwasyncio import await_

        return await_(self.aexecute_sql(sql, params, writes=False))

    def _written_position(self) -> int:
        """The WAL position this context's reads must see (`kit.db.scope.Written`'s rule)."""
        return written().position(self, self._primary_position)

    def _primary_position(self) -> int:
        """The primary's WAL insert position now (one round trip)."""
        return lsn_int(self._primary_read("SELECT pg_current_wal_insert_lsn()::text", None).fetchone()[0])

    def _read_on(self, replica: Replica, sql: str, params: Any) -> Any:
        """Run a read on `replica`; should it fail, be full, or have been promoted, on the primary."""
        try:
            cursor = replica.database.execute_sql(sql, params)
        except (DatabaseError, InterfaceError, KitError) as exc:
            if not getattr(exc, "pool_full", False):
                cast(Router, self._router).failed(replica, exc)
            self.counts["replica_fallbacks"] += 1
            log.info("a read went to the primary: replica %s could not serve it (%s)", replica.name, describe(exc))
            return self._primary_read(sql, params)
        if promoted(getattr(cursor, "hot_standby", None)):
            cast(Router, self._router).promoted(replica)
            self.counts["replica_fallbacks"] += 1
            return self._primary_read(sql, params)
        replica.reads += 1
        return cursor

    def _note_write(self) -> None:
        """A write is done (a statement outside a transaction, or a COMMIT): later reads wait for a replica to have it.

        Noted whether or not replicas are configured yet: the first write of a process comes before them.
        """
        written().wrote(self)


__all__ = ["AsyncReadRouting"]
