"""Vector indexes declared on a model (HNSW, IVFFlat) and per-query search settings.

    DocumentChunk.add_index(HNSWIndex(DocumentChunk.embedding, metric="cosine", m=16, ef_construction=64))

    with search_settings(ef_search=100, iterative_scan="relaxed_order"):
        rows = list(query)        # SET LOCAL inside a transaction: nothing leaks to the pool
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peewee import SQL, Database, EnclosedNodeList, Entity, ModelIndex, NodeList

from kit.errors import ArgumentError, ArgumentTypeError
from kit.vector.fields import METRICS, Distances
from kit.vector.quantize import QUANTIZATIONS, check_quantize, quantized_column

INDEX_MAX_DIMENSIONS = {"vector": 2_000, "halfvec": 4_000, "bit": 64_000}  # sparsevec: 1,000 non-zero elements
OPCLASS_SUFFIX = {"l2": "l2_ops", "cosine": "cosine_ops", "inner_product": "ip_ops", "l1": "l1_ops",
                  "hamming": "hamming_ops", "jaccard": "jaccard_ops"}
ITERATIVE_SCAN = ("off", "strict_order", "relaxed_order")
PARAMETER_ABBREVIATIONS = {"ef_construction": "efc"}


class VectorIndex(ModelIndex):
    """An approximate nearest-neighbour index on one vector column; see HNSWIndex and IVFFlatIndex."""

    method = ""
    concurrently = False  # CREATE INDEX CONCURRENTLY (outside a transaction; writes go on meanwhile)
    metrics: tuple[str, ...] = (*METRICS, "hamming", "jaccard")
    types: tuple[str, ...] = ("vector", "halfvec", "sparsevec", "bit")
    # peewee's Index keeps these privately (its stubs do not declare them)
    _name: str
    _table: Any
    _where: Any
    _safe: bool

    def __init__(self, field: Distances, metric: str = "cosine", name: str | None = None,
                 where: Any = None, quantize: str | None = None, **parameters: int) -> None:
        if not isinstance(field, Distances) or getattr(field, "model", None) is None:
            raise ArgumentTypeError(f"{type(self).__name__} needs a vector column (VectorField, HalfVectorField, "
                            f"SparseVectorField, FixedBitField) bound to a model, got {field!r}")
        if field.field_type not in self.types:
            raise ArgumentError(f"{type(self).__name__} on {field.label}: pgvector's {self.method} does not index "
                             f"{field.field_type} columns; use HNSWIndex")
        known = [m for m in self.metrics if m in field.metrics]
        if metric not in known:
            raise ArgumentError(f"{type(self).__name__} on {field.label}: unknown metric {metric!r}; "
                             f"use one of {', '.join(known)}")
        dimensions = getattr(field, "dimensions", None)  # a bit column's is its length
        if dimensions is None:
            raise ArgumentError(f"{type(self).__name__} on {field.label}: pgvector indexes only sized columns; "
                             f"declare {type(field).__name__}(n)")
        check_quantize(field, quantize, type(self).__name__)
        indexed_type = QUANTIZATIONS[quantize][0] if quantize else field.field_type
        limit = INDEX_MAX_DIMENSIONS.get(indexed_type, dimensions)
        if dimensions > limit:
            raise ArgumentError(
                f"{type(self).__name__} on {field.label}: pgvector indexes {indexed_type} columns of at most "
                f"{limit} dimensions, this one has {dimensions} (quantize='halfvec' allows 4000, "
                f"'binary' 64000)"
            )
        for key, value in parameters.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{type(self).__name__} on {field.label}: {key} must be a positive whole number")
        self.field, self.metric, self.parameters, self.quantize = field, metric, parameters, quantize
        # A quantized index is on an expression of the column: halfvec keeps the metric, binary is hamming.
        self.target = quantized_column(field, quantize) if quantize else field
        self.opclass = ("bit_hamming_ops" if quantize == "binary" else
                        f"{indexed_type}_{OPCLASS_SUFFIX[metric]}")
        # The parameters are part of the default name, so that changing them shows up as a new index
        # (a rebuild) in generated migrations and in the drift check.
        suffix = "_".join(f"{PARAMETER_ABBREVIATIONS.get(k, k)}{v}" for k, v in parameters.items())
        kind = f"{metric}_{quantize}" if quantize else metric
        name = name or f"{field.model._meta.table_name}_{field.column_name}_{self.method}_{kind}_{suffix}"
        super().__init__(field.model, (self.target,), name=name, where=where, using=self.method)

    def __sql__(self, ctx: Any) -> Any:
        """CREATE INDEX ... USING method (column opclass) WITH (parameters) [WHERE ...]."""
        with ctx.scope_values(subquery=True):
            ctx.literal("CREATE INDEX CONCURRENTLY " if self.concurrently else "CREATE INDEX ")
            if self._safe:
                ctx.literal("IF NOT EXISTS ")
            ctx.sql(Entity(self._name)).literal(" ON ").sql(self._table).literal(f" USING {self.method} ")
            target = EnclosedNodeList([self.target]) if self.quantize else self.field  # an expression: in ()
            ctx.sql(EnclosedNodeList([NodeList((target, SQL(self.opclass)))]))
            if self.parameters:
                ctx.literal(" WITH (" + ", ".join(f"{k} = {v}" for k, v in self.parameters.items()) + ")")
            if self._where is not None:
                ctx.literal(" WHERE ").sql(self._where)
        return ctx


class HNSWIndex(VectorIndex):
    """HNSW: better recall/speed trade-off, no training step; `m` links per node, `ef_construction` build width."""

    method = "hnsw"

    def __init__(self, field: Distances, metric: str = "cosine", m: int = 16, ef_construction: int = 64,
                 name: str | None = None, where: Any = None, quantize: str | None = None) -> None:
        if ef_construction < 2 * m:
            raise ArgumentError(f"HNSWIndex: ef_construction ({ef_construction}) must be at least 2 * m ({2 * m})")
        super().__init__(field, metric, name, where, quantize, m=m, ef_construction=ef_construction)


class IVFFlatIndex(VectorIndex):
    """IVFFlat: faster to build, smaller; build it after loading data; `lists` clusters (rows / 1000 is a start)."""

    method = "ivfflat"
    metrics = ("l2", "cosine", "inner_product", "hamming")
    types = ("vector", "halfvec", "bit")

    def __init__(self, field: Distances, metric: str = "cosine", lists: int = 100,
                 name: str | None = None, where: Any = None, quantize: str | None = None) -> None:
        super().__init__(field, metric, name, where, quantize, lists=lists)


@contextmanager
def search_settings(
    database: Database | None = None,
    *,
    ef_search: int | None = None,
    iterative_scan: str | None = None,
    max_scan_tuples: int | None = None,
    probes: int | None = None,
) -> Iterator[None]:
    """Apply pgvector search settings with SET LOCAL for the queries in this block (one transaction)."""
    if database is None:
        from kit.db import database as default

        database = default
    settings = checked_settings(ef_search=ef_search, iterative_scan=iterative_scan,
                                max_scan_tuples=max_scan_tuples, probes=probes)
    with database.atomic():
        if settings:
            database.execute_sql(settings_sql(settings))
        yield


def checked_settings(
    *,
    ef_search: int | None = None,
    iterative_scan: str | None = None,
    max_scan_tuples: int | None = None,
    probes: int | None = None,
) -> list[tuple[str, Any]]:
    """pgvector's setting names and checked values for `search_settings`' arguments; ValueError if one is unfit."""
    settings: list[tuple[str, Any]] = []
    for name, value in (("hnsw.ef_search", ef_search), ("hnsw.max_scan_tuples", max_scan_tuples),
                        ("ivfflat.probes", probes)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name} must be a positive whole number, got {value!r}")
        settings.append((name, value))
    if iterative_scan is not None:
        if iterative_scan not in ITERATIVE_SCAN:
            raise ArgumentError(f"hnsw.iterative_scan must be one of {', '.join(ITERATIVE_SCAN)}, "
                                f"got {iterative_scan!r}")
        settings.append(("hnsw.iterative_scan", iterative_scan))
        settings.append(("ivfflat.iterative_scan", "relaxed_order" if iterative_scan != "off" else "off"))
    return settings


def settings_sql(settings: list[tuple[str, Any]]) -> str:
    """`SET LOCAL name = value; ...` for checked settings (sent ahead of a query: one round trip)."""
    return "".join(f"SET LOCAL {name} = {value if isinstance(value, int) else repr(value)}; "
                   for name, value in settings)
