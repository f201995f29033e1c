"""Prepared statements (kit.db.prepared): rendered once, bound by name, exactly what peewee sends, never a frozen value."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from peewee import SQL, fn
from playhouse.postgres_ext import PostgresqlExtDatabase

from kit.db.prepared import Param, Prepared
from kit.db.shapes import ShapedStatements
from kit.errors import ArgumentError
from kit.models import Organization, OrgCredit, Usage
from kit.models.ai import _consume
from kit.models.billing import _increment

pytestmark = pytest.mark.unit


class Db(ShapedStatements, PostgresqlExtDatabase):
    """A database that renders only (never connects)."""


def plain(query):
    """peewee's own rendering of an ordinary query, the reference."""
    return Db(None).get_sql_context().sql(query).query()


def test_consume_is_what_peewee_sends_for_the_same_values():
    db, statement = Db(None), Prepared(_consume(OrgCredit))
    for org, amount in [(uuid.uuid4(), 1), (uuid.uuid4(), 7), (uuid.uuid4(), 1)]:
        sql, params = statement.sql(db, org=org, amount=amount)
        want_sql, want_params = plain(
            OrgCredit.update({OrgCredit.balance: OrgCredit.balance - amount, OrgCredit.updated_at: fn.now()})
            .where((OrgCredit.organization == org) & (OrgCredit.balance >= amount)).returning(OrgCredit.balance))
        assert (sql, params) == (want_sql, want_params)
        assert params == [amount, org.hex, amount]  # each place its own value, converted as peewee converts it
    assert db.shape_stats()["entries"] == 1  # rendered once for the database


def test_increment_converts_each_column_value_as_peewee_would():
    db, org, period = Db(None), uuid.uuid4(), dt.date(2026, 12, 1)
    sql, params = Prepared(_increment(Usage)).sql(db, org=org, metric="'; DROP TABLE usage; --", period=period,
                                                  quantity=3)
    want = plain(Usage.insert({
        Usage.organization: org, Usage.metric: "'; DROP TABLE usage; --", Usage.period_start: period,
        Usage.quantity: 3, Usage.created_at: fn.now(), Usage.updated_at: fn.now(),
    }).on_conflict(conflict_target=[Usage.organization, Usage.metric, Usage.period_start],
                   update={Usage.quantity: Usage.quantity + SQL("EXCLUDED.quantity"),
                           Usage.updated_at: SQL("EXCLUDED.updated_at")})
        .returning(Usage.quantity))
    assert (sql, params) == want
    assert "DROP" not in sql  # a hostile value is a parameter


def test_databases_do_not_share_a_prepared_statement():
    statement, a, b = Prepared(_consume(OrgCredit)), Db(None), Db(None)
    statement.sql(a, org=uuid.uuid4(), amount=1)
    assert a.shape_stats()["entries"] == 1 and b.shape_stats()["entries"] == 0


@pytest.mark.parametrize("query", [
    Organization.select().where(Organization.slug == Param("slug")).limit(10),  # a constant LIMIT
    Organization.select().where((Organization.slug == Param("slug")) & (Organization.name == "fixed")),
    OrgCredit.update(balance=Param("balance")).where(OrgCredit.id == Param("id")),  # updated_at=utcnow() frozen
    Usage.insert(organization=Param("org"), metric=Param("m"), period_start=Param("p")),  # Python defaults
], ids=["limit", "constant", "update-default", "insert-defaults"])
def test_a_value_that_would_be_frozen_is_refused(query):
    with pytest.raises(ArgumentError, match="every value as a Param"):
        Prepared(query).sql(Db(None), **{name: 1 for name in ("slug", "balance", "id", "org", "m", "p")})


def test_names_must_match_exactly_and_nothing_is_rendered_otherwise():
    db, statement = Db(None), Prepared(_consume(OrgCredit))
    with pytest.raises(ArgumentError, match="no value for amount"):
        statement.sql(db, org=uuid.uuid4())
    with pytest.raises(ArgumentError, match="values it does not take: amout"):
        statement.sql(db, org=uuid.uuid4(), amount=1, amout=2)


def test_a_param_outside_a_prepared_statement_says_so():
    with pytest.raises(ArgumentError, match="has a value only when its statement runs"):
        plain(Organization.select().where(Organization.slug == Param("slug")))
    with pytest.raises(ArgumentError, match="identifier"):
        Param("a b")


def test_a_node_given_as_a_value_is_what_peewee_makes_of_a_value_there_never_sql_text():
    db, statement = Db(None), Prepared(Organization.select(Organization.id).where(Organization.slug == Param("s")))
    node = fn.lower("X")
    sql, params = statement.sql(db, s=node)
    assert sql.endswith('WHERE ("t1"."slug" = %s)') and params == [Organization.slug.db_value(node)]


def test_get_by_id_sends_what_peewee_get_by_id_sends():
    db, pk = Db(None), uuid.uuid4()
    from kit.models.base import _by_id, prepared
    sql, params = prepared(Organization, _by_id).sql(db, pk=pk, limit=1, offset=0)
    assert (sql, params) == plain(Organization.select().where(Organization.id == pk).paginate(1, 1))


def test_a_model_changed_at_run_time_is_prepared_again_never_sent_stale():
    import peewee

    from kit.models.base import BaseModel, _by_id, prepared

    class Changing(BaseModel):
        title = peewee.TextField()

        class Meta:
            table_name = "changing_things"

    db, pk = Db(None), uuid.uuid4()

    def current():
        return plain(Changing.select().where(Changing.id == pk).paginate(1, 1))

    first = prepared(Changing, _by_id)
    assert first.sql(db, pk=pk, limit=1, offset=0) == current()
    Changing._meta.add_field("note", peewee.TextField(null=True))
    with pytest.raises(ArgumentError, match="changed since it was prepared"):
        first.sql(db, pk=pk, limit=1, offset=0)  # the statement itself refuses to send its old columns
    assert prepared(Changing, _by_id).sql(db, pk=pk, limit=1, offset=0) == current()  # made again: "note" read
    Changing.title.column_name = "heading"
    assert prepared(Changing, _by_id).sql(db, pk=pk, limit=1, offset=0) == current()
    Changing._meta.set_table_name("things_changed")
    sql, _ = prepared(Changing, _by_id).sql(db, pk=pk, limit=1, offset=0)
    assert '"things_changed"' in sql and '"heading"' in sql and '"note"' in sql and (sql, _) == current()


def test_a_bound_copy_built_upon_is_refused_not_sent_with_the_old_sql():
    db = Db(None)
    statement = Prepared(Organization.select().where(Organization.slug == Param("slug")))
    assert statement.sql(db, slug="a")[1] == ["a"]
    for change in (lambda q: q.where(Organization.name == "x"), lambda q: q.order_by(Organization.name),
                   lambda q: q.limit(5), lambda q: q.join(OrgCredit, on=OrgCredit.organization == Organization.id)):
        with pytest.raises(ArgumentError, match="changed after it was bound"):
            db.sql_of(change(statement.bound(slug="a")))
    assert db.sql_of(statement.bound(slug="b"))[1] == ["b"]  # as it was bound: fine
