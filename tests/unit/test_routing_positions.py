"""WAL positions as `reads_after` takes them (kit.routing.lsn_int / lsn_text)."""

from __future__ import annotations

import pytest

from kit import ArgumentError
from kit.routing import lsn_int, lsn_text


@pytest.mark.parametrize("text, value", [
    ("0/0", 0), ("0/16B3748", 0x16B3748), ("1/0", 1 << 32), ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
    ("a/b", (0xA << 32) | 0xB), (None, 0), ("", 0),
])
def test_positions_read(text, value):
    assert lsn_int(text) == value


@pytest.mark.parametrize("value", [0, 1, 0x16B3748, (7 << 32) | 9, (1 << 64) - 1])
def test_positions_round_trip(value):
    assert lsn_int(lsn_text(value)) == value


@pytest.mark.parametrize("bad", ["garbage", "1/", "/1", "1/2/3", "123456789/0", "0/-1", " 0/1", 12, b"0/1"])
def test_anything_else_is_one_sentence(bad):
    with pytest.raises(ArgumentError, match=r"^read position: expected a WAL position as write_position\(\) gives"):
        lsn_int(bad)
