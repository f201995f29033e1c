"""pgvector's wire formats (kit.vector.wire): exact text round trips and checked binary headers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kit.vector.wire import from_binary, from_text, to_text


@pytest.mark.parametrize("values", [
    [0.0, -0.0, 1.0, -1.5],
    [np.finfo(np.float32).max, np.finfo(np.float32).tiny, -np.finfo(np.float32).smallest_subnormal],
    list(np.random.default_rng(7).standard_normal(1536)),
])
def test_text_is_exact_to_the_bit(values):
    array = np.asarray(values, dtype=np.float32)
    text = to_text(array)
    assert text.startswith("[") and text.endswith("]")
    back = np.asarray([float.fromhex(v) for v in text[1:-1].split(",")], dtype=np.float32)
    assert back.tobytes() == array.tobytes()


def test_text_output_is_read_back():
    assert from_text("[1,2.5,-3]", np.float32).tolist() == [1.0, 2.5, -3.0]


def test_binary_is_read_and_a_header_that_lies_is_refused():
    payload = struct.pack(">HH", 3, 0) + np.asarray([1, 2, 3], dtype=">f4").tobytes()
    assert from_binary(payload, ">f4", np.float32).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="holds 2 elements but its header says 3"):
        from_binary(payload[:-4], ">f4", np.float32)
