"""pgvector's wire formats, in one place: text in, binary out, binary COPY rows.

- Text in (query parameters, `insert_many`): `[x1,x2,...]`, each element a C99 hexadecimal float such
  as `+0x9a3f1cp-030`. pgvector parses elements with `strtof`, which reads hex floats exactly, so a
  float32 round-trips bit for bit; numpy writes the whole vector at once, with no per-float Python work.
- Binary out (`vector_send` / `halfvec_send`, and binary COPY): uint16 dimensions, uint16 unused (0),
  then the elements as big-endian float4 (vector) or float2 (halfvec).
"""

from __future__ import annotations

import numpy as np

HEADER = np.dtype([("dim", ">u2"), ("unused", ">u2")])

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.array([20, 16, 12, 8, 4, 0], dtype=np.uint32)
_PLUS, _MINUS, _ZERO, _X, _P, _COMMA, _CLOSE = (ord(c) for c in "+-0xp,]")
_WIDTH = 15  # sign, "0x", 6 hex digits, "p", exponent sign, 3 exponent digits, separator


def to_text(values: np.ndarray) -> str:
    """pgvector text for a 1-D float32 array (finite values), exact: `[+0x800000p-024,...]`."""
    m, e = np.frexp(values)  # values = m * 2**e with 0.5 <= |m| < 1: a 24-bit integer mantissa
    mantissa = (np.abs(m) * np.float32(1 << 24)).astype(np.uint32)
    exponent = e - 24
    out = np.empty((values.shape[0], _WIDTH), dtype=np.uint8)
    out[:, 0] = np.where(np.signbit(values), _MINUS, _PLUS)
    out[:, 1] = _ZERO
    out[:, 2] = _X
    out[:, 3:9] = _HEX[(mantissa[:, None] >> _SHIFTS) & 15]
    out[:, 9] = _P
    out[:, 10] = np.where(exponent < 0, _MINUS, _PLUS)
    magnitude = np.abs(exponent)
    out[:, 11] = _ZERO + magnitude // 100
    out[:, 12] = _ZERO + (magnitude // 10) % 10
    out[:, 13] = _ZERO + magnitude % 10
    out[:, 14] = _COMMA
    out[-1, 14] = _CLOSE
    return "[" + out.tobytes().decode("ascii")


def from_text(text: str, dtype: np.dtype) -> np.ndarray:
    """Parse pgvector's text output (`[1,2.5,...]`) into a 1-D array of `dtype`."""
    return np.fromstring(text[1:-1], dtype=np.float32, sep=",").astype(dtype, copy=False)


def from_binary(data: bytes | memoryview, element: str, dtype: np.dtype) -> np.ndarray:
    """Decode `vector_send`/`halfvec_send` output; `element` is '>f4' or '>f2'."""
    header = np.frombuffer(data, dtype=HEADER, count=1)[0]
    values = np.frombuffer(data, dtype=element, offset=HEADER.itemsize)
    if values.shape[0] != header["dim"]:
        raise ValueError(f"vector data holds {values.shape[0]} elements but its header says {header['dim']}")
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
    out[:, 8:] = matrix.astype(element).view(np.uint8).reshape(rows, dim * size)
    return out
