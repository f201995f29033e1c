"""pgvector for peewee with numpy in and out: fields, distances, indexes, search settings, bulk load and read.

- `VectorField(n)` / `HalfVectorField(n)`: `vector(n)` / `halfvec(n)` columns (unsized without n); numpy out.
- `SparseVectorField(n)`: `sparsevec(n)`, pgvector-python's `SparseVector` in and out.
- `FixedBitField(n)`: `bit(n)` binary vectors (text of 0s and 1s), hamming and jaccard distances.
- Vector columns are read in binary (`vector_send`) on any peewee model (`kit.vector.select`).
- `HNSWIndex`, `IVFFlatIndex`: vector indexes declared on a model; `search_settings`: SET LOCAL knobs.
- `ensure_tenant_indexes`: a partial HNSW index of its own for each big tenant (`kit maintain`).
- `fetch_matrix`: binary COPY out into one matrix; `copy_rows`, `CopyWriter` (from `kit.copy`) bring them in.
- `nearest`: the k nearest rows of a query, with their distances, planned by the filter's size
  (`plan_search`); `quantize="halfvec"|"binary"` indexes and searches a smaller form of a column.
"""

from kit.copy import CopyRowError, CopyWriter, copy_rows
from kit.copy.writer import register_stand_in
from kit.vector.bit import FixedBitField
from kit.vector.bulk import fetch_matrix
from kit.vector.fields import MAX_DIMENSIONS, METRICS, HalfVectorField, VectorField, VectorValueError, copy_stand_in
from kit.vector.indexes import HNSWIndex, IVFFlatIndex, VectorIndex, search_settings
from kit.vector.search import EXACT_BELOW, Neighbours, SearchPlan, nearest, plan_search
from kit.vector.select import BinaryRead, VectorModel
from kit.vector.sparse import SparseVectorField
from kit.vector.tenants import TenantIndexes, ensure_tenant_indexes

# pgvector's columns written by binary COPY whatever field declares them (pgvector-python's own too)
for _type, _kind in (("vector", VectorField), ("halfvec", HalfVectorField), ("sparsevec", SparseVectorField),
                     ("bit", FixedBitField)):
    register_stand_in(_type, copy_stand_in(_kind))

__all__ = [
    "EXACT_BELOW",
    "MAX_DIMENSIONS",
    "METRICS",
    "BinaryRead",
    "CopyRowError",
    "CopyWriter",
    "FixedBitField",
    "HNSWIndex",
    "HalfVectorField",
    "IVFFlatIndex",
    "Neighbours",
    "SearchPlan",
    "SparseVectorField",
    "TenantIndexes",
    "VectorField",
    "VectorIndex",
    "VectorModel",
    "VectorValueError",
    "copy_rows",
    "ensure_tenant_indexes",
    "fetch_matrix",
    "nearest",
    "plan_search",
    "search_settings",
]
