"""`FixedBitField`: a pgvector-ready `bit(n)` column for binary vectors, as pgvector-python names it.

In: text of 0s and 1s (as pgvector-python takes it), pgvector-python's `Bit`, a list of booleans, a
boolean (or 0/1) numpy array, or bytes. Out: the text of 0s and 1s (as pgvector-python returns it).
Distances: hamming (`<~>`) and jaccard (`<%>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from peewee import Expression, Field
from pgvector import Bit

from kit.errors import VectorValueError
from kit.vector.fields import Distances, checked_dimensions, column_label, per_value_cells

MAX_BITS = 83_886_080  # PostgreSQL's limit for bit(n)
BIT_METRICS = {"hamming": ("<~>", "hamming_distance"), "jaccard": ("<%%>", "jaccard_distance")}


class FixedBitField(Distances, Field):
    """A `bit(n)` column (`bit` when `max_length` is None) of binary vectors."""

    field_type = "bit"
    metrics = BIT_METRICS

    def __init__(self, max_length: int | None = None, *args: Any, **kwargs: Any) -> None:
        self.max_length = checked_dimensions(type(self).__name__, max_length, MAX_BITS, "max_length")
        super().__init__(*args, **kwargs)

    @property
    def dimensions(self) -> int | None:
        """The number of bits (pgvector's dimensions of a binary vector)."""
        return self.max_length

    def get_modifiers(self) -> list[int] | None:
        """The type modifier: `bit(n)`."""
        return [self.max_length] if self.max_length else None

    @property
    def label(self) -> str:
        """`table.column` when bound to a model, for error messages."""
        return column_label(self, f"FixedBitField({self.max_length})")

    def to_bit(self, value: Any) -> Bit:
        """Check `value` and return it as a `Bit`; VectorValueError if it is unfit."""
        if isinstance(value, Bit):
            bits = value
        else:
            if isinstance(value, np.ndarray) and value.dtype != np.bool_ and value.dtype.kind in "iu":
                if value.size and (value.min() < 0 or value.max() > 1):
                    raise VectorValueError(f"{self.label}: a binary vector holds only 0 and 1")
                value = value.astype(np.bool_)
            try:
                bits = Bit(value)
            except (TypeError, ValueError) as exc:
                raise VectorValueError(f"{self.label}: expected a string of 0s and 1s, a Bit, a list of booleans "
                                       f"or a boolean numpy array ({exc})") from None
        length = len(bits.to_text())
        if self.max_length is not None and length != self.max_length:
            raise VectorValueError(f"{self.label}: expected {self.max_length} bits, got {length}")
        return bits

    def db_value(self, value: Any) -> str | None:
        """The text of 0s and 1s, checked, or None."""
        return None if value is None else self.to_bit(value).to_text()

    def python_value(self, value: Any) -> str | None:
        """The text of 0s and 1s (as pgvector-python returns it)."""
        return value

    def hamming_distance(self, vector: Any) -> Expression:
        """The number of bits that differ from `vector` (`<~>`)."""
        return self._distance("<~>", vector)

    def jaccard_distance(self, vector: Any) -> Expression:
        """1 - |a AND b| / |a OR b| (`<%>`)."""
        return self._distance("<%%>", vector)

    @property
    def copy_width(self) -> int:
        """Bytes of one value in binary COPY, for sizing chunks."""
        return 4 + ((self.max_length or 1024) + 7) // 8

    def copy_cells(self, values: list[Any]) -> list[Any]:
        """Binary COPY fields of a column of values (`bit_send`'s format; the `kit.copy` hook)."""
        return per_value_cells(values, lambda value: self.to_bit(value).to_binary())
