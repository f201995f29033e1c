"""Nearest-neighbour search over any query: the k nearest rows, with their distances, nearest first.

A filtered search (one organization's chunks, say) is planned by the filter's size, counted first
with a probe that stops at `exact_below` rows:

- **exact** when the filter selects fewer than `exact_below` rows: the rows come through the
  filter's own index (organization_id's b-tree) and are ranked exactly. For a small tenant this is
  both the true answer and the fastest one (no graph to walk past other tenants' rows). From
  `OWN_GRAPH_FROM` rows on, a tenant with a graph of its own (`kit maintain`, `kit.vector.tenants`)
  is searched through it instead (asked of the planner with EXPLAIN once, then remembered).
- **index** otherwise: the vector index (HNSW) with pgvector's iterative scan, which keeps reading
  the graph until `k` rows pass the filter. Should the scan still stop short (it gives up after
  `hnsw.max_scan_tuples`), the exact plan answers instead: a search never comes back short.

`EXACT_BELOW` is measured, not guessed: `python benchmarks/search.py` times both plans on tenants of
growing size and prints where the exact scan stops being the faster one. A filter's count is reused
for `COUNT_TTL` seconds (per process), so a tenant's repeated searches cost one round trip each; a
tenant crossing the threshold meanwhile gets the other plan a little later, and both are correct.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from peewee import SQL, Database, Expression, ModelSelect, Value

from kit.db.contract import riding
from kit.errors import ArgumentError, StatementTimeout
from kit.vector.fields import Distances
from kit.vector.indexes import VectorIndex, checked_settings, settings_sql
from kit.vector.quantize import QUANTIZATIONS, check_quantize, quantized_distance

DEFAULT_EF_SEARCH = 40  # pgvector's default hnsw.ef_search
MAX_EF_SEARCH = 1000  # pgvector's largest hnsw.ef_search
# A search's arguments are bounded before any SQL: a nearest-neighbour search returns a page of rows,
# not a table (an HNSW scan walks no more than MAX_EF_SEARCH candidates), so k, the candidates a
# quantized plan reranks and ef_search stay within what one index scan serves.
MAX_K = MAX_EF_SEARCH
MAX_RERANK = 100
AS_INDEXED = "as indexed"  # quantize: as the vector index the model declares for the field and metric
EXACT_BELOW = 3_000  # rows; where the exact scan stops being faster (`benchmarks/search.py`; docs/vectors.md)
OWN_GRAPH_FROM = 1_500  # rows; from here a tenant's own graph (`kit maintain`) beats the exact scan
TENANT_INDEX = re.compile(r".+_tenant_[0-9a-f]{12}")  # the names of tenant indexes (`kit.vector.tenants`)
INDEX_SCAN = re.compile(r"Index Scan using (\S+)")
COUNT_TTL = 30.0  # seconds a filter's count is reused: a tenant's size moves slowly, either plan is correct
COUNT_CACHE_SIZE = 4096  # filters remembered
_COUNTS: dict[tuple[Any, ...], tuple[int, float]] = {}
_COUNTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class SearchPlan:
    """How a search runs: `method` ("exact" or "index"), the filter's rows counted up to `exact_below`."""

    method: str  # "exact", "index", or "index (binary, rerank 10)" through a quantized index
    filter_rows: int | None  # None: the query has no filter (nothing was counted)
    query: ModelSelect  # the statement to run, ranked nearest first with `.distance`
    candidates: int  # rows the index scan must yield (k, or k x rerank through a quantized index)


class Neighbours(list):
    """The rows `nearest` found, nearest first, with the `plan` that found them."""

    plan: SearchPlan


