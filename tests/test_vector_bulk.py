"""copy_rows and fetch_matrix against the real server: exact data, all-or-nothing, errors that name the row."""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid

import numpy as np
import peewee
import pytest
from helpers import create_owned, drop_owned, limited_database, owner_query
from peewee import SQL, BigAutoField, BooleanField, DateField, DecimalField, IntegerField, Model, TextField, UUIDField
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

import kit.copy.writer as bulk
from kit import StatementTimeout
from kit.db import database
from kit.vector import CopyRowError, HalfVectorField, VectorField, VectorModel, copy_rows, fetch_matrix

DIM = 16


class Chunk(VectorModel):
    id = UUIDField(primary_key=True, constraints=[SQL("DEFAULT gen_random_uuid()")])
    seq = IntegerField(unique=True)
    body = TextField()
    flag = BooleanField(default=False)
    meta = BinaryJSONField(default=dict)
    price = DecimalField(max_digits=20, decimal_places=6, null=True)
    day = DateField(null=True)
    at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    embedding = VectorField(DIM, null=True)
    half = HalfVectorField(DIM, null=True)

    class Meta:
        database = database
        table_name = "bulk_chunks"


class Numbered(Model):
    id = BigAutoField()
    embedding = VectorField(DIM)

    class Meta:
        database = database
        table_name = "bulk_numbered"


@pytest.fixture(autouse=True)
def tables(test_db_url):
    create_owned(Chunk, Numbered)
    yield
    drop_owned(Chunk, Numbered)


def rows(n, rng=None):
    rng = rng or np.random.default_rng(3)
    matrix = rng.standard_normal((n, DIM)).astype(np.float32)
    return matrix, [{"seq": i, "body": f"chunk {i} é", "price": "1.5", "embedding": matrix[i]} for i in range(n)]


def test_copy_rows_loads_thousands_exactly(monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 64 * 1024)  # several COPY statements in one transaction
    matrix, data = rows(3000)
    assert copy_rows(Chunk, data) == 3000
    got = {c.seq: c for c in Chunk.select()}
    assert len(got) == 3000
    assert all(np.array_equal(got[i].embedding, matrix[i]) for i in range(3000))
    assert got[5].body == "chunk 5 é" and got[5].flag is False and got[5].meta == {}
    assert isinstance(got[5].id, uuid.UUID) and got[5].at is not None  # database defaults applied


def test_copy_rows_writes_every_scalar_type_like_insert_many():
    moment = dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    prices = ["0", "-1.5", "12345678.000100", "0.000001", "99999999999999.999999", None]
    values = [
        {"seq": i, "body": "x" * i, "flag": i % 2 == 0, "meta": {"i": i, "tags": ["a", "b"]}, "price": price,
         "day": dt.date(1999, 12, 31) + dt.timedelta(days=i), "at": moment + dt.timedelta(days=i),
         "embedding": np.full(DIM, i, dtype=np.float32), "half": None if i == 2 else np.full(DIM, 0.5)}
        for i, price in enumerate(prices)
    ]
    copy_rows(Chunk, values)
    for row, want in zip(Chunk.select().order_by(Chunk.seq), values, strict=True):
        assert row.body == want["body"] and row.flag == want["flag"] and row.meta == want["meta"]
        assert row.price == (None if want["price"] is None else decimal.Decimal(want["price"]))
        assert row.day == want["day"] and row.at == want["at"]
        assert np.array_equal(row.embedding, want["embedding"])
        assert (row.half is None) if want["half"] is None else np.array_equal(row.half, want["half"])


def test_a_bad_vector_in_the_middle_loads_nothing_and_names_the_row():
    _, data = rows(3000)
    data[1234]["embedding"] = np.ones(DIM - 1)
    with pytest.raises(CopyRowError, match=r"^row 1234: bulk_chunks\.embedding: expected 16 dimensions, got 15"):
        copy_rows(Chunk, data)
    assert Chunk.select().count() == 0


def test_a_database_error_in_a_later_chunk_names_the_row_and_rolls_back(monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 32 * 1024)
    _, data = rows(2500)
    data[2400]["seq"] = 7  # duplicates row 7: the unique index refuses it
    with pytest.raises(peewee.IntegrityError, match=r"^row 2400: duplicate key value violates unique constraint"):
        copy_rows(Chunk, data)
    assert Chunk.select().count() == 0


