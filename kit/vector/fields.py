"""`VectorField` and `HalfVectorField`: pgvector columns with numpy values in and out.

In: numpy arrays (float or integer dtype), lists and tuples, and pgvector-python's `Vector`,
`HalfVector` and `SparseVector`, checked in Python before anything reaches the database. Out: a 1-D
numpy array (float32 for vector, float16 for halfvec), or None. `VectorField()` without dimensions is
an unsized `vector` column (any length per row; pgvector cannot index it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from peewee import Expression, Field, Node
from pgvector import HalfVector, SparseVector, Vector

from kit.copy.encoders import NULL
from kit.errors import ArgumentError, VectorValueError
from kit.vector import wire
from kit.vector.select import BinaryRead

_LENGTH = struct.Struct(">i")
MAX_DIMENSIONS = 16_000  # pgvector's limit for vector and halfvec columns
METRICS = {
    "l2": ("<->", "l2_distance"),
    "cosine": ("<=>", "cosine_distance"),
    "inner_product": ("<#>", "max_inner_product"),
    "l1": ("<+>", "l1_distance"),
}



class Distances:
    """The distance operators of a pgvector column, by method and by metric name (`metrics`)."""

    metrics: dict[str, tuple[str, str]] = METRICS
    # the peewee Field's this is mixed into
    model: Any
    name: str
    column_name: str
    field_type: ClassVar[str]
    db_value: Callable[[Any], Any]

    if TYPE_CHECKING:
        @property
        def label(self) -> str:
            """`table.column` when bound to a model (each field's own)."""

    def _distance(self, op: str, vector: Any) -> Expression:
        # A node (another vector column, a subquery, a Value already converted) is used as it is.
        value = vector if isinstance(vector, Node) else self.to_value(vector)  # type: ignore[attr-defined]
        return Expression(self, op, value)

    def distance(self, vector: Any, metric: str) -> Expression:
        """The distance to `vector` by metric name (the column's `metrics`)."""
        try:
            op = self.metrics[metric][0]
        except KeyError:
            raise ArgumentError(f"unknown metric {metric!r}; use one of {', '.join(self.metrics)}") from None
        return self._distance(op, vector)


class VectorDistances(Distances):
    """l2, cosine, inner product and l1: vector, halfvec and sparsevec columns."""

    def l2_distance(self, vector: Any) -> Expression:
        """Euclidean distance to `vector` (`<->`)."""
        return self._distance("<->", vector)

    def cosine_distance(self, vector: Any) -> Expression:
        """Cosine distance to `vector`, 1 - cosine similarity (`<=>`)."""
        return self._distance("<=>", vector)

    def max_inner_product(self, vector: Any) -> Expression:
        """The negative inner product with `vector` (`<#>`): smaller is more similar."""
        return self._distance("<#>", vector)

    def l1_distance(self, vector: Any) -> Expression:
        """Taxicab distance to `vector` (`<+>`)."""
        return self._distance("<+>", vector)


def wrong_dimensions(label: str, expected: int, got: int) -> VectorValueError:
    """A vector of another size than its column's."""
    return VectorValueError(f"{label}: expected {expected} dimensions, got {got}")


def column_label(field: Field, fallback: str) -> str:
    """`table.column` of a bound field (for error messages), else `fallback`."""
    model = getattr(field, "model", None)
    return f"{model._meta.table_name}.{field.column_name}" if model is not None else fallback


def per_value_cells(values: list[Any], encode: Any) -> list[Any]:
    """Binary COPY fields of values encoded one at a time (length, bytes; NULL for None); errors carry `offset`."""
    cells: list[Any] = []
    for offset, value in enumerate(values):
        if value is None:
            cells.append(NULL)
            continue
        try:
            data = encode(value)
        except VectorValueError as exc:
            exc.offset = offset
            raise
        cells.append(_LENGTH.pack(len(data)) + data)
    return cells


def checked_dimensions(owner: str, dimensions: Any, limit: int = MAX_DIMENSIONS, what: str = "dimensions") -> Any:
    """`dimensions` if it is None (unsized) or a whole number from 1 to `limit`; ValueError otherwise."""
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= limit):
        raise ArgumentError(f"{owner} {what} must be a whole number from 1 to {limit} (or None), got {dimensions!r}")
    return dimensions


