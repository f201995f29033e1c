"""Bulk paths for large embedding sets: `copy_rows` / `CopyWriter` (binary COPY in) and `fetch_matrix` (out).

    copy_rows(DocumentChunk, rows)                       # rows: dicts of field values, as for insert_many
    keys, matrix = fetch_matrix(DocumentChunk.select(DocumentChunk.id, DocumentChunk.embedding))

The binary wire format of each column type is written here (the encoders), and rows are encoded a
column at a time in the caller's thread while a worker thread hands the previous chunk to psycopg2.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import itertools
import json
import queue
import re
import struct
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import numpy as np
import peewee
import psycopg2
from peewee import Field, Model

from kit.vector import wire
from kit.vector.fields import VectorField, VectorValueError

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
NULL = struct.pack(">i", -1)
CHUNK_BYTES = 8 << 20  # rows are encoded and queued for sending about this much at a time
CHUNK_ROWS = 2_000  # or this many rows, whichever comes first: the server starts on a table early
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
PG_EPOCH_DATE = dt.date(2000, 1, 1)


class CopyRowError(ValueError):
    """A row given to copy_rows cannot be written; the message names the row index and the column."""


# -- binary encoders of the scalar column types, by PostgreSQL type name --------------------------------


def _numeric(value: Any) -> bytes:
    value = decimal.Decimal(value)
    if not value.is_finite():
        if value.is_nan():
            return struct.pack(">hhHh", 0, 0, 0xC000, 0)
        raise ValueError(f"{value} cannot be stored in a numeric column")
    sign, digits, exponent = value.as_tuple()
    digits_str = "".join(map(str, digits))
    scale = max(0, -exponent)
    # Split the integer and fraction parts into base-10000 groups aligned on the decimal point.
    if exponent >= 0:
        int_part, frac_part = digits_str + "0" * exponent, ""
    else:
        int_part = digits_str[:exponent] if len(digits_str) > -exponent else ""
        frac_part = digits_str[exponent:].rjust(-exponent, "0")
    int_part = int_part.lstrip("0")
    int_groups = [int(int_part[max(0, i - 4):i]) for i in range(len(int_part), 0, -4)][::-1]
    frac_part = frac_part + "0" * (-len(frac_part) % 4)
    frac_groups = [int(frac_part[i:i + 4]) for i in range(0, len(frac_part), 4)]
    groups = int_groups + frac_groups
    weight = len(int_groups) - 1
    while groups and groups[0] == 0:  # leading zero groups (values below 1)
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f">hhHh{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, scale, *groups)


def _timestamp(zone: dt.tzinfo) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime(value.year, value.month, value.day)
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        delta = value - PG_EPOCH
        return struct.pack(">q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)

    return encode


def _date(value: Any) -> bytes:
    if isinstance(value, str):
        value = dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        value = value.date()
    return struct.pack(">i", (value - PG_EPOCH_DATE).days)


def _text(value: Any) -> bytes:
    return str(value).encode("utf-8")


def _json(value: Any) -> bytes:
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")


def _uuid(value: Any) -> bytes:
    return value.bytes if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).bytes


def _packer(fmt: str, cast: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    packer = struct.Struct(fmt).pack
    return lambda value: packer(cast(value))


def _encoders(zone: dt.tzinfo) -> dict[str, Callable[[Any], bytes]]:
    return {
        "boolean": lambda value: b"\x01" if value else b"\x00",
        "smallint": _packer(">h", int),
        "integer": _packer(">i", int),
        "bigint": _packer(">q", int),
        "real": _packer(">f", float),
        "double precision": _packer(">d", float),
        "numeric": _numeric,
        "text": _text,
        "character varying": _text,
        "character": _text,
        "citext": _text,
        "uuid": _uuid,
        "timestamp with time zone": _timestamp(zone),
        "timestamp without time zone": _timestamp(dt.timezone.utc),
        "date": _date,
        "jsonb": lambda value: b"\x01" + _json(value),
        "json": _json,
        "bytea": bytes,
    }


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
                raise CopyRowError(f"row 0: {model._meta.table_name} has no field {key!r}")
        fields.append(field)
    return fields


def _column_types(database: peewee.Database, model: type[Model], target: str | None = None) -> dict[str, str]:
    meta = model._meta
    table = f'"{meta.schema}"."{meta.table_name}"' if meta.schema else f'"{meta.table_name}"'
    table = f'"{target}"' if target else table
    cursor = database.execute_sql(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return dict(cursor.fetchall())


def _session_zone(database: peewee.Database) -> dt.tzinfo:
    name = database.execute_sql("SHOW TimeZone").fetchone()[0]
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.timezone.utc


def _database_default(field: Field) -> bool:
    """Whether the model declares a DEFAULT for the column (the database then fills it in)."""
    return any(str(getattr(c, "sql", "")).upper().startswith("DEFAULT ") for c in field.constraints or [])


def copy_rows(model: type[Model], rows: Iterable[Mapping[Any, Any]], database: peewee.Database | None = None,
              table: str | None = None) -> int:
    """Insert `rows` (dicts of field values, as for insert_many) with binary COPY, all or nothing; return the count.

    `table` copies into another table with the same columns (a staging table) instead of the model's.

    Every row must give the same fields. A field it leaves out gets the column's database default when
    the model declares one (`constraints=[SQL("DEFAULT ...")]`), else its Python default (as with
    insert_many), else whatever the database has. A bad row raises CopyRowError (or the database's
    error) naming the row's index, and nothing is written. `rows` may be a generator; it must not use
    the database connection itself while copy_rows runs.
    """
    database = database or model._meta.database
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    with database.atomic(), CopyWriter(model, list(first.keys()), database, table) as writer:
        writer.write(itertools.chain([first], iterator))
    return writer.count


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
                 table: str | None = None, after: CopyWriter | None = None) -> None:
        self.database = database or model._meta.database
        self.count = 0
        self.after = after
        given = _resolve_fields(model, fields)
        names = {f.name for f in given}
        defaults = [f for f in model._meta.sorted_fields
                    if f.name not in names and f.default is not None and not _database_default(f)]
        vectors = [f for f in given + defaults if isinstance(f, VectorField)]
        scalars = [f for f in given + defaults if not isinstance(f, VectorField)]
        name = model._meta.table_name
        types = _column_types(self.database, model, table)
        self.zone = after.zone if after is not None else _session_zone(self.database)
        encoders = _encoders(self.zone)
        cells = []
        for field in scalars:
            pg_type = types.get(field.column_name)
            if pg_type is None:
                raise CopyRowError(f"row 0: {name} has no column {field.column_name!r} in the database")
            if pg_type not in encoders:
                raise CopyRowError(
                    f"copy_rows cannot write {name}.{field.column_name} (type {pg_type}) in binary; "
                    "use insert_many for this table"
                )
            cells.append(_cell_encoder(field, pg_type, encoders[pg_type]))
        columns = ", ".join(f'"{f.column_name}"' for f in scalars + vectors)
        target = f'"{table}"' if table else (
            f'"{model._meta.schema}"."{name}"' if model._meta.schema else f'"{name}"')
        self.statement = f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT BINARY)"
        self.layout = _Layout(model, given, scalars, cells, vectors)
        self._sender: _Sender | None = None  # the COPY statement being fed
        self._ended: list[_Sender] = []  # statements fed in full, perhaps still running

    def write(self, rows: Iterable[Mapping[Any, Any]]) -> None:
        """Encode `rows` and queue them for sending; raises the first error found so far."""
        iterator = iter(rows)
        while chunk := list(islice(iterator, self.layout.rows_per_chunk)):
            payload = self.layout.encode(chunk, self.count)
            if self._sender is None:
                self._sender = _Sender(self.database.cursor(), self.statement, self.count, self._last())
            try:
                self._sender.send(payload)
            except Exception as exc:
                exc.copy_writer = self  # type: ignore[attr-defined]
                raise
            self.count += len(chunk)

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

    def __init__(self, cursor: Any, statement: str, start: int, previous: _Sender | None) -> None:
        super().__init__(name="kit-copy", daemon=True)
        self.cursor, self.statement, self.start_row, self.previous = cursor, statement, start, previous
        self.chunks: queue.Queue = queue.Queue(QUEUED_CHUNKS)
        self.error: Exception | None = None
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
            self.cursor.copy_expert(self.statement, self, size=CHUNK_BYTES)
        except Exception as exc:  # noqa: BLE001 - handed to the writer's thread, which raises it
            self.error = exc
        finally:
            self.cursor.close()
            while not self._done:  # unblock the writer: take what it still queues until it ends
                chunk = self.chunks.get()
                self._done = chunk is _END or chunk is _ABORT

    def send(self, chunk: bytes) -> None:
        """Queue one encoded chunk; raise the COPY's error if it has failed already."""
        if self.error is not None:
            self.finish()
        self.chunks.put(chunk)

    def end(self) -> None:
        """Mark the end of the rows (once); the statement completes in the background."""
        if not self._ending:
            self._ending = True
            self.chunks.put(_END)

    def finish(self, abort: bool = False) -> None:
        """End the COPY statement and wait for it; raise its error (unless aborting)."""
        if not self._ending:
            self._ending = True
            self.chunks.put(_ABORT if abort else _END)
        self.join()
        if self.error is not None and not abort and not isinstance(self.error, _Aborted):
            if not isinstance(self.error, psycopg2.Error):
                raise self.error
            raise _copy_error(self.error, self.start_row) from self.error