def test_a_null_in_a_not_null_column_names_the_row():
    _, data = rows(10)
    data[9]["body"] = None
    with pytest.raises(peewee.IntegrityError, match=r"^row 9: null value in column \"body\""):
        copy_rows(Chunk, data)
    assert Chunk.select().count() == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("body"), r"^row 4: every row must give the same fields as row 0; missing body"),
        (lambda r: r.update(colour="red"), r"^row 4: every row must give the same fields as row 0; unexpected colour"),
        (lambda r: r.update(seq="four"), r"^row 4: bulk_chunks\.seq: .*'four'"),
        (lambda r: r.update(price="cheap"), r"^row 4: bulk_chunks\.price: "),
        (lambda r: r.update(embedding=[float("nan")] * DIM), r"^row 4: bulk_chunks\.embedding: element 0 is nan"),
    ],
)
def test_bad_rows_are_named(change, message):
    _, data = rows(6)
    change(data[4])
    with pytest.raises(CopyRowError, match=message):
        copy_rows(Chunk, data)
    assert Chunk.select().count() == 0


def test_unknown_field_and_empty_input():
    assert copy_rows(Chunk, []) == 0
    with pytest.raises(CopyRowError, match="bulk_chunks has no field 'colour'"):
        copy_rows(Chunk, [{"colour": 1}])


def test_fetch_matrix_returns_keys_and_matrix_in_query_order():
    matrix, data = rows(500)
    copy_rows(Chunk, data)
    query = Chunk.select(Chunk.seq, Chunk.embedding).order_by(Chunk.seq.desc())
    keys, got = fetch_matrix(query)
    assert isinstance(keys, np.ndarray) and keys.tolist() == list(range(499, -1, -1))
    assert got.dtype == np.float32 and got.shape == (500, DIM)
    assert np.array_equal(got, matrix[::-1])
    uuids, got = fetch_matrix(Chunk.select(Chunk.id, Chunk.embedding).where(Chunk.seq < 3).order_by(Chunk.seq))
    assert [type(k) for k in uuids] == [uuid.UUID] * 3
    texts, got = fetch_matrix(Chunk.select(Chunk.body, Chunk.embedding).where(Chunk.seq < 12).order_by(Chunk.seq))
    assert texts == [f"chunk {i} é" for i in range(12)]  # variable-length keys: the row-by-row path
    assert np.array_equal(got, matrix[:12])


def test_fetch_matrix_reads_halfvec_and_plain_models_and_empty_results():
    copy_rows(Numbered, [{"embedding": np.full(DIM, i)} for i in range(5)])
    keys, got = fetch_matrix(Numbered.select(Numbered.id, Numbered.embedding).order_by(Numbered.id))
    assert keys.tolist() == [1, 2, 3, 4, 5] and got[:, 0].tolist() == [0, 1, 2, 3, 4]
    copy_rows(Chunk, [{"seq": i, "body": "b", "half": np.full(DIM, i / 4)} for i in range(4)])
    _, half = fetch_matrix(Chunk.select(Chunk.seq, Chunk.half).order_by(Chunk.seq))
    assert half.dtype == np.float16 and half[:, 0].tolist() == [0, 0.25, 0.5, 0.75]
    keys, empty = fetch_matrix(Numbered.select(Numbered.id, Numbered.embedding).where(Numbered.id < 0))
    assert len(keys) == 0 and empty.shape[0] == 0


def test_fetch_matrix_refuses_null_vectors_and_wrong_shapes():
    copy_rows(Chunk, [{"seq": 1, "body": "b", "embedding": None}])
    with pytest.raises(ValueError, match=r"row 0 \(key 1\) has a NULL vector"):
        fetch_matrix(Chunk.select(Chunk.seq, Chunk.embedding))
    with pytest.raises(ValueError, match="expects a query selecting 2 columns"):
        fetch_matrix(Chunk.select(Chunk.seq, Chunk.body, Chunk.embedding))


def test_copy_writer_numbers_rows_across_waits_and_frees_the_connection_between(monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 16 * 1024)  # many chunks in flight per COPY statement
    _, data = rows(1200)
    data[1100]["seq"] = 3  # refused by the unique index, in the third COPY statement
    with pytest.raises(peewee.IntegrityError, match=r"^row 1100: duplicate key"), database.atomic():
        with bulk.CopyWriter(Chunk, ["seq", "body", "price", "embedding"], database) as writer:
            writer.write(data[:500])
            writer.wait()
            assert database.execute_sql("SELECT count(*) FROM bulk_chunks").fetchone()[0] == 500
            writer.write(data[500:1000])
            writer.wait()
            writer.write(data[1000:])
    assert Chunk.select().count() == 0 and writer.count == 1200


