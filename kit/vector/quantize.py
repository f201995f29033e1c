"""Quantized forms of a vector column for smaller, faster indexes: halfvec (16-bit) and binary (1 bit).

    HNSWIndex(DocumentChunk.embedding, metric="cosine", quantize="halfvec")
        CREATE INDEX ... USING hnsw ((CAST(embedding AS halfvec(1536))) halfvec_cosine_ops)
    HNSWIndex(DocumentChunk.embedding, metric="cosine", quantize="binary")
        CREATE INDEX ... USING hnsw ((CAST(binary_quantize(embedding) AS bit(1536))) bit_hamming_ops)

A search through such an index orders by the same expression (so the planner can use the index),
takes `rerank` times `k` candidates and ranks them again by the exact distance on the full vectors.
"""

from __future__ import annotations

from typing import Any

from peewee import Cast, Expression, Node, fn

from kit.errors import ArgumentError

QUANTIZATIONS = {
    # name: (index type, the largest dimensions pgvector indexes for it, candidates per wanted row)
    "halfvec": ("halfvec", 4_000, 2),
    "binary": ("bit", 64_000, 10),
}


def check_quantize(field: Any, quantize: str | None, owner: str) -> None:
    """ValueError in one sentence if `field` cannot be indexed or searched in the `quantize` form."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise ArgumentError(f"{owner} on {field.label}: unknown quantize {quantize!r}; use one of "
                         f"{', '.join(QUANTIZATIONS)} (or None)")
    if field.field_type not in ("vector", "halfvec") or (quantize == "halfvec" and field.field_type == "halfvec"):
        raise ArgumentError(f"{owner} on {field.label}: quantize={quantize!r} applies to "
                         f"{'vector' if quantize == 'halfvec' else 'vector and halfvec'} columns, "
                         f"not {field.field_type}")


def quantized_column(field: Any, quantize: str) -> Node:
    """The column in its quantized form, as the index is built on it."""
    kind = QUANTIZATIONS[quantize][0]
    source = field if quantize == "halfvec" else fn.binary_quantize(field)
    return Cast(source, f"{kind}({field.dimensions})")


def quantized_distance(field: Any, vector: Node, metric: str, quantize: str) -> Expression:
    """The distance in the quantized form, matching the index: `metric` for halfvec, hamming for binary."""
    if quantize == "halfvec":
        return Expression(quantized_column(field, quantize), field.metrics[metric][0],
                          Cast(vector, f"halfvec({field.dimensions})"))
    return Expression(quantized_column(field, quantize), "<~>",
                      fn.binary_quantize(Cast(vector, f"{field.field_type}({field.dimensions})")))

