"""pgvector-python's peewee test suite (tests/test_peewee.py), on the kit's fields; then what the kit adds.

The cases and expected values are pgvector-python's. Where the kit returns numpy (dense vectors),
the comparison is made on the array; in list mode (`as_list=True`) with pgvector-python's assertions
as written. Sparse vectors come back as pgvector-python's SparseVector and bit strings as text, exactly
as there.
"""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest
from helpers import create_owned, drop_owned
from peewee import Model
from pgvector import Bit, HalfVector, SparseVector, Vector
from pgvector.peewee import FixedBitField as PgFixedBitField
from pgvector.peewee import HalfVectorField as PgHalfVectorField
from pgvector.peewee import SparseVectorField as PgSparseVectorField
from pgvector.peewee import VectorField as PgVectorField

from kit.copy import CopyRowError, copy_rows
from kit.db import database
from kit.vector import (
    FixedBitField,
    HalfVectorField,
    HNSWIndex,
    IVFFlatIndex,
    SparseVectorField,
    VectorField,
    VectorValueError,
    nearest,
)
from kit.vector.bulk import fetch_matrix


class Item(Model):
    embedding = VectorField(dimensions=3, null=True)
    half_embedding = HalfVectorField(dimensions=3, null=True)
    binary_embedding = FixedBitField(max_length=3, null=True)
    sparse_embedding = SparseVectorField(dimensions=3, null=True)
    any_embedding = VectorField(null=True)  # unsized
    any_half = HalfVectorField(null=True)
    any_sparse = SparseVectorField(null=True)

    class Meta:
        database = database
        table_name = "pgvector_python_item"


Item.add_index(HNSWIndex(Item.sparse_embedding, metric="l2", m=4, ef_construction=8))
Item.add_index(HNSWIndex(Item.binary_embedding, metric="hamming", m=4, ef_construction=8))
Item.add_index(IVFFlatIndex(Item.binary_embedding, metric="hamming", lists=1))


@pytest.fixture(autouse=True)
def table(test_db_url):
    create_owned(Item)
    yield
    drop_owned(Item)


def create_items() -> None:
    Item.create(id=1, embedding=[1, 1, 1], half_embedding=[1, 1, 1], binary_embedding="000",
                sparse_embedding=SparseVector([1, 1, 1]))
    Item.create(id=2, embedding=[2, 2, 2], half_embedding=[2, 2, 2], binary_embedding="101",
                sparse_embedding=SparseVector([2, 2, 2]))
    Item.create(id=3, embedding=[1, 1, 2], half_embedding=[1, 1, 2], binary_embedding="111",
                sparse_embedding=SparseVector([1, 1, 2]))


def ranked(distance) -> tuple[list[int], list[float]]:
    items = list(Item.select(Item.id, distance.alias("distance")).order_by(distance, Item.id).limit(5))
    return [v.id for v in items], [v.distance for v in items]


DENSE = {"embedding": Item.embedding, "half_embedding": Item.half_embedding, "sparse_embedding": Item.sparse_embedding}


@pytest.mark.parametrize("column", DENSE)
def test_distances_are_pgvector_pythons_on_every_vector_type(column):
    create_items()
    field = DENSE[column]
    query = SparseVector([1, 1, 1]) if column == "sparse_embedding" else [1, 1, 1]
    assert ranked(field.l2_distance(query)) == ([1, 3, 2], [0, 1, sqrt(3)])
    assert ranked(field.max_inner_product(query)) == ([2, 3, 1], [-6, -4, -3])
    ids, distances = ranked(field.cosine_distance(query))
    assert ids == [1, 2, 3] and distances[:2] == [0, 0] and distances[2] == pytest.approx(0.05719095841793653)
    assert ranked(field.l1_distance(query)) == ([1, 3, 2], [0, 1, 3])
    assert ranked(field.distance(query, "l2")) == ([1, 3, 2], [0, 1, sqrt(3)])


