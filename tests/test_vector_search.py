"""Vector indexes and nearest-neighbour search against the real server: DDL, the index in use, filtered recall."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import as_owner, create_owned, drop_owned
from peewee import AutoField, IntegerField, Model

from kit import ArgumentError
from kit.db import database
from kit.vector import HalfVectorField, HNSWIndex, IVFFlatIndex, VectorField, VectorModel, copy_rows, nearest

DIM = 32


class Point(VectorModel):
    id = AutoField()
    org = IntegerField(index=True)
    embedding = VectorField(DIM)
    half = HalfVectorField(DIM, null=True)

    class Meta:
        database = database
        table_name = "search_points"


Point.add_index(HNSWIndex(Point.embedding, metric="cosine", m=16, ef_construction=64))
Point.add_index(IVFFlatIndex(Point.half, metric="l2", lists=10))


def index_definitions() -> dict[str, str]:
    cursor = database.execute_sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'search_points'")
    return dict(cursor.fetchall())


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((50, DIM)).astype(np.float32) * 3
    return (centers[rng.integers(0, 50, n)] + rng.standard_normal((n, DIM)).astype(np.float32)).astype(np.float32)


@pytest.fixture(scope="module")
def points(test_db_url):
    """20,000 clustered points; organization 1 owns 1% of them, organization 3 10 of them, 2 the rest."""
    rng = np.random.default_rng(11)
    data = clustered(20_000, rng)
    orgs = np.where(rng.random(20_000) < 0.01, 1, 2)
    orgs[np.flatnonzero(orgs == 2)[:10]] = 3
    create_owned(Point)
    copy_rows(Point, [{"org": int(o), "embedding": v} for o, v in zip(orgs, data, strict=True)])
    with as_owner(Point) as owner:  # only the owner may ANALYZE its table
        owner.execute_sql("ANALYZE search_points")
    yield data, orgs
    drop_owned(Point)


def test_indexes_are_created_with_method_opclass_and_parameters(points):
    defs = index_definitions()
    hnsw = defs["search_points_embedding_hnsw_cosine_m16_efc64"]
    assert "USING hnsw (embedding vector_cosine_ops) WITH (m='16', ef_construction='64')" in hnsw
    ivf = defs["search_points_half_ivfflat_l2_lists10"]
    assert "USING ivfflat (half halfvec_l2_ops) WITH (lists='10')" in ivf


def test_explain_shows_the_hnsw_index_for_a_distance_ordered_limit(points):
    data, _ = points
    query = Point.select(Point.id).order_by(Point.embedding.cosine_distance(data[0])).limit(10)
    sql, params = query.sql()
    plan = "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())
    assert "Index Scan using search_points_embedding_hnsw_cosine_m16_efc64" in plan


def exact_neighbours(data, orgs, q, k, org=None):
    x, y = data.astype(np.float64), q.astype(np.float64)
    cos = 1 - (x @ y) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y))
    if org is not None:
        cos = np.where(orgs == org, cos, np.inf)
    return set((np.argsort(cos)[:k] + 1).tolist())  # ids start at 1 in insertion order


# 20,000 small rows: a scan of the whole table costs about as much as a walk of the graph, and the
# planner's pick turns on a few pages of layout. Tests about walking the graph take the graph.
ON_THE_GRAPH = "SET LOCAL enable_seqscan = off"


def test_filtered_search_is_never_short_and_keeps_recall(points):
    """HNSW with a 1% filter the b-tree cannot serve ("org + 0"), so that the graph is what is walked."""
    data, orgs = points
    sql, params = Point.select(Point.id).where((Point.org + 0) == 1).order_by(
        Point.embedding.cosine_distance(data[0])).limit(10).sql()
    with database.atomic():
        database.execute_sql(ON_THE_GRAPH)
        plan = "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())
    assert "Index Scan using search_points_embedding_hnsw_cosine_m16_efc64" in plan
    rng = np.random.default_rng(5)
    recalls = []
    for q in data[rng.integers(0, len(data), 20)]:
        with database.atomic():
            database.execute_sql(ON_THE_GRAPH)
            found = nearest(Point.select(Point.id).where((Point.org + 0) == 1), Point.embedding, q, k=10,
                            exact=False)
        assert len(found) == 10 and found.plan.method == "index"
        distances = [r.distance for r in found]
        assert distances == sorted(distances)
        assert {r.id for r in found} <= set((np.flatnonzero(orgs == 1) + 1).tolist())
        recalls.append(len({r.id for r in found} & exact_neighbours(data, orgs, q, 10, org=1)) / 10)
    assert np.mean(recalls) >= 0.9


def test_plain_hnsw_filtering_would_come_back_short(points):
    """What `nearest` avoids: without an iterative scan, the filter runs after ef_search candidates."""
    data, _ = points
    with database.atomic():
        database.execute_sql(f"SET LOCAL hnsw.iterative_scan = off; {ON_THE_GRAPH}")
        rows = list(Point.select(Point.id).where((Point.org + 0) == 1)
                    .order_by(Point.embedding.cosine_distance(data[3])).limit(10))
    assert len(rows) < 10


def explain(query) -> str:
    sql, params = query.sql()
    return "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params).fetchall())


def test_the_plan_follows_the_filters_size(points):
    """A small tenant is ranked exactly through its own index (recall 1.0); a big one through HNSW."""
    data, orgs = points
    hnsw = "search_points_embedding_hnsw_cosine_m16_efc64"
    rng = np.random.default_rng(8)
    small = Point.select(Point.id).where(Point.org == 1)  # ~200 rows
    for q in data[rng.integers(0, len(data), 10)]:
        found = nearest(small, Point.embedding, q, k=10, exact_below=1000)
        assert found.plan.method == "exact" and found.plan.filter_rows == np.count_nonzero(orgs == 1)
        assert {r.id for r in found} == exact_neighbours(data, orgs, q, 10, org=1)
        plan = explain(found.plan.query)
        assert hnsw not in plan and "Index Scan using point_org" in plan, plan
    # the probe stops counting at the threshold
    big = nearest(Point.select(Point.id).where(Point.org == 2), Point.embedding, data[0], k=10, exact_below=1000)
    assert big.plan.method == "index" and big.plan.filter_rows == 1000
    with database.atomic():
        database.execute_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
        assert f"Index Scan using {hnsw}" in explain(big.plan.query)
    # the same tenant with a lower threshold goes to the index; no filter: the index, nothing counted
    assert nearest(small, Point.embedding, data[0], k=10, exact_below=100).plan.method == "index"
    whole = nearest(Point.select(Point.id), Point.embedding, data[0], k=10)
    assert whole.plan.method == "index" and whole.plan.filter_rows is None


def test_a_tenant_with_fewer_rows_than_k_gets_all_of_them_and_an_index_scan_that_gives_up_is_not_short(points):
    data, orgs = points
    tiny = Point.select(Point.id).where(Point.org == 3)  # 10 rows
    assert len(nearest(tiny, Point.embedding, data[0], k=25)) == 10
    # Forced onto the index with a scan budget too small to find 10 of organization 1's rows:
    # the exact plan answers instead of coming back short.
    org1 = Point.select(Point.id).where((Point.org + 0) == 1)  # "+ 0": the b-tree cannot serve it
    shortfalls = 0
    for q in data[:20]:
        with database.atomic():
            database.execute_sql("SET LOCAL hnsw.max_scan_tuples = 1; SET LOCAL hnsw.iterative_scan = relaxed_order; "
                                 + ON_THE_GRAPH)
            raw = list(org1.order_by(Point.embedding.cosine_distance(q)).limit(10))
            found = nearest(org1, Point.embedding, q, k=10, exact=False)
        assert len(found) == 10
        if len(raw) < 10:  # the index scan gave up: the exact plan answered
            shortfalls += 1
            assert found.plan.method == "exact"
            assert {r.id for r in found} == exact_neighbours(data, orgs, q, 10, org=1)
    assert shortfalls >= 10  # the scan budget really did stop the index scan short, most of the time


def test_nearest_settings_end_with_its_statement(points):
    """The index plan's SET LOCALs ride with the query: nothing is left on the pooled connection."""
    data, _ = points
    with database.connection_context():
        found = nearest(Point.select(Point.id), Point.embedding, data[0], k=50)
        assert found.plan.method == "index" and len(found) == 50
        settings = database.execute_sql(
            "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')").fetchone()
        assert settings == ("40", "off")
        with database.atomic():  # inside a caller's transaction they last until its end, as SET LOCAL does
            nearest(Point.select(Point.id), Point.embedding, data[0], k=50)
            assert database.execute_sql("SHOW hnsw.ef_search").fetchone()[0] == "50"
        assert database.execute_sql("SHOW hnsw.ef_search").fetchone()[0] == "40"