def test_an_error_raised_while_rows_are_in_flight_stops_the_copy_and_keeps_the_connection_usable(monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 16 * 1024)
    _, data = rows(2000)

    def generated():
        yield from data[:1500]
        raise RuntimeError("the generator broke")

    with pytest.raises(RuntimeError, match="the generator broke"):
        copy_rows(Chunk, generated())
    assert Chunk.select().count() == 0
    assert copy_rows(Chunk, data[:10]) == 10


def test_rows_keyed_by_field_objects_and_defaults_from_python_or_the_database():
    matrix, _ = rows(3)
    copy_rows(Chunk, [{Chunk.seq: i, Chunk.body: f"b{i}", Chunk.embedding: matrix[i]} for i in range(3)])
    got = list(Chunk.select().order_by(Chunk.seq))
    assert [c.body for c in got] == ["b0", "b1", "b2"] and np.array_equal(got[2].embedding, matrix[2])
    assert all(c.flag is False and c.meta == {} for c in got)  # Python defaults (no DEFAULT declared)
    assert all(c.at is not None for c in got)  # the declared database default, now()
    mixed = [{"seq": 10, "body": "x"}, {Chunk.seq: 11, "body": "y"}]
    assert copy_rows(Chunk, mixed) == 2
    with pytest.raises(CopyRowError, match=r"^row 1: every row must give the same fields as row 0; missing body"):
        copy_rows(Chunk, [{"seq": 20, "body": "x"}, {Chunk.seq: 21}])


@pytest.fixture
def slow_rows(owner_url):
    """bulk_chunks made to take 2 ms a row, as a table with a heavy index or trigger would."""
    owner_query(owner_url, "CREATE OR REPLACE FUNCTION bulk_slow() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$")
    owner_query(owner_url, "CREATE TRIGGER bulk_slow BEFORE INSERT ON bulk_chunks FOR EACH ROW "
                           "EXECUTE FUNCTION bulk_slow()")


@pytest.fixture
def limited(test_db_url):
    """The kit's database on the suite's, with a statement time limit of one second."""
    db = limited_database(test_db_url, 1000, pool_max=2)
    yield db
    db.close_all()


def test_a_load_longer_than_the_statement_limit_goes_in_whole_as_several_statements(monkeypatch, slow_rows, limited):
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 50)  # 0.1 s of the server's time a chunk
    _, data = rows(1500)  # 3 s in all: three times the limit
    start = time.monotonic()
    with limited.atomic():
        with bulk.CopyWriter(Chunk, ["seq", "body", "price", "embedding"], limited) as writer:
            writer.write(data)
    assert time.monotonic() - start > 3.0  # the rows did take longer than the limit, in one transaction
    assert writer.statements >= 4  # each statement ran about a quarter of the limit, then the next began
    assert Chunk.select().count() == 1500
    assert copy_rows(Chunk, [{**r, "seq": r["seq"] + 10_000} for r in data], limited) == 1500


def test_rows_too_slow_for_the_limit_even_one_chunk_at_a_time_are_one_sentence_and_nothing_written(
        slow_rows, limited):
    _, data = rows(800)  # one chunk of 1.6 s: no statement boundary can help
    said = (r"^row \d+: a COPY statement ran past its time limit \(1,000 ms, DATABASE_STATEMENT_TIMEOUT\) and the "
            r"server cancelled it: .*; nothing was written$")
    with pytest.raises(StatementTimeout, match=said):
        copy_rows(Chunk, data, limited)
    assert Chunk.select().count() == 0
    assert limited.execute_sql("SELECT 1").fetchone()[0] == 1


def test_errors_carry_what_their_sentences_name(slow_rows, limited):
    _, data = rows(3)
    data[2]["price"] = "not a number"
    with pytest.raises(CopyRowError) as bad:
        copy_rows(Chunk, data)
    assert bad.value.row == 2 and str(bad.value).startswith("row 2: ")
    _, data = rows(800)
    with pytest.raises(StatementTimeout) as slow:
        copy_rows(Chunk, data, limited)
    assert slow.value.limit_ms == 1000 and slow.value.variable == "DATABASE_STATEMENT_TIMEOUT"
    assert str(slow.value).startswith(f"row {slow.value.row}: ")