class VectorField(BinaryRead, VectorDistances, Field):
    """A pgvector `vector(n)` column holding float32 numpy arrays (`vector` when `dimensions` is None).

    `as_list=True` reads values as lists of floats, as pgvector-python's field does (writes take either).
    """

    field_type = "vector"
    send_function = "vector_send"
    dtype: np.dtype[Any] = np.dtype(np.float32)
    element = ">f4"  # the binary wire format's element type

    def __init__(self, dimensions: int | None = None, *args: Any, as_list: bool = False, **kwargs: Any) -> None:
        self.dimensions = checked_dimensions(type(self).__name__, dimensions)
        self.as_list = as_list
        super().__init__(*args, **kwargs)

    def get_modifiers(self) -> list[int] | None:
        """The type modifier: `vector(n)`, or none for an unsized column."""
        return [self.dimensions] if self.dimensions else None

    @property
    def label(self) -> str:
        """`table.column` when bound to a model, for error messages."""
        return column_label(self, f"{type(self).__name__}({self.dimensions or ''})")

    @property
    def copy_width(self) -> int:
        """Bytes of one value in binary COPY (header and elements), for sizing chunks."""
        return 4 + (self.dimensions or 1024) * np.dtype(self.element).itemsize

    def copy_cells(self, values: list[Any]) -> list[Any]:
        """Binary COPY fields of a column of values, converted as one matrix (the `kit.copy` hook)."""
        if self.dimensions is None:  # rows of any length: one at a time
            return per_value_cells(values, lambda value: bytes(
                wire.binary_payload(self.to_array(value)[None, :], self.element)[0, 4:]))
        matrix, shape, nulls = None, (self.dimensions,), []
        if all(type(value) is np.ndarray and value.shape == shape for value in values):  # stack them in one go
            matrix = np.stack(values)
            if matrix.dtype != self.dtype:
                matrix = None  # the row by row way below converts and checks each
        if matrix is None:
            matrix = np.empty((len(values), self.dimensions), dtype=self.dtype)
            for offset, value in enumerate(values):
                if value is None:
                    nulls.append(offset)
                    matrix[offset] = 0
                elif isinstance(value, np.ndarray) and value.dtype == self.dtype and value.shape == shape:
                    matrix[offset] = value  # checked below, all rows at once
                else:
                    matrix[offset] = self._checked(value, offset)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            offset = int(np.flatnonzero(~finite)[0])
            self._checked(values[offset], offset)
        payload = wire.binary_payload(matrix, self.element)
        width = payload.shape[1]
        flat = memoryview(payload.reshape(-1))  # type: ignore[arg-type]  # numpy arrays are buffers
        cells: list[Any] = [flat[i * width:(i + 1) * width] for i in range(len(values))]
        for offset in nulls:
            cells[offset] = NULL
        return cells

    def _checked(self, value: Any, offset: int) -> np.ndarray:
        try:
            return self.to_array(value)
        except VectorValueError as exc:
            exc.offset = offset
            raise

    def to_array(self, value: Any) -> np.ndarray:
        """Check `value` and return it as a 1-D array of this field's dtype; VectorValueError if it is unfit."""
        if isinstance(value, (Vector, HalfVector, SparseVector)):  # pgvector-python's value objects
            value = value.to_numpy()
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (list, tuple)):
            try:
                array = np.asarray(value)
            except ValueError as exc:  # ragged nesting
                raise VectorValueError(f"{self.label}: not a flat list of numbers ({exc})") from None
        else:
            raise VectorValueError(
                f"{self.label}: expected a numpy array, list or tuple of numbers, got {type(value).__name__}"
            )
        if array.dtype.kind not in "fiu":
            raise VectorValueError(f"{self.label}: values must be numbers, got {_describe_kind(array)}")
        if array.ndim != 1:
            raise VectorValueError(f"{self.label}: expected a 1-D vector, got an array of shape {array.shape}")
        if array.shape[0] < 1:
            raise VectorValueError(f"{self.label}: a vector needs at least 1 dimension, got an empty one")
        if array.shape[0] != self.dimensions:
            if array.shape[0] > MAX_DIMENSIONS:
                raise VectorValueError(
                    f"{self.label}: {array.shape[0]} dimensions is more than pgvector allows ({MAX_DIMENSIONS})"
                )
            if self.dimensions is not None:
                raise wrong_dimensions(self.label, self.dimensions, array.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(self.dtype, copy=False)
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array))[0])
            given = value[bad]
            if np.isfinite(given):
                raise VectorValueError(
                    f"{self.label}: element {bad} is {given!r}, out of {self.dtype.name} range"
                )
            raise VectorValueError(f"{self.label}: element {bad} is {given!r}; NaN and infinity cannot be stored")
        return array

    def db_value(self, value: Any) -> str | None:
        """The pgvector text of a checked value (exact hex floats), or None."""
        if value is None:
            return None
        return wire.to_text(self.to_array(value).astype(np.float32, copy=False))

    def python_value(self, value: Any) -> np.ndarray | list[float] | None:
        """A numpy array (a list with `as_list`) from the database: binary (`vector_send`) or pgvector text."""
        if value is None:
            return None
        if isinstance(value, (memoryview, bytes)):
            array = wire.from_binary(value, self.element, self.dtype)
        elif isinstance(value, np.ndarray):
            array = value
        else:
            array = wire.from_text(value, self.dtype)
        return array.tolist() if self.as_list else array


class HalfVectorField(VectorField):
    """A pgvector `halfvec(n)` column (half the memory) holding float16 numpy arrays."""

    field_type = "halfvec"
    send_function = "halfvec_send"
    dtype = np.dtype(np.float16)
    element = ">f2"


def _describe_kind(array: np.ndarray) -> str:
    if array.dtype.kind == "b":
        return "booleans"
    if array.dtype.kind in "US":
        return "text"
    if array.dtype.kind == "O":
        odd = next((v for v in array.ravel() if not isinstance(v, (int, float, np.number))), None)
        return f"a {type(odd).__name__} ({odd!r})" if odd is not None else "objects"
    return f"dtype {array.dtype}"


def copy_stand_in(kind: type[Field]) -> Callable[[Field], Field]:
    """For `kit.copy`: a field of `kind` that writes another field's column (pgvector-python's, say) in binary.

    It takes the other field's values as they are (lists, numpy arrays, pgvector-python's objects), and
    its text (`'[1,2,3]'`) through that field's own `python_value`.
    """
    def make(field: Field) -> Field:
        size = getattr(field, "dimensions", None) or getattr(field, "max_length", None)
        stand: Any = kind(size, null=True)
        stand.bind(field.model, field.name, set_attribute=False)  # its label and column are the field's
        stand.column_name = field.column_name
        cells, parse = stand.copy_cells, field.python_value
        stand.copy_cells = lambda values: cells([parse(v) if isinstance(v, str) else v for v in values])
        return stand

    return make
