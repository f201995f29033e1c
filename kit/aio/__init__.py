"""The asyncio database: `from kit.aio import database`, on peewee's own `playhouse.pwasyncio` (asyncpg).

`database` is configured from the environment on first use, as `kit.db.database` is; the long form is
in `kit.aio.database` and docs/web.md. The package, one job a module:

- `connection`: one asyncpg connection: pgvector's binary format and JSON both ways, the statement
  cache with the command tag in one round trip, and what the driver says when a session ends.
- `transaction`: `Atomic`, pwasyncio's transaction minding the tenant setting and lost connections.
- `database`: `AsyncDatabase`: the pool from the environment, models bound inside `run()`, the
  re-send rule, `SessionLost`, time limits, the tenant context, `retry_transaction`.
"""

try:
    import asyncpg  # noqa: F401 - checked here, so that its absence is one sentence
    import greenlet  # noqa: F401
except ImportError as exc:  # pragma: no cover - the dev install has both
    raise ImportError(f"kit.aio needs asyncpg and greenlet, which are not installed ({exc.name} is missing): "
                      "pip install 'peewee-saas-kit[async]'") from None

from kit.aio.database import AsyncDatabase  # noqa: E402 - after the check above

database = AsyncDatabase()

__all__ = ["AsyncDatabase", "database"]