def test_unfiltered_search_matches_exact_search(points):
    data, orgs = points
    q = data[42]
    approx = nearest(Point.select(Point.id), Point.embedding, q, k=10)
    exact = nearest(Point.select(Point.id), Point.embedding, q, k=10, exact=True)
    assert {r.id for r in exact} == exact_neighbours(data, orgs, q, 10)
    assert len({r.id for r in approx} & {r.id for r in exact}) >= 9
    assert approx[0].id == 43 and approx[0].distance == pytest.approx(0, abs=1e-6)


def test_nearest_checks_its_arguments(points):
    """Each argument is bounded before any SQL, refused in one sentence (`kit.ArgumentError`, a ValueError)."""
    bad = [({"k": 0}, "k must be a whole number of rows from 1 to 1,000, got '0'"),
           ({"k": 2**63}, "k must be a whole number of rows from 1 to 1,000, got '9223372036854775808'"),
           ({"k": "5"}, "k must be a whole number of rows"),
           ({"metric": "dot"}, "metric must be one of l2, cosine, inner_product, l1 for embedding, got 'dot'"),
           ({"exact_below": -1}, "exact_below must be a whole number of rows 0 or more"),
           ({"exact": "yes"}, "exact must be True, False or None"),
           ({"ef_search": "1; DROP TABLE x", "exact": True}, "ef_search must be a whole number of candidates from 1"),
           ({"ef_search": 5000}, "ef_search must be a whole number of candidates from 1 to 1,000"),
           ({"rerank": 10**6, "quantize": "binary"}, "rerank must be a whole number of candidates per row from 1 to 100")]
    for kwargs, said in bad:
        with pytest.raises(ArgumentError, match=re.escape(said)) as caught:
            nearest(Point.select(), Point.embedding, np.ones(DIM), **kwargs)
        assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_index_declarations_are_checked():
    class Wide(Model):
        big = VectorField(3000)
        wide_half = HalfVectorField(3000)

        class Meta:
            database = database

    with pytest.raises(ValueError, match=r"at most 2000 dimensions, this one has 3000 \(quantize='halfvec' allows 4000"):
        HNSWIndex(Wide.big)
    assert HNSWIndex(Wide.big, quantize="halfvec").opclass == "halfvec_cosine_ops"  # 3072-d embeddings: indexable
    assert HNSWIndex(Wide.big, quantize="binary").opclass == "bit_hamming_ops"
    assert HNSWIndex(Wide.wide_half).opclass == "halfvec_cosine_ops"
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        IVFFlatIndex(Point.embedding, metric="l1")
    with pytest.raises(ValueError, match=r"ef_construction \(20\) must be at least 2 \* m \(32\)"):
        HNSWIndex(Point.embedding, m=16, ef_construction=20)
    with pytest.raises(ValueError, match="lists must be a positive whole number"):
        IVFFlatIndex(Point.embedding, lists=0)
    with pytest.raises(TypeError, match=r"needs a vector column \(VectorField, .*\) bound to a model"):
        HNSWIndex(VectorField(3))


