"""Read routing: which server each of `Database`'s statements goes to (the rules are `kit.routing`'s).

A plain peewee SELECT (no FOR UPDATE, no data-modifying WITH) outside a transaction goes to a fit
replica; everything else goes to the primary. A context's own writes are waited for (read-your-writes,
by WAL position); `on_primary()`, `on_replica()` and `reads_after()` override the choice for a block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from peewee import DatabaseError, InterfaceError, SelectBase, __exception_wrapper__  # type: ignore[attr-defined]  # peewee: not in its stubs

from kit.db.pooled import PooledDatabase
from kit.db.scope import written
from kit.errors import KitError, PoolExhausted, describe
from kit.routing import HOT_STANDBY, Replica, Router, lsn_int, lsn_text, promoted
from kit.tenancy import crossing_tenants, current_tenant, require_tenant

log = logging.getLogger("kit.db")

PRIMARY, REPLICA = "primary", "replica"


def plain_read(query: Any) -> bool:
    """True for a peewee SELECT that cannot write: no FOR UPDATE/SHARE, no data-modifying WITH."""
    if not isinstance(query, SelectBase) or getattr(query, "_for_update", None) is not None:
        return False
    return all(isinstance(cte._query, SelectBase) for cte in cast(Any, query)._cte_list or ())



class ReadRouting(PooledDatabase):
    """The routing half of `kit.db.Database`: reads to replicas, writes and transactions to the primary."""

    _router: Router | None

    def _init_routing(self) -> None:
        """What the current context (thread or asyncio task) asked for and wrote, for read routing."""
        self._router = None
        self._force: ContextVar[str | None] = ContextVar("kit_force", default=None)  # "primary"/"replica"
        self._floor: ContextVar[int] = ContextVar("kit_floor", default=0)  # a position from `reads_after()`
        self._primary_seen = 0  # the highest WAL position of the primary this process has seen

    def execute(self, query: Any, commit: Any = None, **context: Any) -> Any:
        """Run a peewee query: a plain read outside a transaction on a fit replica, everything else on the primary."""
        self._configured()
        if not plain_read(query):
            if not isinstance(query, SelectBase) and current_tenant() is None and not self.owner \
                    and not crossing_tenants():
                require_tenant(query)
            return super().execute(query, commit, **context)
        sql, params = self.sql_of(query, **context)
        return self.read_sql(sql, params)

    def execute_sql(self, sql: str, params: Any = None, named_cursor: Any = None) -> Any:
        """Run one statement on the primary (on a replica inside `on_replica()`, outside a transaction)."""
        if self._force.get() == REPLICA and named_cursor is None:
            replica = self._replica_for_read(writes_matter=False)
            if replica is not None:
                return self._read_on(replica, sql, params, only_reads=False)
        cursor = super().execute_sql(sql, params, named_cursor)
        if not self.in_transaction():  # it may have written: later reads wait for a replica to replay it
            written().wrote(self)
        return cursor

    def commit(self) -> None:
        """COMMIT; what the transaction wrote is waited for by later reads (`kit.db.scope.Written`)."""
        super().commit()
        written().wrote(self)

    def read_sql(self, sql: str, params: Any = None) -> Any:
        """Run raw SQL that only reads, routed as a peewee SELECT is (a fit replica outside a transaction)."""
        self._configured()
        replica = self._replica_for_read(writes_matter=True)
        if replica is not None:
            return self._read_on(replica, sql, params)
        return PooledDatabase.execute_sql(self, sql, params)

    def _replica_for_read(self, writes_matter: bool) -> Replica | None:
        """The replica this read may go to, or None for the primary (see `kit.routing`)."""
        router, state = self._router, self._state
        if router is None or self._force.get() == PRIMARY or state.transactions or state.raw_transaction \
                or self._crossing():
            return None
        if not state.closed and self._pool.session_of(state.conn):
            return None  # this thread set session state up on the primary; its reads stay there
        return router.choose(self._written_position() if writes_matter else 0)

    def _written_position(self) -> int:
        """The WAL position this context's reads must see: taken from the primary after the writes they must see.

        Which writes those are, and when a position is taken, is `kit.db.scope.Written`'s rule.
        """
        return max(written().position(self, self._primary_position), self._floor.get())

    def _primary_position(self) -> int:
        """The primary's WAL insert position now (one round trip)."""
        with __exception_wrapper__:
            cursor = PooledDatabase.execute_sql(self, "SELECT pg_current_wal_insert_lsn()::text")
        position = lsn_int(cursor.fetchone()[0])
        self._primary_seen = max(self._primary_seen, position)
        return position

    def _read_on(self, replica: Replica, sql: str, params: Any, only_reads: bool = True) -> Any:
        """Run a read on `replica`; should it fail there, on the primary (a read has no effect to repeat).

        `only_reads` False (raw SQL in `on_replica()`, which may be a write): only a full replica pool
        sends it to the primary; any other failure is raised, so a write is refused as the standby refuses it.
        """
        try:
            cursor = replica.database.execute_sql(sql, params)
        except (DatabaseError, InterfaceError, KitError) as exc:
            if replica.database.connection_lost() and not isinstance(exc, PoolExhausted):
                cast(Router, self._router).failed(replica, exc)
            if not only_reads and not isinstance(exc, PoolExhausted):
                raise
            self._pool.count("replica_fallbacks")
            log.info("a read went to the primary: replica %s could not serve it (%s)", replica.name, describe(exc))
            return PooledDatabase.execute_sql(self, sql, params)
        if promoted(cursor.connection.get_parameter_status(HOT_STANDBY)):  # answered from another timeline
            cast(Router, self._router).promoted(replica)
            if not only_reads:  # forced raw SQL, which may have written: never sent a second time
                raise KitError(f"replica {replica.name} was promoted (it is not in recovery): the statement ran "
                               "there, on a server that is no longer the primary's replica, and not on the primary")
            self._pool.count("replica_fallbacks")
            return PooledDatabase.execute_sql(self, sql, params)
        replica.reads += 1
        return cursor

    @contextmanager
    def on_primary(self) -> Iterator[None]:
        """Within the block, every statement of this context goes to the primary."""
        token = self._force.set(PRIMARY)
        try:
            yield
        finally:
            self._force.reset(token)

    @contextmanager
    def on_replica(self) -> Iterator[None]:
        """Within the block, every statement outside a transaction (raw SQL too) goes to a replica when one is fit.

        This context's own recent writes are not waited for; replicas down or past the lag limit are
        still skipped (the primary serves when none is left).
        """
        token = self._force.set(REPLICA)
        try:
            yield
        finally:
            self._force.reset(token)

    def write_position(self) -> str | None:
        """The WAL position after this context's last write (`X/Y`), for `reads_after` elsewhere; None if none."""
        position = self._written_position()
        return lsn_text(position) if position else None

    @contextmanager
    def reads_after(self, position: str | None) -> Iterator[None]:
        """Within the block, this context's reads see at least WAL `position` (from `write_position()`).

        A position is checked (`ArgumentError` unless it is `X/Y` in hex) and capped to the primary's
        current one: a client that carries positions cannot send every read to the primary by
        naming one from the future.
        """
        wanted = lsn_int(position)
        if wanted > self._primary_seen:  # past what this process has seen: ask the primary (one round trip)
            with __exception_wrapper__:
                cursor = PooledDatabase.execute_sql(self, "SELECT pg_current_wal_insert_lsn()::text")
            self._primary_seen = max(self._primary_seen, lsn_int(cursor.fetchone()[0]))
            wanted = min(wanted, self._primary_seen)
        token = self._floor.set(max(self._floor.get(), wanted))
        try:
            yield
        finally:
            self._floor.reset(token)

    def check_replicas(self) -> list[dict[str, Any]]:
        """Ask every replica for its state now (those skipped as down too); return what `pool_stats` says of them."""
        router = self._router
        if router is None:
            return []
        for replica in router.replicas:
            router.probe(replica)
        return [replica.stats() for replica in router.replicas]