def test_vector_halfvec_sparsevec_and_bit_round_trip_as_pgvector_python_returns_them():
    Item.create(id=1, embedding=[1, 2, 3], half_embedding=[1, 2, 3], binary_embedding="101",
                sparse_embedding=[1, 2, 3])
    item = Item.get_by_id(1)
    assert np.array_equal(item.embedding, [1, 2, 3]) and item.embedding.dtype == np.float32
    assert np.array_equal(item.half_embedding, [1, 2, 3]) and item.half_embedding.dtype == np.float16
    assert item.binary_embedding == "101"
    assert item.sparse_embedding == SparseVector([1, 2, 3])


def test_bit_hamming_and_jaccard():
    create_items()
    assert ranked(Item.binary_embedding.hamming_distance("101")) == ([2, 3, 1], [0, 1, 2])
    ids, distances = ranked(Item.binary_embedding.jaccard_distance("101"))
    assert ids == [2, 3, 1] and distances == [0, pytest.approx(1 / 3), 1]
    assert ranked(Item.binary_embedding.distance("101", "hamming")) == ([2, 3, 1], [0, 1, 2])


def test_pgvector_pythons_value_objects_are_accepted_everywhere():
    Item.create(id=1, embedding=Vector([1, 2, 3]), half_embedding=HalfVector([4, 5, 6]),
                binary_embedding=Bit([True, False, True]), sparse_embedding=SparseVector({0: 1, 2: 3}, 3),
                any_sparse=SparseVector({1: 2.5}, 10))
    item = Item.get_by_id(1)
    assert np.array_equal(item.embedding, [1, 2, 3]) and np.array_equal(item.half_embedding, [4, 5, 6])
    assert item.binary_embedding == "101"
    assert item.sparse_embedding == SparseVector([1, 0, 3]) and item.any_sparse == SparseVector({1: 2.5}, 10)
    Item.create(id=2, embedding=SparseVector([0, 0, 1]), binary_embedding=np.array([1, 1, 0], dtype=np.uint8),
                sparse_embedding={1: 4.0})
    assert ranked(Item.embedding.l2_distance(Vector([0, 0, 1])))[0][0] == 2
    assert Item.get_by_id(2).binary_embedding == "110" and Item.get_by_id(2).sparse_embedding == SparseVector(
        {1: 4.0}, 3)


def test_unsized_columns_hold_any_length_and_cannot_be_indexed():
    Item.create(id=1, any_embedding=[1, 2], any_half=[1, 2, 3, 4])
    Item.create(id=2, any_embedding=np.arange(5, dtype=np.float32))
    assert np.array_equal(Item.get_by_id(1).any_embedding, [1, 2]) and len(Item.get_by_id(1).any_half) == 4
    assert len(Item.get_by_id(2).any_embedding) == 5
    rows = database.execute_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                                "'pgvector_python_item'::regclass AND attname LIKE %s ORDER BY attname",
                                ("any_%",)).fetchall()
    assert sorted(r[0] for r in rows) == ["halfvec", "sparsevec", "vector"]  # unsized: no (n)
    with pytest.raises(ValueError, match="pgvector indexes only sized columns; declare VectorField"):
        HNSWIndex(Item.any_embedding, metric="l2")
    with pytest.raises(VectorValueError, match="a vector needs at least 1 dimension"):
        Item.create(id=3, any_embedding=[])


@pytest.mark.parametrize("field, value, words", [
    (Item.sparse_embedding, [1, 2], "expected 3 dimensions, got 2"),
    (Item.sparse_embedding, {5: 1.0}, "index 5 is outside 0 to 2"),
    (Item.sparse_embedding, [1, float("nan"), 0], "element 1 is nan"),
    (Item.sparse_embedding, "1,2,3", "expected a SparseVector"),
    (Item.any_sparse, {0: 1.0}, "needs the column's dimensions"),
    (Item.binary_embedding, "10", "expected 3 bits, got 2"),
    (Item.binary_embedding, "1a1", "expected a string of 0s and 1s"),
    (Item.binary_embedding, np.array([0, 2, 1]), "holds only 0 and 1"),
    (Item.embedding, Bit("101"), "expected a numpy array, list or tuple of numbers, got Bit"),
])
def test_unfit_values_are_one_sentence_naming_the_column(field, value, words):
    with pytest.raises(VectorValueError) as caught:
        Item.create(**{field.name: value})
    assert words in str(caught.value) and str(caught.value).startswith(f"pgvector_python_item.{field.column_name}")
    assert Item.select().count() == 0


