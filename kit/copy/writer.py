"""Binary COPY in: `copy_rows` and `CopyWriter`, for any model.

    copy_rows(DocumentChunk, rows)                # rows: dicts of field values, as for insert_many

Rows are encoded a column at a time in the caller's thread while a worker thread hands the previous
chunk to psycopg2. A load is one transaction of one or more COPY statements. Under a statement time
limit (`DATABASE_STATEMENT_TIMEOUT`) each statement is sized from the server's pace on the statement
before it, to take about a quarter of the limit (the first is one chunk, each at most four times the
last), so a load of any size goes in as statements that each finish well within the limit.
Scalar columns use the encoders of `kit.copy.encoders`; a field that knows its own
binary form (pgvector's) encodes its whole column itself through the hook below.

The hook: a field with `copy_cells(values) -> list` (each value's complete field: length prefix and
bytes, or `NULL`) and `copy_width` (bytes per value, for sizing chunks). It raises a ValueError whose
`offset` attribute is the index of the first bad value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import queue
import re
import secrets
import struct
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import peewee
import psycopg2
import psycopg2.errors
from peewee import Field, Model

from kit.copy.encoders import COPY_HEADER, COPY_TRAILER, NULL, encoders
from kit.errors import CopyRowError, StatementTimeout
from kit.telemetry import operation

CHUNK_BYTES = 8 << 20  # rows are encoded and queued for sending about this much at a time
CHUNK_ROWS = 2_000  # or this many rows, whichever comes first: the server starts on a table early
STATEMENT_SHARE = 4  # under a time limit, a COPY statement is sized to take 1/4 of it at the server's last pace

PEEWEE_EXCEPTIONS: dict[str, type[Exception]] = peewee.EXCEPTIONS  # type: ignore[attr-defined]  # not in its stubs


def _plain(value: Any) -> Any:
    """Unwrap the driver adapters some fields' db_value returns (JSON)."""
    return getattr(value, "adapted", value)


# -- copy_rows ----------------------------------------------------------------------------------------


def _resolve_fields(model: type[Model], keys: Iterable[Any]) -> list[Field]:
    fields = []
    for key in keys:
        if isinstance(key, Field):
            field = key
        else:
            field = model._meta.fields.get(key) or model._meta.combined.get(key)
            if field is None:
                raise CopyRowError(f"row 0: {model._meta.table_name} has no field {key!r}", row=0)
        fields.append(field)
    return fields


def _qualified(table: str | tuple[str, str]) -> str:
    """A table name, or (schema, name), quoted for SQL."""
    return ".".join(f'"{part}"' for part in ((table,) if isinstance(table, str) else table))