class Quantized(Model):
    id = AutoField()
    org = IntegerField(index=True)
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "search_quantized"


@pytest.mark.parametrize("quantize, opclass, expression", [
    ("halfvec", "halfvec_cosine_ops", "((embedding)::halfvec(32))"),
    ("binary", "bit_hamming_ops", "((binary_quantize(embedding))::bit(32))"),
])
def test_quantized_indexes_are_built_searched_reranked_and_checked_for_drift(points, quantize, opclass, expression):
    from kit.migrate.autogen import index_to_code
    from kit.migrate.operations import build_index
    from kit.migrate.schema import compare

    data, orgs = points
    index = HNSWIndex(Quantized.embedding, metric="cosine", quantize=quantize)
    Quantized._meta.indexes = [index]
    create_owned(Quantized)
    try:
        copy_rows(Quantized, [{"org": int(o), "embedding": v} for o, v in zip(orgs, data, strict=True)])
        with as_owner() as owner:  # only the owner may ANALYZE its table
            owner.execute_sql("ANALYZE search_quantized")
        definition = database.execute_sql("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                          (index._name,)).fetchone()[0]
        assert f"USING hnsw ({expression} {opclass})" in definition, definition
        assert compare(database, [Quantized], report_extra=False) == []
        # a generated migration recreates it
        code = index_to_code(index, "search_quantized")
        assert f"quantize='{quantize}'" in code
        assert build_index(Quantized, ("embedding",), method="hnsw", metric="cosine", quantize=quantize, m=16,
                           ef_construction=64)._name == index._name
        recalls = []
        for q in data[np.random.default_rng(2).integers(0, len(data), 10)]:
            found = nearest(Quantized.select(Quantized.id), Quantized.embedding, q, k=10)  # as indexed
            assert found.plan.method.startswith(f"index ({quantize}, rerank")
            distances = [r.distance for r in found]
            assert len(found) == 10 and distances == sorted(distances)
            assert distances[0] == pytest.approx(exact_distance(q, data[found[0].id - 1]), abs=1e-5)  # exact re-rank
            recalls.append(len({r.id for r in found} & exact_neighbours(data, orgs, q, 10)) / 10)
        if quantize == "halfvec":
            assert np.mean(recalls) >= 0.9
        else:  # 32 bits say little about 32-d points: more candidates, better recall (1536-d: benchmarks/scale.py)
            wider = [len({r.id for r in nearest(Quantized.select(Quantized.id), Quantized.embedding, q, k=10,
                                                  rerank=50)} & exact_neighbours(data, orgs, q, 10)) / 10
                     for q in data[np.random.default_rng(2).integers(0, len(data), 10)]]
            assert np.mean(wider) >= 0.85 and np.mean(wider) > np.mean(recalls)
        with database.atomic():
            database.execute_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
            assert f"Index Scan using {index._name}" in explain(found.plan.query)
        # filtered: a small tenant is still ranked exactly, without the index
        small = nearest(Quantized.select(Quantized.id).where(Quantized.org == 1), Quantized.embedding, data[0], k=10)
        assert small.plan.method == "exact"
        assert {r.id for r in small} == exact_neighbours(data, orgs, data[0], 10, org=1)
    finally:
        drop_owned(Quantized)
        Quantized._meta.indexes = []


def exact_distance(q, v) -> float:
    q, v = q.astype(np.float64), v.astype(np.float64)
    return float(1 - q @ v / (np.linalg.norm(q) * np.linalg.norm(v)))


def test_quantize_is_checked():
    with pytest.raises(ValueError, match="unknown quantize 'pq'"):
        HNSWIndex(Point.embedding, quantize="pq")
    with pytest.raises(ValueError, match="quantize='halfvec' applies to vector columns, not halfvec"):
        HNSWIndex(Point.half, quantize="halfvec")
    with pytest.raises(ValueError, match="rerank must be a whole number of candidates per row from 1 to 100"):
        nearest(Point.select(), Point.embedding, np.ones(DIM), rerank=0)