def test_indexes_take_each_types_operator_class_and_refuse_what_pgvector_cannot():
    live = dict(database.execute_sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                                     "'pgvector_python_item'").fetchall())
    defs = " ".join(live.values())
    assert "USING hnsw (sparse_embedding sparsevec_l2_ops)" in defs
    assert "USING hnsw (binary_embedding bit_hamming_ops)" in defs
    assert "USING ivfflat (binary_embedding bit_hamming_ops)" in defs
    with pytest.raises(ValueError, match="unknown metric 'cosine'; use one of hamming, jaccard"):
        HNSWIndex(Item.binary_embedding)
    with pytest.raises(ValueError, match="pgvector's ivfflat does not index sparsevec columns"):
        IVFFlatIndex(Item.sparse_embedding, metric="l2")
    with pytest.raises(ValueError, match="unknown metric 'jaccard'; use one of hamming"):
        IVFFlatIndex(Item.binary_embedding, metric="jaccard")


def test_binary_copy_writes_sparse_bit_and_unsized_columns():
    rows = [{"sparse_embedding": SparseVector({i % 3: float(i + 1)}, 3), "binary_embedding": format(i % 8, "03b"),
             "any_embedding": np.arange(1, i % 4 + 2, dtype=np.float32), "any_sparse": [0, i, 0, 1]}
            for i in range(50)]
    assert copy_rows(Item, rows, database) == 50
    back = list(Item.select().order_by(Item.id))
    assert [r.sparse_embedding for r in back] == [r["sparse_embedding"] for r in rows]
    assert [r.binary_embedding for r in back] == [r["binary_embedding"] for r in rows]
    assert all(np.array_equal(b.any_embedding, r["any_embedding"]) for b, r in zip(back, rows, strict=True))
    assert [r.any_sparse for r in back] == [SparseVector(r["any_sparse"]) for r in rows]
    with pytest.raises(CopyRowError) as caught:
        copy_rows(Item, [{"binary_embedding": "101"}, {"binary_embedding": "1"}], database)
    assert "row 1" in str(caught.value) and "expected 3 bits, got 1" in str(caught.value)
    assert Item.select().count() == 50


def test_nearest_works_on_sparse_and_bit_columns():
    create_items()
    hits = nearest(Item.select(), Item.sparse_embedding, SparseVector([1, 1, 1]), k=2, metric="l2")
    assert [h.id for h in hits] == [1, 3]
    hits = nearest(Item.select(), Item.binary_embedding, "101", k=2, metric="hamming")
    assert [h.id for h in hits] == [2, 3]


def test_the_migration_generator_knows_the_new_types_and_the_schema_check_agrees(fresh_database, tmp_path):
    from peewee_migrate import Router

    from kit import migrate
    from kit.migrate import autogen
    from kit.migrate.schema import compare

    db = fresh_database
    db.execute_sql("CREATE EXTENSION IF NOT EXISTS vector")  # the database's admin installed it

    class Typed(Model):
        sparse = SparseVectorField(30000)
        bits = FixedBitField(256, null=True)
        loose = VectorField(null=True)

        class Meta:
            database = db
            table_name = "gen_typed"

    Typed.add_index(HNSWIndex(Typed.sparse, metric="inner_product", m=8, ef_construction=16))
    Typed.add_index(HNSWIndex(Typed.bits, metric="jaccard", m=8, ef_construction=16))
    autogen.register()
    directory = tmp_path / "gen"
    directory.mkdir()
    name = Router(db, migrate_dir=directory).create("typed", auto=[Typed])
    code = (directory / f"{name}.py").read_text()
    assert "kit_vector.SparseVectorField(dimensions=30000)" in code
    assert "kit_vector.FixedBitField(max_length=256, null=True)" in code
    assert "kit_vector.VectorField(dimensions=None, null=True)" in code
    migrate.apply(db, directory, say=lambda _: None)
    assert compare(db, [Typed], report_extra=False) == []
    assert Router(db, migrate_dir=directory).create("again", auto=[Typed]) is None


