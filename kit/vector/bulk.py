"""Reading large embedding sets out: `fetch_matrix` (binary COPY out into one numpy matrix).

    keys, matrix = fetch_matrix(DocumentChunk.select(DocumentChunk.id, DocumentChunk.embedding))

Writing them in is `kit.copy` (`copy_rows`, `CopyWriter`), which vector fields feed through their
`copy_cells` hook.
"""

from __future__ import annotations

import io
import struct
import uuid
from typing import Any

import numpy as np
import peewee

from kit.copy.encoders import COPY_SIGNATURE
from kit.errors import ArgumentError, VectorValueError
from kit.telemetry import operation

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
        from kit.db import database as default

        database = default
    sql, params = query.sql() if hasattr(query, "sql") else (query, ())
    with operation("kit.fetch_matrix"), database.atomic():
        # Through the database, so that the statement carries what rides with statements (the tenant
        # context: row-level security then shows the COPY below the same rows, in the same transaction).
        described = database.execute_sql(f"SELECT * FROM ({sql}) AS q LIMIT 0", params).description
        cursor = database.cursor()
        try:
            sql = cursor.mogrify(sql, params).decode("utf-8")
            if len(described) != 2:
                raise ArgumentError(
                    f"fetch_matrix expects a query selecting 2 columns (key, vector), got {len(described)}"
                )
            key_oid = described[0].type_code
            out = io.BytesIO()
            cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT BINARY)", out, size=1 << 20)
        finally:
            cursor.close()
    return _parse_matrix(out.getbuffer(), key_oid)


def _parse_matrix(data: memoryview, key_oid: int) -> tuple[Any, np.ndarray]:
    if bytes(data[:len(COPY_SIGNATURE)]) != COPY_SIGNATURE:
        raise VectorValueError("fetch_matrix: the server did not return binary COPY data")
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
            raise ArgumentError(f"fetch_matrix expects 2 columns (key, vector), got {fields}")
        (key_len,) = unpack(">i", data, pos + 2)
        pos += 6
        key = None if key_len < 0 else _decode_key(bytes(data[pos:pos + key_len]), key_oid)
        pos += max(key_len, 0)
        (vec_len,) = unpack(">i", data, pos)
        pos += 4
        if vec_len < 0:
            raise ArgumentError(
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
        return np.asarray(keys, dtype=np.int64), np.vstack(vectors).astype(dtype)
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