_COPY_LINE = re.compile(r"COPY [^,]+, line (\d+)")


def _copy_error(exc: psycopg2.Error, start: int) -> Exception:
    """The database's error as peewee's, with the row number (counted across COPY statements) first."""
    context = getattr(exc.diag, "context", None) or ""
    match = _COPY_LINE.search(context)
    where = f"row {start + int(match.group(1)) - 1}: " if match else ""
    message = (exc.diag.message_primary or str(exc)).strip()
    detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
    return _peewee_error(exc)(f"{where}{message}{detail}")


def _peewee_error(exc: psycopg2.Error) -> type[Exception]:
    for base in type(exc).__mro__:
        if base.__name__ in peewee.EXCEPTIONS:
            return peewee.EXCEPTIONS[base.__name__]
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
    """How rows are encoded: each scalar column's values at once, the vectors of a chunk as one matrix."""

    def __init__(self, model: type[Model], given: list[Field], scalars: list[Field],
                 cells: list[Callable[[Any], bytes]], vectors: list[VectorField]) -> None:
        self.model, self.scalars, self.cells, self.vectors = model, scalars, cells, vectors
        self.names = {f.name for f in given}
        self.field_count = struct.pack(">h", len(scalars) + len(vectors))
        row_bytes = 64 + sum(4 + 4 + f.dimensions * np.dtype(f.element).itemsize for f in vectors)
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
                        + (f"; unexpected {', '.join(extra)}" if extra else "")
                    )
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
                            f"row {start + offset}: {table}.{field.column_name}: {exc} (value {value!r})"
                        ) from None
                raise
        for field in self.vectors:
            columns.append(self._vector_column(self._column(rows, field), field, start))
        return b"".join(itertools.chain.from_iterable(zip(*columns, strict=True)))

    def _vector_column(self, values: list[Any], field: VectorField, start: int) -> list[Any]:
        matrix, shape = None, (field.dimensions,)
        if all(type(value) is np.ndarray and value.shape == shape for value in values):  # stack them in one go
            matrix = np.stack(values)
            if matrix.dtype != field.dtype:
                matrix = None  # the row by row way below converts and checks each
        nulls = []
        if matrix is None:
            matrix = self._vector_matrix(values, field, nulls, start)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            offset = int(np.flatnonzero(~finite)[0])
            try:
                field.to_array(values[offset])
            except VectorValueError as exc:
                raise CopyRowError(f"row {start + offset}: {exc}") from None
        payload = wire.binary_payload(matrix, field.element)
        width = payload.shape[1]
        flat = memoryview(payload.reshape(-1))
        cells: list[Any] = [flat[i * width:(i + 1) * width] for i in range(len(values))]
        for offset in nulls:
            cells[offset] = NULL
        return cells

    @staticmethod
    def _vector_matrix(values: list[Any], field: VectorField, nulls: list[int], start: int) -> np.ndarray:
        matrix = np.empty((len(values), field.dimensions), dtype=field.dtype)
        for offset, value in enumerate(values):
            if value is None:
                nulls.append(offset)
                matrix[offset] = 0
            elif isinstance(value, np.ndarray) and value.dtype == field.dtype and value.shape == matrix.shape[1:]:
                matrix[offset] = value  # checked below, all rows at once
            else:
                try:
                    matrix[offset] = field.to_array(value)
                except VectorValueError as exc:
                    raise CopyRowError(f"row {start + offset}: {exc}") from None
        return matrix


