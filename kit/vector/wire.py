"""pgvector's wire formats, in one place: text in, binary out, binary COPY rows.

- Text in (query parameters, `insert_many`): `[x1,x2,...]`, each element a C99 hexadecimal float such
  as `+0x9a3f1cp-030`. pgvector parses elements with `strtof`, which reads hex floats exactly, so a
  float32 round-trips bit for bit; numpy writes the whole vector at once, with no per-float Python work.
- Binary out (`vector_send` / `halfvec_send`, binary COPY, and both ways on the asyncio path): uint16
  dimensions, uint16 unused (0), then the elements as big-endian float4 (vector) or float2 (halfvec).
"""

from __future__ import annotations

import numpy as np
import psycopg2.extensions

from kit.errors import VectorValueError

HEADER = np.dtype([("dim", ">u2"), ("unused", ">u2")])

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_EXP_MIN = -200  # float32 exponents, less the mantissa's 24 bits, lie in [-173, 104]
# "p-173" ... "p+104" as columns of ASCII bytes, indexed by exponent - _EXP_MIN
_EXPONENTS = np.array([list(f"p{e:+04d}".encode()) for e in range(_EXP_MIN, 200)], dtype=np.uint8).T.copy()


class VectorText(str):
    """pgvector text made of characters that need no SQL escaping: psycopg2 quotes it without a scan.

    It carries its float32 array as `array`, which the asyncio database sends in binary instead.
    """

    array: np.ndarray | None = None


psycopg2.extensions.register_adapter(VectorText, lambda text: psycopg2.extensions.AsIs(f"'{text}'"))


def to_text(values: np.ndarray) -> VectorText:
    """pgvector text for a 1-D float32 array (finite values), exact: `[+0x800000p-024,...]`."""
    m, e = np.frexp(values)  # values = m * 2**e with 0.5 <= |m| < 1: a 24-bit integer mantissa
    mantissa = (np.abs(m) * np.float32(1 << 24)).astype(np.uint32)
    # One row per character position (contiguous writes), transposed into text at the end.
    chars = np.empty((15, values.shape[0]), dtype=np.uint8)
    chars[0] = 43 + 2 * np.signbit(values)  # "+" or "-"
    chars[1] = ord("0")
    chars[2] = ord("x")
    for k in range(6):
        chars[3 + k] = _HEX.take((mantissa >> (20 - 4 * k)) & 15)
    chars[9:14] = _EXPONENTS.take(e - (24 + _EXP_MIN), axis=1)
    chars[14] = ord(",")
    chars[14, -1] = ord("]")
    text = VectorText("[" + chars.T.tobytes().decode("ascii"))
    text.array = values
    return text


def to_binary(values: np.ndarray, element: str) -> bytes:
    """`vector_recv`/`halfvec_recv` input for a 1-D array; `element` is '>f4' or '>f2'."""
    head = np.array([(values.shape[0], 0)], dtype=HEADER).tobytes()
    return head + np.asarray(values).astype(element, copy=False).tobytes()


def from_text(text: str, dtype: np.dtype) -> np.ndarray:
    """Parse pgvector's text output (`[1,2.5,...]`) into a 1-D array of `dtype`."""
    return np.fromstring(text[1:-1], dtype=np.float32, sep=",").astype(dtype, copy=False)


def from_binary(data: bytes | memoryview, element: str, dtype: np.dtype) -> np.ndarray:
    """Decode `vector_send`/`halfvec_send` output; `element` is '>f4' or '>f2'."""
    header = np.frombuffer(data, dtype=HEADER, count=1)[0]
    values = np.frombuffer(data, dtype=element, offset=HEADER.itemsize)
    if values.shape[0] != header["dim"]:
        raise VectorValueError(f"vector data holds {values.shape[0]} elements but its header says {header['dim']}")
    return values.astype(dtype)


def binary_payload(matrix: np.ndarray, element: str) -> np.ndarray:
    """Binary COPY field bodies for each row of `matrix`: an (N, 4 + 4 + dim * size) uint8 array.

    Each row is int32 field length, then the vector in binary (header and big-endian elements).
    """
    rows, dim = matrix.shape
    size = np.dtype(element).itemsize
    length = HEADER.itemsize + dim * size
    out = np.empty((rows, 4 + length), dtype=np.uint8)
    out[:, :4] = np.frombuffer(np.array([length], dtype=">i4").tobytes(), dtype=np.uint8)
    out[:, 4:8] = np.frombuffer(np.array([(dim, 0)], dtype=HEADER).tobytes(), dtype=np.uint8)
    out[:, 8:].view(element)[:] = matrix  # converted to big-endian in one pass, straight into place
    return out
