"""pgvector for peewee with numpy in and out: fields, distances, indexes, search settings, bulk load and read.

- `VectorField(n)` / `HalfVectorField(n)`: `vector(n)` / `halfvec(n)` columns; numpy arrays out.
- `VectorModel`: a model base whose selects read vector columns in binary (fast).
- `HNSWIndex`, `IVFFlatIndex`: vector indexes declared on a model; `search_settings`: SET LOCAL knobs.
- `fetch_matrix`: binary COPY out into one matrix; `copy_rows`, `CopyWriter` (from `kit.copy`) bring them in.
- `nearest`: the k nearest rows of a query, with their distances.
"""

from kit.copy import CopyRowError, CopyWriter, copy_rows
from kit.vector.bulk import fetch_matrix
from kit.vector.fields import MAX_DIMENSIONS, METRICS, HalfVectorField, VectorField, VectorValueError
from kit.vector.indexes import HNSWIndex, IVFFlatIndex, VectorIndex, search_settings
from kit.vector.search import nearest
from kit.vector.select import BinaryVectorSelect, VectorModel

__all__ = [
    "MAX_DIMENSIONS",
    "METRICS",
    "BinaryVectorSelect",
    "CopyRowError",
    "CopyWriter",
    "HNSWIndex",
    "HalfVectorField",
    "IVFFlatIndex",
    "VectorField",
    "VectorIndex",
    "VectorModel",
    "VectorValueError",
    "copy_rows",
    "fetch_matrix",
    "nearest",
    "search_settings",
]
