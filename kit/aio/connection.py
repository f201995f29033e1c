"""One asyncpg connection as the kit uses it: the wire (pgvector binary, JSON), the statement cache, and
what the driver says when a session ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from playhouse.pwasyncio import (
    AsyncPostgresqlConnection,
    CursorAdapter,
)

from kit.routing import HOT_STANDBY
from kit.vector import wire

log = logging.getLogger("kit.db")

_LEADING_SETTING = re.compile(r"\s*(?:SET\s+LOCAL\s[^;]*|SELECT\s+set_config\([^;]*\));\s*", re.I)

# -- the wire ------------------------------------------------------------------------------------

F32 = np.dtype(np.float32)


def vector_codec(element: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], np.ndarray]]:
    """asyncpg binary encoder and decoder for pgvector's `vector` ('>f4') or `halfvec` ('>f2')."""

    def encode(value: Any) -> bytes:
        array = getattr(value, "array", None)  # the kit's fields send text that carries its array
        if array is None:
            array = wire.from_text(value, F32) if isinstance(value, str) else np.asarray(value, np.float32)
        return wire.to_binary(array, element)

    def decode(data: bytes) -> np.ndarray:
        return wire.from_binary(data, element, F32)

    return encode, decode


async def settle() -> None:
    """Yield to the event loop a few turns: a socket's pending data and close are read by then."""
    for _ in range(3):
        await asyncio.sleep(0)


def ended_by_command(exc: BaseException | None) -> bool:
    """True when the server said it ended the session on a command (57P01, pg_terminate_backend or a stop)."""
    for _ in range(8):
        if exc is None:
            return False
        if getattr(exc, "sqlstate", None) == "57P01" or getattr(exc, "pgcode", None) == "57P01":
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def refused_by_driver(exc: BaseException) -> bool:
    """True when asyncpg refused an operation before sending it (a client-side error: nothing reached the server)."""
    import asyncpg

    inner = getattr(exc, "orig", None) or exc
    return isinstance(inner, (asyncpg.InterfaceError, asyncpg.InternalClientError))


def session_ended(code: str | None) -> bool:
    """True for what asyncpg reports when the server had ended the session: no code, class 08, or a shutdown."""
    return code is None or code.startswith("08") or code in ("57P01", "57P02")


def json_encoder(head: bytes) -> Callable[[Any], bytes]:
    """asyncpg binary encoder for json (`head` b'') or jsonb (b'\\x01'): text, bytes, or a field's wrapped value."""

    def encode(value: Any) -> bytes:
        wrapped = getattr(value, "adapted", getattr(value, "value", value))  # the JSON fields' wrappers
        if wrapped is not value:  # psycopg2's `Json` (`adapted`) or playhouse's (`value`), each with its dumps
            dumps = getattr(value, "dumps", None)
            value = dumps(wrapped) if callable(dumps) else json.dumps(wrapped)
        elif not isinstance(value, (str, bytes)):
            value = json.dumps(value)
        return head + (value if isinstance(value, bytes) else value.encode())

    return encode


def json_decoder(skip: int) -> Callable[[bytes], Any]:
    """asyncpg binary decoder for json (`skip` 0) or jsonb (1: its version byte)."""
    return lambda data: json.loads(data[skip:])


def numbered(sql: str) -> str:
    """`sql` with psycopg's %s placeholders as asyncpg's $1, $2... (pwasyncio's rule), remembered for short SQL."""
    return _numbered(sql) if len(sql) <= NUMBERED_UP_TO else AsyncPostgresqlConnection._translate_placeholders(sql)


NUMBERED_UP_TO = 4096  # characters: the statements the models repeat are remembered, bulk ones are not kept


@lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    return AsyncPostgresqlConnection._translate_placeholders(sql)


def split_settings(sql: str) -> tuple[str, str]:
    """Leading SET LOCAL / set_config statements the kit puts before a statement, and the statement."""
    end = 0
    while match := _LEADING_SETTING.match(sql, end):
        end = match.end()
    return sql[:end], sql[end:]


def rowcount(status: str | None, rows: int) -> int:
    """The row count from a command tag ("UPDATE 3", "INSERT 0 3"), else the rows returned."""
    tail = (status or "").rsplit(" ", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else rows


class KitConnection(AsyncPostgresqlConnection):
    """One asyncpg connection as pwasyncio wraps it, plus the session state it holds and the statement cache."""

    def __init__(self, conn: Any, session: set[str]) -> None:
        super().__init__(conn)
        self.session = session  # the server session's state, kept by the database as long as the session lives
        self.raw_transaction = False  # BEGIN sent as SQL
        self.tenant_used = False  # the open transaction has carried a tenant (`kit.db.contract.tenant_rides`)
        self.taken = 0.0  # when it was checked out (time.monotonic())
        self.taken_by: Any = None  # the stack that checked it out (with a leak threshold only)
        self.leak_timer: Any = None  # reports it as leaked unless it comes back first
        self.reported = False

    async def _execute(self, sql: str, params: Any = None) -> CursorAdapter:
        """Run one statement through asyncpg's statement cache: one round trip once it is prepared."""
        if params:
            sql = numbered(sql)
        records, status, _ = await self.conn._execute(sql, tuple(params or ()), 0, None, return_status=True)
        status = status.decode() if isinstance(status, bytes) else status
        description = [(k,) for k in records[0].keys()] if records else []
        cursor = CursorAdapter(records, rowcount=rowcount(status, len(records)), description=description)
        cursor.hot_standby = getattr(self.conn.get_settings(), HOT_STANDBY, None)  # as the server reported it
        return cursor

    async def simple(self, sql: str) -> None:
        """Send kit-made SQL without parameters (several statements allowed) in one round trip."""
        await self._acquire_lock()
        try:
            await self.conn.execute(sql)
        finally:
            self._lock.release()