def _column_types(database: peewee.Database, model: type[Model],
                  target: str | tuple[str, str] | None = None) -> dict[str, str]:
    meta = model._meta
    table = f'"{meta.schema}"."{meta.table_name}"' if meta.schema else f'"{meta.table_name}"'
    table = _qualified(target) if target else table
    cursor = database.execute_sql(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return dict(cursor.fetchall())


# For a column whose field cannot write its type in binary itself (pgvector-python's own vector fields,
# say), a stand-in that can, by the column's PostgreSQL type: `kit.vector` registers pgvector's types.
_STAND_INS: dict[str, Callable[[Field], Any]] = {}


def register_stand_in(pg_type: str, make: Callable[[Field], Any]) -> None:
    """Columns of `pg_type` whose field has no `copy_cells` are written by `make(field)` (a field that has)."""
    _STAND_INS[pg_type] = make


def _writer_of(field: Field, types: Mapping[str, str]) -> Any:
    """The field that writes `field`'s column: itself, or the stand-in registered for the column's type."""
    make = _STAND_INS.get(types.get(field.column_name, ""))
    return field if make is None or hasattr(field, "copy_cells") else make(field)


def _session_zone(database: peewee.Database) -> dt.tzinfo:
    name = database.execute_sql("SHOW TimeZone").fetchone()[0]
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def database_default(field: Field) -> bool:
    """Whether the model declares a DEFAULT for the column (the database then fills it in)."""
    return any(str(getattr(c, "sql", "")).upper().startswith("DEFAULT ") for c in field.constraints or [])


def copy_rows(model: type[Model], rows: Iterable[Mapping[Any, Any]], database: peewee.Database | None = None,
              table: str | tuple[str, str] | None = None) -> int:
    """Insert `rows` (dicts of field values, as for insert_many) with binary COPY, all or nothing; return the count.

    `table` copies into another table with the same columns (a staging table; a name or (schema, name)).

    Every row must give the same fields. A field it leaves out gets the column's database default when
    the model declares one (`constraints=[SQL("DEFAULT ...")]`), else its Python default (as with
    insert_many), else whatever the database has. A bad row raises CopyRowError (or the database's
    error) naming the row's index, and nothing is written. `rows` may be a generator; it must not use
    the database connection itself while copy_rows runs. Into a table whose row-level security
    applies to the role (a tenant table, as the application), the rows are staged in a temporary
    table and moved by one INSERT ... SELECT, which the policies check (`kit.roles`). Instrumented
    (`kit.telemetry`), it is one `kit.copy_rows` span over its statements.
    """
    name = model._meta.table_name if table is None else (table if isinstance(table, str) else ".".join(table))
    with operation("kit.copy_rows", **{"db.collection.name": name}) as span:
        count = _copy_rows(model, rows, database, table)
        if span is not None:
            span.set_attribute("kit.copy.rows", count)
        return count


def _copy_rows(model: type[Model], rows: Iterable[Mapping[Any, Any]], database: peewee.Database | None = None,
               table: str | tuple[str, str] | None = None) -> int:
    """The work of `copy_rows`, in one transaction."""
    database = database or model._meta.database
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    target = _qualified(table) if table else _qualified(
        (model._meta.schema, model._meta.table_name) if model._meta.schema else model._meta.table_name)
    with database.atomic():
        if not _row_security_active(database, target):
            with CopyWriter(model, list(first.keys()), database, table) as writer:
                writer.write(itertools.chain([first], iterator))
            return writer.count
        # PostgreSQL refuses COPY FROM where row-level security applies: the rows go to a staging table
        # of this transaction, then in by one INSERT, which the table's policies check row by row.
        stage = f"kit_copy_{secrets.token_hex(6)}"
        database.execute_sql(f'CREATE TEMP TABLE "{stage}" (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP')
        with CopyWriter(model, list(first.keys()), database, ("pg_temp", stage)) as writer:
            writer.write(itertools.chain([first], iterator))
        moved = f'INSERT INTO {target} ({writer.columns}) SELECT {writer.columns} FROM pg_temp."{stage}"'
        if getattr(database, "citus", False):
            # Citus moves an INSERT ... SELECT's rows into the shards by COPY, which the policies refuse as
            # well, unless it returns rows: then it stages them beside each shard and INSERTs them there.
            moved = f"WITH moved AS ({moved} RETURNING 1) SELECT count(*) FROM moved"
        database.execute_sql(moved)
    return writer.count


def _row_security_active(database: peewee.Database, target: str) -> bool:
    """Whether row-level security applies to this connection's role on the table."""
    return bool(database.execute_sql("SELECT row_security_active(%s::regclass)", (target,)).fetchone()[0])


class CopyWriter:
    """One table's binary COPY: this thread encodes rows while a worker thread sends what is ready.

        with CopyWriter(DocumentChunk, ["source", "content", "embedding"], database) as writer:
            writer.write(rows)     # dicts of field values; as many calls as you like
            writer.wait()          # all sent and taken: the connection is free until the next write

    Rows are numbered from 0 across writes. A bad row raises CopyRowError, or the database's error,
    naming its number. Use it inside a transaction: what was sent before an error is rolled back with it.
    While rows are being sent (between a write and the next wait), this thread must not use the
    connection for anything else.

    Writers can be chained to load several tables back to back: `CopyWriter(..., after=previous)`
    sends its rows once the previous writer's are in, and `end()` lets the next table begin encoding
    without waiting for the server. Create all the writers first: creating one asks the database for
    the table's column types.
    """

    def __init__(self, model: type[Model], fields: Iterable[Any], database: peewee.Database | None = None,
                 table: str | tuple[str, str] | None = None, after: CopyWriter | None = None) -> None:
        self.database = database or model._meta.database
        self.count = 0
        self.after = after
        types = _column_types(self.database, model, table)
        given = [_writer_of(f, types) for f in _resolve_fields(model, fields)]
        names = {f.name for f in given}
        defaults = [_writer_of(f, types) for f in model._meta.sorted_fields
                    if f.name not in names and f.default is not None and not database_default(f)]
        hooked = [f for f in given + defaults if hasattr(f, "copy_cells")]  # fields that encode themselves
        scalars = [f for f in given + defaults if not hasattr(f, "copy_cells")]
        name = model._meta.table_name
        self.zone: dt.tzinfo = after.zone if after is not None else _session_zone(self.database)
        scalar_encoders = encoders(self.zone)
        cells = []
        for field in scalars:
            pg_type = types.get(field.column_name)
            if pg_type is None:
                raise CopyRowError(f"row 0: {name} has no column {field.column_name!r} in the database", row=0)
            if pg_type not in scalar_encoders:
                raise CopyRowError(
                    f"copy_rows cannot write {name}.{field.column_name} (type {pg_type}) in binary; "
                    "use insert_many for this table"
                )
            cells.append(_cell_encoder(field, pg_type, scalar_encoders[pg_type]))
        self.columns = ", ".join(f'"{f.column_name}"' for f in scalars + hooked)  # in the order sent
        target = _qualified(table) if table else (
            f'"{model._meta.schema}"."{name}"' if model._meta.schema else f'"{name}"')
        self.statement = f"COPY {target} ({self.columns}) FROM STDIN WITH (FORMAT BINARY)"
        self.layout = _Layout(model, given, scalars, cells, hooked)
        self.time_limit: float | None = getattr(self.database, "statement_timeout", None)  # seconds, or no limit
        self.statements = 0  # COPY statements begun
        self._budget: int | float = 0  # rows the current statement may take (sized when it begins)
        self._paced: _Sender | None = None  # the latest statement known to have finished: the server's pace
        self._sender: _Sender | None = None  # the COPY statement being fed
        self._ended: list[_Sender] = []  # statements fed in full, perhaps still running

    def write(self, rows: Iterable[Mapping[Any, Any]]) -> None:
        """Encode `rows` and queue them for sending; raises the first error found so far."""
        iterator = iter(rows)
        while chunk := list(islice(iterator, self.layout.rows_per_chunk)):
            payload = self.layout.encode(chunk, self.count)
            if self._sender is not None and self._sender.rows and self._sender.rows + len(chunk) > self._budget:
                self.end()  # the next rows go in a statement of their own, under the time limit anew
            if self._sender is None:
                self._budget = self._next_budget(len(chunk))
                self._sender = _Sender(self.database.cursor(), self.statement, self.count, self._last(),
                                       self.time_limit)
                self.statements += 1
            try:
                self._sender.send(payload)
            except Exception as exc:
                exc.copy_writer = self  # type: ignore[attr-defined]
                raise
            self._sender.rows += len(chunk)
            self.count += len(chunk)

    def _next_budget(self, chunk_rows: int) -> int | float:
        """Rows the next COPY statement may take: all of them without a time limit, else a quarter of it."""
        if not self.time_limit:
            return float("inf")
        paced = next((s for s in reversed(self._ended) if s.finished is not None), self._paced)
        if paced is None or paced.finished is None or paced.started is None:
            return chunk_rows if not self._ended else self._budget  # no pace known yet: no bigger than before
        self._paced = paced
        pace = paced.rows / max(paced.finished - paced.started, 1e-6)  # rows a second at the server
        return max(1, min(4 * max(self._budget, chunk_rows), int(pace * self.time_limit / STATEMENT_SHARE)))

    def _last(self) -> _Sender | None:
        """The last COPY statement queued on the connection so far (this writer's, or an earlier one's)."""
        if self._sender is not None:
            return self._sender
        if self._ended:
            return self._ended[-1]
        return self.after._last() if self.after is not None else None

    def end(self) -> None:
        """Finish feeding the COPY statement in flight, without waiting for the server to take it all."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.end()
            self._ended.append(sender)

    def wait(self) -> None:
        """Wait until this writer's rows (and those of the writers before it) are in; raise any error."""
        self.end()
        if self.after is not None:
            self.after.wait()
        ended, self._ended = self._ended, []
        for sender in ended:
            try:
                sender.finish()
            except Exception as exc:
                exc.copy_writer = self  # type: ignore[attr-defined]
                for rest in ended:
                    rest.finish(abort=True)
                raise
        if ended:
            self._paced = ended[-1]  # every statement is in: the last one's pace sizes the next write's

    def abort(self) -> None:
        """Stop sending and wait for the worker threads: the transaction is left to be rolled back."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.finish(abort=True)
        ended, self._ended = self._ended, []
        for sender in ended:
            sender.finish(abort=True)
        if self.after is not None:
            self.after.abort()

    def __enter__(self) -> CopyWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.wait()
        else:
            self.abort()


_END, _ABORT = object(), object()
QUEUED_CHUNKS = 2  # encoded chunks waiting for the worker: bounds memory, keeps the server busy


class _Aborted(Exception):
    pass


class _Sender(threading.Thread):
    """The worker thread of one COPY statement: hands psycopg2 the chunks the writer queues.

    It starts its statement once the `previous` one on the connection has finished.
    """

    def __init__(self, cursor: Any, statement: str, start: int, previous: _Sender | None,
                 time_limit: float | None = None) -> None:
        super().__init__(name="kit-copy", daemon=True)
        self.cursor, self.statement, self.start_row, self.previous = cursor, statement, start, previous
        self.time_limit = time_limit
        self.chunks: queue.Queue = queue.Queue(QUEUED_CHUNKS)
        self.error: Exception | None = None
        self.rows = 0  # rows queued for this statement
        self.started: float | None = None  # when the statement was sent (monotonic)
        self.finished: float | None = None  # when the server completed it (monotonic; None on error)
        self._header_sent = self._done = self._ending = False
        self.start()

    def read(self, size: int = -1) -> bytes:
        """The next piece of the COPY stream (psycopg2 calls this until it gets b"")."""
        if self._done:
            return b""
        chunk = self.chunks.get()
        if chunk is _ABORT:
            self._done = True
            raise _Aborted()
        if chunk is _END:
            self._done = True
            return COPY_TRAILER if self._header_sent else COPY_HEADER + COPY_TRAILER
        if not self._header_sent:
            self._header_sent = True
            return COPY_HEADER + chunk
        return chunk

    def run(self) -> None:
        try:
            if self.previous is not None:
                self.previous.join()
                if self.previous.error is not None:  # the transaction has failed: do not start
                    self.error = _Aborted()
                    return
            self.started = time.monotonic()
            self.cursor.copy_expert(self.statement, self, size=CHUNK_BYTES)
            self.finished = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - handed to the writer's thread, which raises it
            self.error = exc
        finally:
            try:
                self.cursor.close()
            except Exception:  # noqa: BLE001 - a dead connection's cursor; the COPY's own error is kept
                pass
            while not self._done:  # unblock the writer: take what it still queues until it ends
                chunk = self.chunks.get()
                self._done = chunk is _END or chunk is _ABORT

    def _put(self, item: object) -> None:
        """Queue `item` for the worker; never blocks on a worker that has ended (its error is raised later)."""
        while self.is_alive():
            try:
                self.chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def send(self, chunk: bytes) -> None:
        """Queue one encoded chunk; raise the COPY's error if it has failed already."""
        if self.error is not None or not self.is_alive():
            self.finish()  # raises the COPY's error
            if isinstance(self.error, _Aborted):
                return  # never started, an earlier statement having failed: that one raises its error
            raise peewee.InterfaceError("the COPY statement ended before every row was sent; nothing of it counts")
        self._put(chunk)

    def end(self) -> None:
        """Mark the end of the rows (once); the statement completes in the background."""
        if not self._ending:
            self._ending = True
            self._put(_END)

    def finish(self, abort: bool = False) -> None:
        """End the COPY statement and wait for it; raise its error (unless aborting)."""
        if not self._ending:
            self._ending = True
            self._put(_ABORT if abort else _END)
        self.join()
        if self.error is not None and not abort and not isinstance(self.error, _Aborted):
            if not isinstance(self.error, psycopg2.Error):
                raise self.error
            raise _copy_error(self.error, self.start_row, self.time_limit) from self.error


_COPY_LINE = re.compile(r"COPY [^,]+, line (\d+)")


def _copy_error(exc: psycopg2.Error, start: int, time_limit: float | None = None) -> Exception:
    """The database's error as peewee's, with the row number (counted across COPY statements) first."""
    context = getattr(exc.diag, "context", None) or ""
    match = _COPY_LINE.search(context)
    row = start + int(match.group(1)) - 1 if match else None
    where = f"row {row}: " if match else ""
    if isinstance(exc, psycopg2.errors.QueryCanceled) and "statement timeout" in str(exc):
        limit = f"{round(time_limit * 1000):,} ms" if time_limit else "the server's"
        return StatementTimeout(
            f"{where}a COPY statement ran past its time limit ({limit}, DATABASE_STATEMENT_TIMEOUT) and the "
            "server cancelled it: the rows were too slow to write even a few thousand at a time (each "
            "statement gets a quarter of the limit); nothing was written",
            limit_ms=round(time_limit * 1000) if time_limit else None, row=row)
    message = (exc.diag.message_primary or str(exc)).strip()
    detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
    return _peewee_error(exc)(f"{where}{message}{detail}")


def _peewee_error(exc: psycopg2.Error) -> type[Exception]:
    for base in type(exc).__mro__:
        if base.__name__ in PEEWEE_EXCEPTIONS:
            return PEEWEE_EXCEPTIONS[base.__name__]
    return peewee.DatabaseError


_LENGTH = struct.Struct(">i")
_NATURAL_TYPES = {"uuid": uuid.UUID, "text": str, "character varying": str, "citext": str, "boolean": bool,
                  "integer": int, "bigint": int, "timestamp with time zone": dt.datetime}
_PEEWEE_DB_VALUES = {peewee.Field.db_value, peewee.UUIDField.db_value}


def _plain_db_value(field: Field) -> bool:
    """Whether the field's db_value leaves its natural Python values as they are (no custom conversion)."""
    if isinstance(field, peewee.ForeignKeyField):
        return _plain_db_value(field.rel_field)
    return type(field).db_value in _PEEWEE_DB_VALUES


def _cell_encoder(field: Field, pg_type: str, encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """value -> the field's part of a binary COPY row: its length, then its bytes (or the NULL marker)."""
    pack_length = _LENGTH.pack

    def cell(value: Any) -> bytes:
        if value is None:
            return NULL
        value = _plain(field.db_value(value))
        if value is None:
            return NULL
        data = encode(value)
        return pack_length(len(data)) + data

    natural = _NATURAL_TYPES.get(pg_type)
    if natural is None or not _plain_db_value(field):
        return cell

    def fast(value: Any) -> bytes:  # the column's natural Python type needs no db_value
        if type(value) is natural:
            data = encode(value)
            return pack_length(len(data)) + data
        return cell(value)

    return fast


class _Layout:
    """How rows are encoded: each scalar column's values at once, each hooked column by its field."""

    def __init__(self, model: type[Model], given: list[Field], scalars: list[Field],
                 cells: list[Callable[[Any], bytes]], hooked: list[Any]) -> None:
        self.model, self.scalars, self.cells, self.hooked = model, scalars, cells, hooked
        self.names = {f.name for f in given}
        self.field_count = struct.pack(">h", len(scalars) + len(hooked))
        row_bytes = 64 + sum(4 + f.copy_width for f in hooked)
        self.rows_per_chunk = max(1, min(CHUNK_ROWS, CHUNK_BYTES // row_bytes))

    def _by_name(self, chunk: list[Mapping[Any, Any]], start: int) -> list[Mapping[str, Any]]:
        """The chunk's rows keyed by field name, each checked to give the same fields as row 0."""
        rows = []
        for offset, row in enumerate(chunk):
            if row.keys() != self.names:
                named = {k.name if isinstance(k, Field) else k: v for k, v in row.items()}
                if named.keys() != self.names or len(named) != len(row):
                    missing, extra = sorted(self.names - named.keys()), sorted(map(str, named.keys() - self.names))
                    raise CopyRowError(
                        f"row {start + offset}: every row must give the same fields as row 0"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unexpected {', '.join(extra)}" if extra else ""), row=start + offset)
                row = named
            rows.append(row)
        return rows

    def _column(self, rows: list[Mapping[str, Any]], field: Field) -> list[Any]:
        if field.name in self.names:
            return [row[field.name] for row in rows]
        default = field.default
        return [default() for _ in rows] if callable(default) else [default] * len(rows)

    def encode(self, chunk: list[Mapping[Any, Any]], start: int) -> bytes:
        """The binary COPY rows of `chunk` (no header or trailer), whose first row has number `start`."""
        table = self.model._meta.table_name
        rows = self._by_name(chunk, start)
        columns: list[list[Any]] = [[self.field_count] * len(rows)]
        for field, cell in zip(self.scalars, self.cells, strict=True):
            values = self._column(rows, field)
            try:
                columns.append([cell(value) for value in values])
            except (TypeError, ValueError, OverflowError, AttributeError, decimal.InvalidOperation, struct.error):
                for offset, value in enumerate(values):  # find the row and say what is wrong with it
                    try:
                        cell(value)
                    except (TypeError, ValueError, OverflowError, AttributeError, decimal.InvalidOperation,
                            struct.error) as exc:
                        raise CopyRowError(
                            f"row {start + offset}: {table}.{field.column_name}: {exc} (value {repr(value)[:60]})",
                            row=start + offset) from None
                raise
        for field in self.hooked:
            values = self._column(rows, field)
            try:
                columns.append(field.copy_cells(values))
            except ValueError as exc:
                offset = getattr(exc, "offset", 0)
                raise CopyRowError(f"row {start + offset}: {exc}", row=start + offset) from None
        return b"".join(itertools.chain.from_iterable(zip(*columns, strict=True)))