def plan_search(
    query: ModelSelect,
    field: Distances,
    embedding: Any,
    k: int = 10,
    metric: str = "cosine",
    exact: bool | None = None,
    exact_below: int = EXACT_BELOW,
    quantize: str | None = AS_INDEXED,
    rerank: int | None = None,
) -> SearchPlan:
    """The plan for the `k` rows of `query` nearest to `embedding`: counts a filter's rows (one probe query)."""
    bounded("k", k, 1, MAX_K, "rows")
    bounded("exact_below", exact_below, 0, None, "rows")
    if exact not in (None, True, False):
        raise ArgumentError(f"exact must be True, False or None (choose by the filter's size), got {exact!r}")
    if rerank is not None:
        bounded("rerank", rerank, 1, MAX_RERANK, "candidates per row")
    if metric not in getattr(field, "metrics", {metric: None}):
        raise ArgumentError(f"metric must be one of {', '.join(field.metrics)} for {field.name}, got {metric!r}")
    quantize = indexed_quantize(field, metric) if quantize == AS_INDEXED else quantize
    check_quantize(field, quantize, "nearest")
    # converted once (however often the query is rendered), checked against the column
    vector = Value(field.db_value(embedding), converter=False, unpack=False)
    distance = field.distance(vector, metric)
    filter_rows = None
    state: Any = query  # peewee's private query state, which its stubs do not declare
    if exact is None and (state._where is not None or any(state._joins.values())):  # a filter, or a join
        filter_rows = count_up_to(query, exact_below)
        exact = filter_rows < exact_below
        if exact and filter_rows >= OWN_GRAPH_FROM:  # a tenant index of its own beats the exact scan from here
            index_plan = plan_search(query, field, embedding, k, metric, False, exact_below, quantize, rerank)
            if has_own_graph(query, index_plan.query):
                return SearchPlan(index_plan.method, filter_rows, index_plan.query, index_plan.candidates)
    if exact or quantize:
        # The vector index serves only ORDER BY <column> <op> <constant>: "+ 0" keeps this ranking off it.
        distance = Expression(distance, "+", SQL("0"))
    candidates = k
    if exact:
        method, quantize = "exact", None
    elif quantize:
        # Candidates through the quantized index, ranked again by the exact distance.
        method = f"index ({quantize}, rerank {rerank or QUANTIZATIONS[quantize][2]})"
        key: Any = query.model._meta.primary_key
        candidates = k * (rerank or QUANTIZATIONS[quantize][2])
        shortlist = query.select(key).order_by(quantized_distance(field, vector, metric, quantize)).limit(candidates)
        query = query.where(key.in_(shortlist))
    else:
        method = "index"
    # Ordering by the output name sends the query vector once.
    ranked = query.select_extend(distance.alias("distance")).order_by(SQL('"distance"')).limit(k)
    return SearchPlan(method, filter_rows, ranked, candidates)


def bounded(name: str, value: Any, low: int, high: int | None, unit: str) -> int:
    """`value` if it is a whole number from `low` to `high` (None: no top); ArgumentError, one sentence, else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low:,} to {high:,}" if high is not None else f"{low:,} or more"
        raise ArgumentError(f"{name} must be a whole number of {unit} {span}, got {str(value)[:40]!r}")
    return value


def indexed_quantize(field: Distances, metric: str) -> str | None:
    """The quantization of the vector index the model declares on `field` for `metric` (None: full vectors)."""
    found = [index for index in getattr(field.model._meta, "indexes", ())
             if isinstance(index, VectorIndex) and index.field is field
             and (index.metric == metric or index.quantize == "binary")]
    if any(not index.quantize for index in found):
        return None
    return found[0].quantize if found else None


def count_up_to(query: ModelSelect, limit: int) -> int:
    """The rows `query` selects, counted no further than `limit` (a bounded probe, remembered a while)."""
    database = query.model._meta.database
    sql, params = _sql_of(database, query.select(SQL("1")).order_by().limit(limit))
    return _remembered(("count", id(database), sql, tuple(params)), lambda: read_sql(database)(
        f"SELECT count(*) FROM ({sql}) AS probe", params).fetchone()[0])


def has_own_graph(query: ModelSelect, ranked: ModelSelect) -> bool:
    """Whether the planner searches `ranked` through a tenant index of its own (remembered a while)."""
    database = query.model._meta.database
    sql, params = _sql_of(database, ranked)
    where, where_params = _sql_of(database, query.select(SQL("1")).order_by())

    def explain() -> bool:
        lines = [line for (line,) in read_sql(database)("EXPLAIN " + sql, params).fetchall()]
        return any(TENANT_INDEX.fullmatch(name) for line in lines for name in INDEX_SCAN.findall(line))

    return _remembered(("graph", id(database), where, tuple(where_params)), explain)


def forget() -> None:
    """Drop the remembered filter counts and tenant-graph answers (after a bulk load, or new tenant indexes)."""
    with _COUNTS_LOCK:
        _COUNTS.clear()


def _remembered(key: tuple[Any, ...], compute: Any) -> Any:
    now = time.monotonic()
    cached = _COUNTS.get(key)
    if cached is not None and now - cached[1] < COUNT_TTL:
        return cached[0]
    value = compute()
    with _COUNTS_LOCK:
        if len(_COUNTS) >= COUNT_CACHE_SIZE:
            _COUNTS.pop(next(iter(_COUNTS)), None)  # the oldest entry
        _COUNTS[key] = (value, now)
    return value


def nearest(
    query: ModelSelect,
    field: Distances,
    embedding: Any,
    k: int = 10,
    metric: str = "cosine",
    ef_search: int | None = None,
    exact: bool | None = None,
    exact_below: int = EXACT_BELOW,
    quantize: str | None = AS_INDEXED,
    rerank: int | None = None,
) -> Neighbours:
    """The `k` rows of `query` nearest to `embedding` by `metric`, nearest first, each with `.distance`.

    `exact=None` plans by the filter's size (see the module docstring); `exact=True` ranks every row
    the query selects (the ground truth), `exact=False` always uses the vector index. Through a
    quantized index (`quantize`: by default as the model's index on the column is; "halfvec", "binary"
    or None to choose), `rerank` x `k` candidates are ranked again by the exact distance. Never short:
    fewer than `k` rows come back only when the query selects fewer than `k`.
    """
    database: Database = query.model._meta.database
    if ef_search is not None:
        bounded("ef_search", ef_search, 1, MAX_EF_SEARCH, "candidates")  # checked on every plan, exact too
    plan = plan_search(query, field, embedding, k, metric, exact, exact_below, quantize, rerank)
    rows = _run(database, plan, ef_search)
    if len(rows) < k and plan.method != "exact":  # the index scan gave up: rank exactly
        plan = plan_search(query, field, embedding, k, metric, True, exact_below)
        rows = _run(database, plan, ef_search)
    # relaxed_order may return near-ties slightly out of order: put them in order.
    rows.sort(key=_distance_of)
    found = Neighbours(rows)
    found.plan = plan
    return found


def plan_settings(plan: SearchPlan, ef_search: int | None = None) -> str:
    """The SET LOCALs an index plan runs with (iterative scan; ef_search for its candidates), to send first.

    Sent in the same round trip as the query: outside a transaction the statements form one implicit
    transaction, so the settings end with it and never reach the pool. The exact plan needs none.
    """
    if plan.method == "exact":
        return ""
    ef_search = ef_search or min(MAX_EF_SEARCH, max(DEFAULT_EF_SEARCH, plan.candidates))
    return settings_sql(checked_settings(ef_search=ef_search, iterative_scan="relaxed_order"))


def _sql_of(database: Database, query: Any) -> tuple[str, list[Any]]:
    """A query's SQL and parameters, from the statement cache (`kit.db.shapes`) where the database has one."""
    sql_of = getattr(database, "sql_of", None)
    return sql_of(query) if sql_of is not None else query.sql()