# -- fetch_matrix -------------------------------------------------------------------------------------

_INT_KEYS = {20: ">i8", 21: ">i2", 23: ">i4"}
_UUID_OID = 2950


def fetch_matrix(query: Any, database: peewee.Database | None = None) -> tuple[Any, np.ndarray]:
    """Run `query` (selecting a key column, then a vector column) via binary COPY; return (keys, matrix).

    `matrix` is (N, n) float32 (float16 for halfvec) in the query's order. `keys` is an int64 numpy
    array for integer keys, else a list (uuid.UUID for uuid keys, str for text, bytes otherwise).
    """
    if database is None:
        database = getattr(getattr(query, "model", None), "_meta", None)
        database = database.database if database is not None else None
    if database is None:
        from kit.db import database
    sql, params = query.sql() if hasattr(query, "sql") else (query, ())
    with database.atomic():
        cursor = database.cursor()
        try:
            sql = cursor.mogrify(sql, params).decode("utf-8")
            cursor.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
            if len(cursor.description) != 2:
                raise ValueError(
                    f"fetch_matrix expects a query selecting 2 columns (key, vector), got {len(cursor.description)}"
                )
            key_oid = cursor.description[0].type_code
            out = io.BytesIO()
            cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT BINARY)", out, size=1 << 20)
        finally:
            cursor.close()
    return _parse_matrix(out.getbuffer(), key_oid)


