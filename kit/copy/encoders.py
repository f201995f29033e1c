"""The binary COPY wire format of PostgreSQL's scalar column types: one encoder per type name.

Each encoder takes a (non-NULL) Python value and returns the field's bytes, without the length prefix.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

from kit.errors import CopyRowError

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
NULL = struct.pack(">i", -1)
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
PG_EPOCH_DATE = dt.date(2000, 1, 1)

def _numeric(value: Any) -> bytes:
    value = decimal.Decimal(value)
    if not value.is_finite():
        if value.is_nan():
            return struct.pack(">hhHh", 0, 0, 0xC000, 0)
        raise CopyRowError(f"{value} cannot be stored in a numeric column")
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


def encoders(zone: dt.tzinfo) -> dict[str, Callable[[Any], bytes]]:
    """The encoders by PostgreSQL type name; naive timestamps (with time zone) are read in `zone`."""
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
        "timestamp without time zone": _timestamp(dt.UTC),
        "date": _date,
        "jsonb": lambda value: b"\x01" + _json(value),
        "json": _json,
        "bytea": bytes,
    }