class ListItem(Model):
    """pgvector-python's `Item` with the kit's dense fields in list mode (`as_list=True`)."""

    embedding = VectorField(dimensions=3, null=True, as_list=True)
    half_embedding = HalfVectorField(dimensions=3, null=True, as_list=True)

    class Meta:
        database = database
        table_name = "pgvector_python_list_item"


@pytest.fixture
def list_items():
    create_owned(ListItem)
    yield
    drop_owned(ListItem)


def test_in_list_mode_vectors_come_back_as_pgvector_python_returns_them(list_items):
    """pgvector-python's test_vector and test_halfvec, their assertions as written there."""
    ListItem.create(id=1, embedding=[1, 2, 3])
    item = ListItem.get_by_id(1)
    assert item.embedding == [1, 2, 3]
    ListItem.create(id=2, half_embedding=[1, 2, 3])
    item = ListItem.get_by_id(2)
    assert item.half_embedding == [1, 2, 3]
    assert type(item.half_embedding) is list and all(type(v) is float for v in item.half_embedding)
    ListItem.create(id=3, embedding=np.array([1, 1, 2], dtype=np.float32))  # numpy still goes in
    distance = ListItem.embedding.l2_distance([1, 1, 1])
    rows = list(ListItem.select(ListItem.id, distance.alias("distance")).where(distance.is_null(False))
                .order_by(distance))
    assert [(r.id, r.distance) for r in rows] == [(3, 1), (1, sqrt(5))]
    assert ListItem.select(ListItem.embedding).where(ListItem.id == 3).get().embedding == [1, 1, 2]  # binary read


class PythonItem(Model):
    """A model declared with pgvector-python's own peewee fields, not the kit's."""

    embedding = PgVectorField(dimensions=3, null=True)
    half_embedding = PgHalfVectorField(dimensions=3, null=True)
    sparse_embedding = PgSparseVectorField(dimensions=3, null=True)
    binary_embedding = PgFixedBitField(max_length=3, null=True)

    class Meta:
        database = database
        table_name = "pgvector_python_own_item"


def test_binary_copy_writes_pgvector_pythons_own_fields_as_insert_many_would():
    create_owned(PythonItem)
    try:
        rows = [{"embedding": [i, 1.5, -2], "half_embedding": np.array([1, i, 0.5]),
                 "sparse_embedding": SparseVector({i % 3: 1.0 + i}, 3), "binary_embedding": format(i % 8, "03b")}
                for i in range(40)]
        rows += [{"embedding": Vector([1, 2, 3]), "half_embedding": HalfVector([3, 2, 1]),
                  "sparse_embedding": SparseVector({1: 2.5}, 3), "binary_embedding": "110"},
                 {"embedding": np.array([4, 5, 6]), "half_embedding": None, "sparse_embedding": None,
                  "binary_embedding": None}]
        assert copy_rows(PythonItem, rows, database) == len(rows)
        copied = [(list(r.embedding), r.half_embedding and list(r.half_embedding), r.sparse_embedding,
                   r.binary_embedding) for r in PythonItem.select().order_by(PythonItem.id)]
        PythonItem.delete().execute()
        PythonItem.insert_many(rows).execute()  # pgvector-python's own path: its text, by INSERT
        inserted = [(list(r.embedding), r.half_embedding and list(r.half_embedding), r.sparse_embedding,
                     r.binary_embedding) for r in PythonItem.select().order_by(PythonItem.id)]
        assert copied == inserted and copied[-2][0] == [1, 2, 3] and copied[-1][0] == [4, 5, 6]
        keys, matrix = fetch_matrix(PythonItem.select(PythonItem.id, PythonItem.embedding).order_by(PythonItem.id))
        assert len(keys) == len(rows) and matrix.shape == (len(rows), 3) and matrix.dtype == np.float32
        assert matrix.tolist() == [embedding for embedding, *_ in inserted]  # read in binary, as the kit's own
        with pytest.raises(CopyRowError, match="row 1"):
            copy_rows(PythonItem, [{"embedding": [1, 2, 3]}, {"embedding": [1, 2]}], database)
    finally:
        drop_owned(PythonItem)
