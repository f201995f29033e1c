"""VectorField / HalfVectorField against the real server: exact round trips, validation, distances, binary reads."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import create_owned, drop_owned
from peewee import AutoField, IntegerField, Model, TextField, Tuple, fn

from kit.db import database
from kit.vector import HalfVectorField, VectorField, VectorModel, VectorValueError, search_settings

DIM = 8


class Item(VectorModel):
    id = AutoField()
    label = TextField(default="")
    embedding = VectorField(DIM)
    half = HalfVectorField(DIM, null=True)
    maybe = VectorField(DIM, null=True)

    class Meta:
        database = database
        table_name = "vf_items"


class PlainItem(Model):
    """A plain peewee model: vectors come back as text, and still as numpy."""

    id = AutoField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "vf_plain_items"


class Copy(Model):
    n = IntegerField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "vf_copies"


@pytest.fixture(autouse=True)
def tables(test_db_url):
    create_owned(Item, PlainItem, Copy)
    yield
    drop_owned(Item, PlainItem, Copy)


EDGE = np.array([0.0, -0.0, 1e-45, -3.4028235e38, 1.0, -1.5, 0.1, 123456.789], dtype=np.float32)
HALF_EDGE = np.array([0.0, -0.0, 6e-8, 65504, -65504, 0.1, 1.0, -2.5], dtype=np.float16)


def test_float32_round_trip_is_exact_including_edge_values():
    rng = np.random.default_rng(1)
    values = [EDGE, *rng.standard_normal((20, DIM)).astype(np.float32)]
    Item.insert_many([{"embedding": v} for v in values]).execute()
    got = [row.embedding for row in Item.select().order_by(Item.id)]
    for want, have in zip(values, got, strict=True):
        assert have.dtype == np.float32 and have.shape == (DIM,)
        assert np.array_equal(have, want)
        assert np.array_equal(np.signbit(have), np.signbit(want))


def test_halfvec_round_trip_is_exact_and_float16():
    item = Item.create(embedding=EDGE, half=HALF_EDGE)
    got = Item.get_by_id(item.id).half
    assert got.dtype == np.float16 and np.array_equal(got, HALF_EDGE)


def test_inputs_of_any_numeric_kind_and_nulls():
    cases = [np.arange(DIM, dtype=np.float64), np.arange(DIM, dtype=np.float16), np.arange(DIM),
             list(range(DIM)), tuple(float(i) for i in range(DIM))]
    for value in cases:
        item = Item.create(embedding=value)
        got = Item.get_by_id(item.id)
        assert np.array_equal(got.embedding, np.arange(DIM, dtype=np.float32))
        assert got.maybe is None and got.half is None


def test_plain_models_read_binary_too():
    PlainItem.create(embedding=EDGE)
    got = PlainItem.get().embedding
    assert got.dtype == np.float32 and np.array_equal(got, EDGE)
    assert 'vector_send("t1"."embedding")' in PlainItem.select().sql()[0]


@pytest.mark.parametrize(
    "value, words",
    [
        ([1.0, 2.0], ["vf_items.embedding", "expected 8 dimensions, got 2"]),
        (np.ones(DIM + 1), ["expected 8 dimensions, got 9"]),
        ([1.0] * 7 + [float("nan")], ["element 7", "NaN"]),
        ([1.0] * 7 + [float("inf")], ["element 7", "infinity"]),
        ([1.0] * 7 + ["x"], ["vf_items.embedding", "numbers"]),
        ([1.0] * 7 + [None], ["vf_items.embedding", "numbers"]),
        ([True] * DIM, ["numbers", "booleans"]),
        (np.ones((2, 4)), ["1-D", "(2, 4)"]),
        ("1,2,3", ["numpy array, list or tuple", "str"]),
        (np.ones(16_001), ["16001 dimensions", "more than pgvector allows (16000)"]),
        ([1.0] * 7 + [1e39], ["element 7", "out of float32 range"]),
    ],
)
def test_bad_values_are_refused_before_reaching_the_database(value, words):
    with pytest.raises(VectorValueError) as caught:
        Item.create(embedding=value)
    for word in words:
        assert word in str(caught.value)
    assert Item.select().count() == 0


def test_halfvec_out_of_range_is_refused():
    with pytest.raises(VectorValueError, match=r"vf_items\.half: element 0 is 100000.0, out of float16 range"):
        Item.create(embedding=EDGE, half=[1e5] + [0.0] * 7)


@pytest.mark.parametrize("dimensions", [0, -3, 16_001, 2.5, "8", True])
def test_field_dimensions_are_checked(dimensions):
    with pytest.raises(ValueError, match="dimensions must be a whole number from 1 to 16000"):
        VectorField(dimensions)


def test_distances_match_numpy():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((30, DIM)).astype(np.float32)
    q = rng.standard_normal(DIM).astype(np.float32)
    Item.insert_many([{"label": str(i), "embedding": v} for i, v in enumerate(data)]).execute()
    query = Item.select(
        Item.label,
        Item.embedding.l2_distance(q).alias("l2"),
        Item.embedding.cosine_distance(q).alias("cos"),
        Item.embedding.max_inner_product(q).alias("ip"),
        Item.embedding.l1_distance(q).alias("l1"),
    ).order_by(Item.id)
    rows = list(query.dicts())
    x, y = data.astype(np.float64), q.astype(np.float64)
    want = {
        "l2": np.linalg.norm(x - y, axis=1),
        "cos": 1 - (x @ y) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y)),
        "ip": -(x @ y),
        "l1": np.abs(x - y).sum(axis=1),
    }
    for name, expected in want.items():
        assert np.allclose([r[name] for r in rows], expected, rtol=1e-5, atol=1e-5), name


def test_distance_in_where_and_order_by():
    Item.insert_many([{"label": str(i), "embedding": [float(i)] * DIM} for i in range(10)]).execute()
    q = [3.0] * DIM
    near = Item.select().where(Item.embedding.l2_distance(q) < 3).order_by(Item.embedding.l2_distance(q))
    assert [r.label for r in near] == ["3", "2", "4"]
    by_metric = Item.select().order_by(Item.embedding.distance(q, "l1")).limit(1)
    assert by_metric.get().label == "3"
    with pytest.raises(ValueError, match="unknown metric 'dot'"):
        Item.embedding.distance(q, "dot")


def rendered(query) -> str:
    return query.sql()[0]


@pytest.mark.parametrize("model", [Item, PlainItem], ids=["VectorModel", "plain peewee.Model"])
def test_only_the_outermost_select_list_reads_binary_and_every_query_shape_works(model):
    model.insert_many([{"embedding": [float(i)] * DIM} for i in range(5)]).execute()
    m, e = model, model.embedding
    two = np.full(DIM, 2.0, dtype=np.float32)
    # items of the outermost SELECT list, bare or aliased: binary
    assert rendered(m.select()).count("_send(") == len([f for f in m._meta.sorted_fields if hasattr(f, "send_function")])
    assert rendered(m.select(e.alias("x"))).startswith('SELECT vector_send("t1"."embedding") AS "x"')
    assert np.array_equal(m.select(e.alias("x")).where(m.id == 3).dicts().get()["x"], two)
    # every other place keeps a real vector: casts, functions, expressions, subqueries, CTEs, UNIONs
    for query in (m.select(e.cast("text")), m.select(fn.vector_dims(e)), m.select(e.l2_distance(two)),
                  m.select(m.id).where(e.in_(m.select(e))), m.select(Tuple(e, m.id))):
        assert "_send(" not in rendered(query), rendered(query)
    assert m.select(e.cast("text")).where(m.id == 3).scalar() == "[" + ",".join(["2"] * DIM) + "]"
    assert m.select(fn.vector_dims(e)).where(m.id == 1).scalar() == DIM
    inner = m.select(e).where(m.id == 3)
    assert [r.id for r in m.select().where(e.in_(inner))] == [3]
    assert m.select().where(m.id != 1).count() == 4
    assert m.select().where(m.id == 1).exists()
    cte = m.select(m.id, e).where(m.id == 3).cte("picked", columns=("id", "embedding"))
    via_cte = m.select(cte.c.embedding).from_(cte).with_cte(cte)
    assert "_send(" not in rendered(via_cte) and np.array_equal(via_cte.tuples()[0][0], two)
    union = m.select(e).where(m.id == 2) | m.select(e).where(m.id == 5)
    assert sorted(float(r.embedding[0]) for r in union) == [1.0, 4.0]
    # INSERT ... SELECT copies real vectors, and RETURNING reads them back
    Copy.insert_from(m.select(m.id, e), [Copy.n, Copy.embedding]).execute()
    assert np.array_equal(Copy.get(Copy.n == 3).embedding, two)
    returned = Copy.insert(n=99, embedding=two).returning(Copy.embedding).execute()
    assert np.array_equal(list(returned)[0].embedding, two)
    # every row shape converts, joins included
    assert isinstance(m.select(e).tuples()[0][0], np.ndarray)
    assert isinstance(m.select().dicts()[0]["embedding"], np.ndarray)
    assert isinstance(m.select().namedtuples()[0].embedding, np.ndarray)
    assert np.array_equal(m.select(m.id, e).distinct().order_by(m.id.desc()).first().embedding, np.full(DIM, 4.0))
    joined = (m.select(m.id, Copy.embedding).join(Copy, on=(Copy.n == m.id)).where(m.id == 3).objects().get())
    assert np.array_equal(joined.embedding, two)
    grouped = m.select(e, fn.count(m.id).alias("n")).group_by(e).order_by(e.l2_distance(two)).first()
    assert np.array_equal(grouped.embedding, two) and grouped.n == 1


def test_search_settings_apply_locally_and_never_leak():
    with search_settings(ef_search=123, iterative_scan="strict_order", probes=7, max_scan_tuples=5000):
        assert database.execute_sql("SHOW hnsw.ef_search").fetchone()[0] == "123"
        assert database.execute_sql("SHOW hnsw.iterative_scan").fetchone()[0] == "strict_order"
        assert database.execute_sql("SHOW ivfflat.probes").fetchone()[0] == "7"
    assert database.execute_sql("SHOW hnsw.ef_search").fetchone()[0] == "40"
    database.close()
    with database.connection_context():
        assert database.execute_sql("SHOW hnsw.iterative_scan").fetchone()[0] == "off"


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"ef_search": 0}, "hnsw.ef_search must be a positive whole number"),
        ({"probes": "10"}, "ivfflat.probes must be a positive whole number"),
        ({"iterative_scan": "fast"}, "hnsw.iterative_scan must be one of off, strict_order, relaxed_order"),
    ],
)
def test_search_settings_are_checked(settings, words):
    with pytest.raises(ValueError, match=words):
        with search_settings(**settings):
            pass


def test_raw_sql_sees_a_vector_literal():
    value = np.array([0.5] * DIM, dtype=np.float32)
    cursor = database.execute_sql("SELECT %s::vector(8)::text", (Item.embedding.db_value(value),))
    assert cursor.fetchone()[0] == "[" + ",".join(["0.5"] * DIM) + "]"
