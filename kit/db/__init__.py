"""The pooled database: `database`, the one every model uses, and `PooledDatabase`, peewee's pooled contract.

`from kit.db import database`. Nothing connects at import. The first query reads the settings
(`kit.config`), starts or reuses the embedded server when DATABASE_URL is unset, and opens the pool.

The package, one job a module, each importing only those above it:

- `statements`: what a statement leaves on its connection (session state by kind, to name what is lost;
  what PgBouncer refuses).
- `clean`: whether a statement provably leaves nothing on its session (fail-closed: anything else, in
  any spelling, gets its connection reset before the next borrower), and how many statements a string holds.
- `contract`: the statement contract both engines keep: what rides before a statement (settings, time
  limit, tenant), one statement per string outside a transaction, and every failure in the kit's words.
- `outcomes`: what a failure means to its caller: an outage (the `DatabaseUnavailable` family), or a
  transaction that may be run again (`retryable`).
- `scope`: the request scope (a connection per statement or transaction) and what a context wrote,
  shared with the tasks and threads it starts (read-your-writes).
- `shapes`: the statement cache: a peewee query's SQL rendered once per shape, then only bound to new
  values (fail-closed: only what peewee's own rendering proves is cached), for both engines.
- `prepared`: `Prepared` statements, a query built once with named `Param`s for a hot path (every other
  value refused), its SQL kept in the statement cache; `Model.get_by_id` and the kit's domain operations.
- `rows`: rows to model instances by a plan kept per shape.
- `bridge`: which database a model's statements go to (the asyncio one inside `kit.aio`'s `run()`).
- `forks`: a forked child drops every inherited connection without touching its socket.
- `pooled`: `PooledDatabase`, peewee's `PooledPostgresqlExtDatabase` contract on `kit.pool`, with the
  re-send rule (when a statement may go again on a new connection), `SessionLost` and the time limit.
- `reads`: read routing to replicas, read-your-writes, `on_primary` / `on_replica` / `reads_after`.
- `retry`: `retry_transaction`, a whole transaction run again where nothing of it was committed.
- `configured`: `Database` configured from the environment (roles, the door (`kit_door`) for
  `all_tenants()`, replicas) and the `database` instance.
"""

from kit.db.configured import Database, database, resolve_url
from kit.db.pooled import PooledDatabase
from kit.db.statements import POOLER_REFUSES, session_change
from kit.errors import DatabaseUnavailable, PoolExhausted, PoolSettingError, PoolTooLarge, SessionLost

__all__ = [
    "POOLER_REFUSES",
    "Database",
    "DatabaseUnavailable",
    "PoolExhausted",
    "PoolSettingError",
    "PoolTooLarge",
    "PooledDatabase",
    "SessionLost",
    "database",
    "resolve_url",
    "session_change",
]