def _run(database: Database, plan: SearchPlan, ef_search: int | None) -> list[Any]:
    sql, params = _sql_of(database, plan.query)
    with search_limit(database) as limit, riding(limit + plan_settings(plan, ef_search)):
        cursor = read_sql(database)(sql, params)  # the settings ride before it: the statement is the search's own
        return list(cast(Any, plan.query)._get_cursor_wrapper(cursor))


@contextlib.contextmanager
def search_limit(database: Database) -> Iterator[str]:
    """The SET LOCAL that gives a search its own, tighter time limit (`DATABASE_SEARCH_TIMEOUT`), to send first.

    A search is the statement a user's input shapes most, so it gets less time than others: a hostile
    or unlucky one ends in one sentence (`StatementTimeout` naming the variable) and gives its
    connection back. Only outside a transaction: there the setting ends with the search's implicit
    transaction, where inside one it would cut the caller's later statements too (they keep
    `DATABASE_STATEMENT_TIMEOUT`).
    """
    settings = getattr(database, "settings", None)
    milliseconds = settings.search_timeout_ms if settings is not None else 0
    if not milliseconds or database.in_transaction():
        yield ""
        return
    try:
        yield f"SET LOCAL statement_timeout = {milliseconds}; "
    except StatementTimeout as exc:
        raise StatementTimeout(f"the search ran past its time limit ({milliseconds:,} ms, DATABASE_SEARCH_TIMEOUT) "
                               "and the server cancelled it", limit_ms=milliseconds,
                               variable="DATABASE_SEARCH_TIMEOUT") from exc


def read_sql(database: Database) -> Any:
    """How to send SQL that only reads: the kit database's `read_sql` (a replica may serve it), else `execute_sql`."""
    return getattr(database, "read_sql", database.execute_sql)


def _distance_of(row: Any) -> float:
    if isinstance(row, dict):
        return row["distance"]
    if isinstance(row, tuple) and not hasattr(row, "distance"):
        return row[-1]
    return row.distance


__all__ = ["DEFAULT_EF_SEARCH", "EXACT_BELOW", "MAX_K", "OWN_GRAPH_FROM", "Neighbours", "SearchPlan", "bounded",
           "count_up_to", "forget", "has_own_graph", "nearest", "plan_search", "plan_settings",
           "search_limit"]
