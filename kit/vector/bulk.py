"""Bulk paths for large embedding sets: `copy_rows` (binary COPY in) and `fetch_matrix` (binary COPY out).

    copy_rows(DocumentChunk, rows)                       # rows: dicts of field values, as for insert_many
    keys, matrix = fetch_matrix(DocumentChunk.select(DocumentChunk.id, DocumentChunk.embedding))
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import re
import struct
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
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
CHUNK_BYTES = 32 << 20  # encode and send at most about this much per COPY statement
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


def copy_rows(model: type[Model], rows: Iterable[Mapping[Any, Any]], database: peewee.Database | None = None,
              table: str | None = None) -> int:
    """Insert `rows` (dicts of field values, as for insert_many) with binary COPY, all or nothing; return the count.

    `table` copies into another table with the same columns (a staging table) instead of the model's.

    Every row must give the same fields; fields it leaves out get their Python default (as with
    insert_many) or the column's database default. A bad row raises CopyRowError (or the database's
    error) naming the row's index, and nothing is written.
    """
    database = database or model._meta.database
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    given = _resolve_fields(model, first.keys())
    names = {f.name for f in given}
    defaults = [f for f in model._meta.sorted_fields if f.name not in names and f.default is not None]
    vectors = [f for f in given + defaults if isinstance(f, VectorField)]
    scalars = [f for f in given + defaults if not isinstance(f, VectorField)]
    target = table
    table = model._meta.table_name
    with database.atomic():
        types = _column_types(database, model, target)
        encoders = _encoders(_session_zone(database))
        scalar_encoders = []
        for field in scalars:
            pg_type = types.get(field.column_name)
            if pg_type is None:
                raise CopyRowError(f"row 0: {table} has no column {field.column_name!r} in the database")
            if pg_type not in encoders:
                raise CopyRowError(
                    f"copy_rows cannot write {table}.{field.column_name} (type {pg_type}) in binary; "
                    "use insert_many for this table"
                )
            scalar_encoders.append(encoders[pg_type])
        columns = ", ".join(f'"{f.column_name}"' for f in scalars + vectors)
        statement = f'COPY "{target or table}" ({columns}) FROM STDIN WITH (FORMAT BINARY)'
        if model._meta.schema and not target:
            statement = statement.replace(f'"{table}"', f'"{model._meta.schema}"."{table}"', 1)
        layout = _Layout(model, given, defaults, scalars, scalar_encoders, vectors)
        count = 0
        for start, chunk in _chunks(first, iterator, layout.rows_per_chunk):
            payload = layout.encode(chunk, start)
            _copy(database, statement, payload, start)
            count += len(chunk)
    return count


class _Layout:
    """How each row is encoded: scalar fields first (per value), then vectors (per chunk, with numpy)."""

    def __init__(self, model: type[Model], given: list[Field], defaults: list[Field], scalars: list[Field],
                 scalar_encoders: list[Callable[[Any], bytes]], vectors: list[VectorField]) -> None:
        self.model, self.given, self.defaults = model, given, defaults
        self.scalars, self.scalar_encoders, self.vectors = scalars, scalar_encoders, vectors
        self.keys = {f.name for f in given}
        self.field_count = struct.pack(">h", len(scalars) + len(vectors))
        row_bytes = 64 + sum(4 + 4 + f.dimensions * np.dtype(f.element).itemsize for f in vectors)
        self.rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)

    def _value(self, row: Mapping[Any, Any], field: Field) -> Any:
        if field.name in row:
            return row[field.name]
        if field.name in self.keys:  # given with the Field object as its key
            return next(v for k, v in row.items() if k is field)
        default = field.default
        return default() if callable(default) else default

    def encode(self, chunk: list[Mapping[Any, Any]], start: int) -> bytes:
        """The binary COPY stream for `chunk`, whose first row has index `start`."""
        table = self.model._meta.table_name
        prefixes: list[bytes] = []
        matrices = []
        for offset, row in enumerate(chunk):
            index = start + offset
            keys = {k.name if isinstance(k, Field) else k for k in row}
            if keys != self.keys:
                missing, extra = sorted(self.keys - keys), sorted(keys - self.keys)
                raise CopyRowError(
                    f"row {index}: every row must give the same fields as row 0"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unexpected {', '.join(map(str, extra))}" if extra else "")
                )
            parts = [self.field_count]
            for field, encode in zip(self.scalars, self.scalar_encoders, strict=True):
                value = self._value(row, field)
                try:
                    value = None if value is None else _plain(field.db_value(value))
                    data = NULL if value is None else encode(value)
                except (TypeError, ValueError, OverflowError, decimal.InvalidOperation, struct.error) as exc:
                    raise CopyRowError(f"row {index}: {table}.{field.column_name}: {exc} (value {value!r})") from None
                parts.append(data if data is NULL else struct.pack(">i", len(data)) + data)
            prefixes.append(b"".join(parts))
        for field in self.vectors:
            matrix = np.empty((len(chunk), field.dimensions), dtype=field.dtype)
            nulls = []
            for offset, row in enumerate(chunk):
                value = self._value(row, field)
                if value is None:
                    nulls.append(offset)
                    matrix[offset] = 0
                    continue
                try:
                    matrix[offset] = field.to_array(value)
                except VectorValueError as exc:
                    raise CopyRowError(f"row {start + offset}: {exc}") from None
            payload = wire.binary_payload(matrix, field.element)
            matrices.append((payload, set(nulls)))
        out = io.BytesIO()
        out.write(COPY_HEADER)
        for offset, prefix in enumerate(prefixes):
            out.write(prefix)
            for payload, nulls in matrices:
                out.write(NULL if offset in nulls else payload[offset].data)
        out.write(COPY_TRAILER)
        return out.getvalue()


def _chunks(first: Mapping[Any, Any], rest: Iterator[Mapping[Any, Any]], size: int) -> Iterator[tuple[int, list]]:
    chunk = [first, *islice(rest, size - 1)]
    start = 0
    while chunk:
        yield start, chunk
        start += len(chunk)
        chunk = list(islice(rest, size))


_COPY_LINE = re.compile(r"COPY [^,]+, line (\d+)")


def _copy(database: peewee.Database, statement: str, payload: bytes, start: int) -> None:
    cursor = database.cursor()
    try:
        cursor.copy_expert(statement, io.BytesIO(payload), size=1 << 20)
    except psycopg2.Error as exc:
        context = getattr(exc.diag, "context", None) or ""
        match = _COPY_LINE.search(context)
        where = f"row {start + int(match.group(1)) - 1}: " if match else ""
        message = (exc.diag.message_primary or str(exc)).strip()
        detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
        raise _peewee_error(exc)(f"{where}{message}{detail}") from exc
    finally:
        cursor.close()


def _peewee_error(exc: psycopg2.Error) -> type[Exception]:
    for base in type(exc).__mro__:
        if base.__name__ in peewee.EXCEPTIONS:
            return peewee.EXCEPTIONS[base.__name__]
    return peewee.DatabaseError


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
