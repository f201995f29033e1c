"""`SparseVectorField`: a pgvector `sparsevec(n)` column, read and written as pgvector-python's `SparseVector`.

In: a `SparseVector`, a dense list, tuple or numpy array (zeros dropped), or `{index: value}` with the
column's dimensions (indices from 0, as pgvector-python counts). Out: a `SparseVector`, so code
written for pgvector-python keeps working. Distances: l2, cosine, inner product, l1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from peewee import Field
from pgvector import SparseVector

from kit.errors import VectorValueError
from kit.vector.fields import (
    MAX_DIMENSIONS,
    VectorDistances,
    checked_dimensions,
    column_label,
    per_value_cells,
    wrong_dimensions,
)
from kit.vector.select import BinaryRead

MAX_SPARSE_DIMENSIONS = 1_000_000_000  # pgvector's limit for sparsevec dimensions
MAX_INDEXED_NONZERO = 1_000  # pgvector indexes sparse vectors with at most this many non-zero elements


class SparseVectorField(BinaryRead, VectorDistances, Field):
    """A pgvector `sparsevec(n)` column (`sparsevec` when `dimensions` is None)."""

    field_type = "sparsevec"
    send_function = "sparsevec_send"

    def __init__(self, dimensions: int | None = None, *args: Any, **kwargs: Any) -> None:
        self.dimensions = checked_dimensions(type(self).__name__, dimensions, MAX_SPARSE_DIMENSIONS)
        super().__init__(*args, **kwargs)

    def get_modifiers(self) -> list[int] | None:
        """The type modifier: `sparsevec(n)`, or none for an unsized column."""
        return [self.dimensions] if self.dimensions else None

    @property
    def label(self) -> str:
        """`table.column` when bound to a model, for error messages."""
        return column_label(self, f"SparseVectorField({self.dimensions})")

    def to_sparse(self, value: Any) -> SparseVector:
        """Check `value` and return it as a `SparseVector`; VectorValueError if it is unfit."""
        try:
            if isinstance(value, SparseVector):
                sparse = value
            elif isinstance(value, dict):
                if self.dimensions is None:
                    raise VectorValueError(f"{self.label}: {{index: value}} needs the column's dimensions; "
                                           "give a SparseVector(values, dimensions) instead")
                sparse = SparseVector(value, self.dimensions)
            elif isinstance(value, (list, tuple, np.ndarray)) or type(value).__module__.startswith("scipy.sparse"):
                sparse = SparseVector(value)
            else:
                raise VectorValueError(f"{self.label}: expected a SparseVector, a dict of index: value, or a list "
                                       f"or numpy array of numbers, got {type(value).__name__}")
        except (TypeError, ValueError) as exc:
            if isinstance(exc, VectorValueError):
                raise
            raise VectorValueError(f"{self.label}: not a sparse vector ({exc})") from None
        dimensions = sparse.dimensions()
        if self.dimensions is not None and dimensions != self.dimensions:
            raise wrong_dimensions(self.label, self.dimensions, dimensions)
        if not 1 <= dimensions <= MAX_SPARSE_DIMENSIONS:
            raise VectorValueError(f"{self.label}: {dimensions} dimensions is outside 1 to {MAX_SPARSE_DIMENSIONS}")
        bad = next((i for i in sparse.indices() if not 0 <= i < dimensions), None)
        if bad is not None:
            raise VectorValueError(f"{self.label}: index {bad} is outside 0 to {dimensions - 1}")
        for index, element in zip(sparse.indices(), sparse.values(), strict=True):
            if not math.isfinite(element) or abs(element) > np.finfo(np.float32).max:
                raise VectorValueError(f"{self.label}: element {index} is {element!r}; sparsevec holds finite float32")
        return sparse

    def db_value(self, value: Any) -> str | None:
        """pgvector's text of a checked value (`{1:1.5,3:2}/5`, indices from 1), or None."""
        return None if value is None else self.to_sparse(value).to_text()

    def python_value(self, value: Any) -> SparseVector | None:
        """A `SparseVector` from the database's text or binary form."""
        if value is None or isinstance(value, SparseVector):
            return value
        if isinstance(value, (bytes, memoryview)):
            return SparseVector.from_binary(bytes(value))
        return SparseVector.from_text(value)

    @property
    def copy_width(self) -> int:
        """Bytes of one value in binary COPY, estimated, for sizing chunks."""
        return 12 + 8 * min(self.dimensions or MAX_INDEXED_NONZERO, MAX_INDEXED_NONZERO)

    def copy_cells(self, values: list[Any]) -> list[Any]:
        """Binary COPY fields of a column of values (`sparsevec_send`'s format; the `kit.copy` hook)."""
        return per_value_cells(values, lambda value: self.to_sparse(value).to_binary())


__all__ = ["MAX_DIMENSIONS", "MAX_INDEXED_NONZERO", "SparseVectorField"]
