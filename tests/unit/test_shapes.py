"""The statement cache (kit.db.shapes): every cached statement is exactly what peewee renders, never a value of before."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import peewee
import pytest
from peewee import SQL, fn
from playhouse.postgres_ext import PostgresqlExtDatabase

from kit.db.shapes import ShapedStatements, StatementCache
from kit.models import DocumentChunk, Member, Organization, OrgCredit, Usage

pytestmark = pytest.mark.unit


class Db(ShapedStatements, PostgresqlExtDatabase):
    """A database that renders only (never connects)."""


def rendered(db, query):
    """peewee's own rendering, the reference."""
    return db.get_sql_context().sql(query).query()


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def check(db, make, *values):
    """Each query `make(value)` makes, rendered through the cache, is exactly peewee's rendering of it."""
    for value in values:
        query = make(value)
        sql, params = db.sql_of(query)
        want_sql, want_params = rendered(db, query)
        assert sql == want_sql
        assert len(params) == len(want_params) and all(map(same, params, want_params)), (params, want_params)


IDS = [uuid.uuid4() for _ in range(3)]
HOSTILE = ["x", "'; DROP TABLE organizations; --", "%s", "%(a)s", "\x00"[:0], "é" * 50]

SHAPES = {
    "pk": (lambda v: Organization.select().where(Organization.id == v).limit(1), IDS),
    "unique": (lambda v: Organization.select().where(Organization.slug == v), HOSTILE),
    "none": (lambda v: Organization.select().where(Organization.logo == v), [None, "a", None, "b"]),
    "in": (lambda v: Organization.select().where(Organization.slug.in_(v)), [[], ["a"], ["a", "b"], [], ("c",)]),
    "not-in": (lambda v: Organization.select().where(Organization.slug.not_in(v)), [[], ["a", "b"]]),
    "and-or": (lambda v: Organization.select().where((Organization.name == v) | (Organization.slug != v)
                                                     & Organization.logo.is_null()), HOSTILE),
    "order-limit-offset": (lambda v: Organization.select().order_by(Organization.name.desc()).limit(v).offset(v),
                           [1, 2, 10, 0]),
    "paginate": (lambda v: Organization.select().paginate(v, 20), [1, 2, 3]),
    "function": (lambda v: Organization.select(fn.COUNT(Organization.id)).where(fn.lower(Organization.name) == v),
                 ["a", "B"]),
    "sql-params": (lambda v: Organization.select().where(SQL("name = %s", [v])), HOSTILE),
    "join": (lambda v: Member.select(Member, Organization).join(Organization).where(Organization.slug == v),
             ["a", "b"]),
    "instance": (lambda v: Member.select().where(Member.organization == Organization(id=v)), IDS),
    "fk-id": (lambda v: Member.select().where(Member.organization == v), IDS),
    "subquery": (lambda v: Organization.select().where(Organization.id.in_(
        Member.select(Member.organization).where(Member.role == v))), ["admin", "member"]),
    "for-update": (lambda v: OrgCredit.select().where(OrgCredit.organization == v).for_update(), IDS),
    "insert": (lambda v: Organization.insert(name=v, slug=v, created_at=dt.datetime(2026, 1, 1),
                                             updated_at=dt.datetime(2026, 1, 2)), HOSTILE),
    "insert-none": (lambda v: Organization.insert(name="n", slug="s", logo=v, created_at=dt.datetime(2026, 1, 1),
                                                  updated_at=dt.datetime(2026, 1, 2)), [None, "l", None]),
    "update": (lambda v: OrgCredit.update(balance=OrgCredit.balance - v).where(
        (OrgCredit.organization == IDS[0]) & (OrgCredit.balance >= v)).returning(OrgCredit.balance), [1, 5, 7]),
    "delete": (lambda v: Organization.delete().where(Organization.slug == v), HOSTILE),
    "upsert": (lambda v: Usage.insert(organization=IDS[0], metric=v, period_start=dt.date(2026, 1, 1), quantity=3,
                                      created_at=dt.datetime(2026, 1, 1), updated_at=dt.datetime(2026, 1, 1))
               .on_conflict(conflict_target=[Usage.organization, Usage.metric, Usage.period_start],
                            update={Usage.quantity: Usage.quantity + SQL("EXCLUDED.quantity"),
                                    Usage.updated_at: fn.now()}).returning(Usage.quantity), ["a", "b"]),
    "vector": (lambda v: DocumentChunk.select().where(DocumentChunk.embedding.is_null(False)).order_by(
        DocumentChunk.embedding.cosine_distance(v)).limit(10),
               [np.ones(1536, dtype=np.float32), np.arange(1536, dtype=np.float32)]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_cached_statement_is_exactly_what_peewee_renders(name):
    db = Db(None)
    make, values = SHAPES[name]
    check(db, make, *values)
    check(db, make, *reversed(values))  # hits, in another order: no value of an earlier call is carried
    assert db.shape_stats()["unfit"] == 0, db.shape_stats()["last_unfit"]  # each of these takes the fast path


def test_an_insert_leaving_out_defaults_gets_them_as_peewee_would_and_is_cached():
    db = Db(None)
    for metric in ("a", "b"):
        query = Usage.insert(organization=IDS[0], metric=metric, period_start=dt.date(2026, 1, 1))
        sql, params = db.sql_of(query)
        want_sql, want_params = rendered(db, query)
        assert sql == want_sql and len(params) == len(want_params)
        for got, want in zip(params, want_params, strict=True):  # the defaults: computed again, a moment apart
            assert got == want or abs(got - want) < dt.timedelta(seconds=5)
    assert db.shape_stats()["hits"] == 1 and db.shape_stats()["unfit"] == 0
    assert Usage.updated_at.name not in {f.name for f in query._insert}  # the caller's query is left as it was


def test_shapes_are_cached_and_hit():
    db = Db(None)
    check(db, SHAPES["pk"][0], *IDS)
    stats = db.shape_stats()
    assert stats["fills"] == 1 and stats["hits"] == 2 and stats["unfit"] == 0


def test_an_unknown_node_is_rendered_by_peewee_and_never_cached():
    class Own(peewee.ColumnBase):
        def __init__(self, text):
            self.text = text

        def __sql__(self, ctx):
            return ctx.literal(self.text)

    db = Db(None)
    check(db, lambda v: Organization.select().where(Own(f"name = '{v}'")), "a", "b")
    stats = db.shape_stats()
    assert stats["entries"] == 0 and stats["unfit"] == 2 and "Own" in stats["last_unfit"]


def test_an_attribute_the_walk_does_not_know_makes_a_node_unfit():
    db = Db(None)
    query = Organization.select().where(Organization.slug == "a")
    query._where.extra = "renders differently"
    db.sql_of(query)
    assert db.shape_stats()["entries"] == 0 and "extra" in db.shape_stats()["last_unfit"]


def test_a_value_written_into_the_sql_text_is_never_cached():
    class Inline(peewee.TextField):
        def db_value(self, value):
            return SQL(f"'{value}'")  # a converter that writes SQL: the value is not a parameter

    class Thing(peewee.Model):
        name = Inline()

        class Meta:
            database = None

    db = Db(None)
    check(db, lambda v: Thing.select().where(Thing.name == v), "a", "b")
    assert db.shape_stats()["entries"] == 0


def test_memory_is_bounded_least_recently_used_first():
    db = Db(None)
    db._shapes = StatementCache(size=5)
    for n in range(1, 21):  # 20 shapes: IN lists of 20 lengths
        check(db, lambda v: Organization.select().where(Organization.slug.in_(v)), ["x"] * n)
        assert db.shape_stats()["entries"] <= 5
    assert db.shape_stats()["evictions"] == 15


def test_a_field_added_at_run_time_changes_the_shape():
    class Note(peewee.Model):
        title = peewee.TextField()

    db = Db(None)
    before, _ = db.sql_of(Note.select().where(Note.title == "a"))
    Note._meta.add_field("body", peewee.TextField(null=True))
    after, _ = db.sql_of(Note.select().where(Note.title == "a"))
    assert '"body"' not in before and '"body"' in after
    Note.title.column_name = "heading"
    renamed, _ = db.sql_of(Note.select().where(Note.title == "a"))
    assert '"heading"' in renamed and renamed == rendered(db, Note.select().where(Note.title == "a"))[0]


def test_no_statement_crosses_databases():
    one, two = Db(None), Db(None)
    one.sql_of(Organization.select().where(Organization.id == IDS[0]))
    assert two.shape_stats()["entries"] == 0 and one.shape_stats()["entries"] == 1


def test_context_options_are_rendered_by_peewee():
    db = Db(None)
    query = Organization.select().where(Organization.slug == "a")
    assert db.sql_of(query, quote="``")[0] == db.get_sql_context(quote="``").sql(query).query()[0]
    assert db.shape_stats()["entries"] == 0


def test_a_models_default_columns_walked_once_still_follow_a_rename():
    from kit.models.base import BaseModel

    class Renamed(BaseModel):
        title = peewee.TextField()

        class Meta:
            table_name = "renamed_things"

    db = Db(None)
    query = Renamed.select().where(Renamed.title == "a")
    assert type(query._returning).__name__ == "FieldList"  # the kit's default SELECT list, walked once
    before, _ = db.sql_of(query)
    Renamed.title.column_name = "heading"
    after, _ = db.sql_of(Renamed.select().where(Renamed.title == "a"))
    assert '"title"' in before and '"heading"' in after
    assert after == rendered(db, Renamed.select().where(Renamed.title == "a"))[0]
    Renamed._meta.set_table_name("things_renamed")
    moved, _ = db.sql_of(Renamed.select().where(Renamed.title == "a"))
    assert '"things_renamed"' in moved and moved == rendered(db, Renamed.select().where(Renamed.title == "a"))[0]


def test_the_same_object_in_two_places_at_the_fill_binds_each_place_its_own_value_after():
    """Values are matched to parameters by identity: the walk's order must be peewee's, or a value shared by two
    places at the fill (a small int, a string used twice) would send each place the other's value later."""
    db = Db(None)
    day, at = dt.date(2026, 1, 1), dt.datetime(2026, 1, 1)

    def upsert(inserted, updated):
        return Usage.insert(organization=IDS[0], metric="m", period_start=day, quantity=inserted, created_at=at,
                            updated_at=at).on_conflict(
            conflict_target=[Usage.organization, Usage.metric, Usage.period_start],
            conflict_where=(Usage.quantity > updated), update={Usage.quantity: updated}, where=(Usage.quantity < 1))

    def aggregate(separator, filtered):
        return Organization.select(fn.string_agg(Organization.name, separator).order_by(
            SQL("length(name) + %s", [separator])).filter(Organization.slug == filtered))

    for make in (upsert, aggregate):
        shared = "x" if make is aggregate else 5
        check(db, lambda v, make=make, shared=shared: make(shared, shared), None)  # the fill: one object twice
        check(db, lambda v, make=make: make(*v), ("a", "b") if make is aggregate else (7, 9), (9, 7))
    assert db.shape_stats()["unfit"] == 0 and db.shape_stats()["hits"] >= 4