def _parse_matrix(data: memoryview, key_oid: int) -> tuple[Any, np.ndarray]:
    if bytes(data[:len(COPY_SIGNATURE)]) != COPY_SIGNATURE:
        raise ValueError("fetch_matrix: the server did not return binary COPY data")
    (extension,) = struct.unpack_from(">i", data, len(COPY_SIGNATURE) + 4)
    pos = len(COPY_SIGNATURE) + 8 + extension
    body = np.frombuffer(data, dtype=np.uint8, offset=pos)
    if body.size == 2:  # only the trailer: no rows
        return (np.empty(0, dtype=np.int64) if key_oid in _INT_KEYS else []), np.empty((0, 0), dtype=np.float32)
    fields, key_len = struct.unpack_from(">hi", data, pos)
    if key_len >= 0:
        vec_len, dim = struct.unpack_from(">iH", data, pos + 6 + key_len)
        if vec_len >= 0 and dim:
            element = ">f4" if vec_len == 4 + 4 * dim else ">f2"
            fast = _parse_fixed(body, key_len, vec_len, dim, element, key_oid)
            if fast is not None:
                return fast
    return _parse_rows(data, pos, key_oid)


def _parse_fixed(body: np.ndarray, key_len: int, vec_len: int, dim: int, element: str,
                 key_oid: int) -> tuple[Any, np.ndarray] | None:
    """Every row the same size (fixed-size key, no NULL): view the whole body as one structured array."""
    row = np.dtype([("fields", ">i2"), ("key_len", ">i4"), ("key", f"V{key_len}"), ("vec_len", ">i4"),
                    ("dim", ">u2"), ("unused", ">u2"), ("vec", element, (dim,))])
    if (body.size - 2) % row.itemsize:
        return None
    rows = body[: body.size - 2].view(row)
    if not ((rows["fields"] == 2).all() and (rows["key_len"] == key_len).all()
            and (rows["vec_len"] == vec_len).all() and (rows["dim"] == dim).all()):
        return None
    matrix = rows["vec"].astype(np.float32 if element == ">f4" else np.float16)
    raw_keys = rows["key"]
    if key_oid in _INT_KEYS and np.dtype(_INT_KEYS[key_oid]).itemsize == key_len:
        keys: Any = np.frombuffer(raw_keys.tobytes(), dtype=_INT_KEYS[key_oid]).astype(np.int64)
    else:
        keys = [_decode_key(bytes(k), key_oid) for k in raw_keys]
    return keys, matrix


def _parse_rows(data: memoryview, pos: int, key_oid: int) -> tuple[Any, np.ndarray]:
    """General case (variable-size keys): walk the rows one by one."""
    keys: list[Any] = []
    vectors: list[np.ndarray] = []
    unpack = struct.unpack_from
    while True:
        (fields,) = unpack(">h", data, pos)
        if fields == -1:
            break
        if fields != 2:
            raise ValueError(f"fetch_matrix expects 2 columns (key, vector), got {fields}")
        (key_len,) = unpack(">i", data, pos + 2)
        pos += 6
        key = None if key_len < 0 else _decode_key(bytes(data[pos:pos + key_len]), key_oid)
        pos += max(key_len, 0)
        (vec_len,) = unpack(">i", data, pos)
        pos += 4
        if vec_len < 0:
            raise ValueError(
                f"fetch_matrix: row {len(keys)} (key {key!r}) has a NULL vector; "
                "exclude such rows, e.g. .where(Model.embedding.is_null(False))"
            )
        (dim,) = unpack(">H", data, pos)
        element = ">f4" if vec_len == 4 + 4 * dim else ">f2"
        vectors.append(np.frombuffer(data, dtype=element, count=dim, offset=pos + 4))
        keys.append(key)
        pos += vec_len
    if not vectors:
        return keys, np.empty((0, 0), dtype=np.float32)
    dtype = np.float32 if vectors[0].dtype.itemsize == 4 else np.float16
    if key_oid in _INT_KEYS and None not in keys:
        keys = np.asarray(keys, dtype=np.int64)
    return keys, np.vstack(vectors).astype(dtype)


def _decode_key(raw: bytes, key_oid: int) -> Any:
    if key_oid == _UUID_OID:
        return uuid.UUID(bytes=raw)
    if key_oid in _INT_KEYS:
        return int.from_bytes(raw, "big", signed=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
