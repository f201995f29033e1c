"""Nearest-neighbour search over any query: the k nearest rows, with their distances, nearest first."""

from __future__ import annotations

from typing import Any

from peewee import ModelSelect

from kit.vector.fields import VectorField
from kit.vector.indexes import search_settings

DEFAULT_EF_SEARCH = 40  # pgvector's default hnsw.ef_search


def nearest(
    query: ModelSelect,
    field: VectorField,
    embedding: Any,
    k: int = 10,
    metric: str = "cosine",
    ef_search: int | None = None,
    exact: bool = False,
) -> list[Any]:
    """The `k` rows of `query` nearest to `embedding` by `metric`, nearest first, each with `.distance`.

    Filters in `query` (an organization, say) never make the answer come back short: the HNSW scan
    runs with pgvector's iterative scan, which keeps reading the index until `k` rows pass the filter.
    `exact=True` scans the table instead of the index (the ground truth; slow on large tables).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}")
    distance = field.distance(embedding, metric)
    ranked = query.select_extend(distance.alias("distance")).order_by(distance).limit(k)
    database = query.model._meta.database
    ef_search = ef_search or max(DEFAULT_EF_SEARCH, k)
    with search_settings(database, ef_search=ef_search, iterative_scan="relaxed_order"):
        if exact:
            database.execute_sql("SET LOCAL enable_indexscan = off")
            database.execute_sql("SET LOCAL enable_bitmapscan = off")
        rows = list(ranked)
    # relaxed_order may return near-ties slightly out of order: put them in order.
    rows.sort(key=_distance_of)
    return rows


def _distance_of(row: Any) -> float:
    if isinstance(row, dict):
        return row["distance"]
    if isinstance(row, tuple) and not hasattr(row, "distance"):
        return row[-1]
    return row.distance
