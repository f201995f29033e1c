"""The statement cache against the server: each invalidation rule, tenants, both engines (kit.db.shapes, kit.db.rows).

The pure rules (every shape rendered exactly as peewee does, unfit nodes, the memory bound) are in
tests/unit/test_shapes.py; the whole suite also runs with KIT_SHAPES_VERIFY=1 (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import peewee
import pytest
from helpers import as_owner, create_owned, drop_owned
from peewee import fn
from test_aio import closing, new_org
from test_tenancy import Note, attacked  # noqa: F401 - the seeded database of the attacker suite

from kit import tenant
from kit.aio import AsyncDatabase
from kit.config import load_settings
from kit.db import database
from kit.errors import TenantRequired
from kit.models import Organization, OrgCredit, Usage
from kit.models.ai import _consume
from kit.models.base import BaseModel, prepared


class Entry(BaseModel):
    """A table of this module's own, changed under the cache."""

    amount = peewee.IntegerField()

    class Meta:
        table_name = "cache_entries"


@pytest.fixture
def entries():
    create_owned(Entry)
    Entry.insert_many([{"amount": n} for n in range(5)]).execute()
    yield
    if "note" in Entry._meta.fields:
        Entry._meta.remove_field("note")
    drop_owned(Entry)


def amounts_over(n: int) -> list[int]:
    return sorted(e.amount for e in Entry.select().where(Entry.amount > n))


def test_a_migration_adding_a_column_leaves_the_cached_statement_right_and_a_new_field_is_read(entries):
    assert amounts_over(1) == [2, 3, 4]
    before = database.shape_stats()
    assert amounts_over(2) == [3, 4]
    assert database.shape_stats()["hits"] == before["hits"] + 1  # the same shape: served from the cache
    with as_owner(Entry) as owner:  # a migration adds a column while the process runs
        owner.execute_sql("ALTER TABLE cache_entries ADD COLUMN note text NOT NULL DEFAULT 'added'")
    assert amounts_over(3) == [4]  # the cached SQL names its columns: still right
    Entry._meta.add_field("note", peewee.TextField(null=True))  # the model learns of it at run time
    row = Entry.select().where(Entry.amount > 3).get()
    assert row.note == "added"  # a new shape (the new field), read through a new row plan


def test_pointing_the_pool_elsewhere_or_behind_a_pooler_empties_its_cache(make_pool):
    pool = make_pool(max_connections=2)
    query = Organization.select().where(Organization.slug == "nobody")
    assert list(pool.execute(query)) == [] and pool.shape_stats()["entries"] == 1
    pool.init(pool.database, pooler="pgbouncer")  # another pooler mode: nothing cached for the old one is used
    assert pool.shape_stats()["entries"] == 0
    assert list(pool.execute(query)) == [] and pool.shape_stats()["entries"] == 1
    pool.init(pool.database, application_name="another")  # another set of connection parameters: the same
    assert pool.shape_stats()["entries"] == 0
    assert database.shape_stats() is not pool.shape_stats()  # and no database shares another's


def test_the_asyncio_database_takes_its_statements_from_the_same_cache(test_db_url):
    org = new_org()
    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=2))

    async def main():
        first = await adb.get(Organization.select().where(Organization.id == org.id))
        second = await adb.get(Organization.select().where(Organization.id == org.id))
        return first, second

    first, second = asyncio.run(closing(adb, main()))
    assert first.id == second.id == org.id and first.name == org.name
    stats = adb.shape_stats()
    assert stats["fills"] >= 1 and stats["hits"] >= 1 and stats["unfit"] == 0


def test_the_asyncio_read_helpers_read_without_a_greenlet_and_keep_their_meaning(test_db_url):
    org, other = new_org("Direct"), new_org("Direct too")
    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=2))
    mine = Organization.select().where(Organization.id.in_([org.id, other.id])).order_by(Organization.name)

    async def main():
        got = await adb.get(Organization.select().where(Organization.id == org.id))
        first, two = await adb.first(mine), await adb.first(mine, 2)
        every = await adb.list(mine)
        with pytest.raises(Organization.DoesNotExist, match="instance matching query does not exist"):
            await adb.get(Organization.select().where(Organization.slug == "no-such-organization"))
        with tenant(org.id):
            async with adb.atomic():  # inside a transaction: the same connection, its own write seen
                await adb.run(lambda: Organization.update(name="Direct, renamed").where(
                    Organization.id == org.id).execute())
                renamed = await adb.get(Organization.select().where(Organization.id == org.id))
        return got, first, two, every, renamed, adb.shape_stats(), adb.pool_stats()

    got, first, two, every, renamed, shapes, pool = asyncio.run(closing(adb, main()))
    assert got.id == org.id and first.id == org.id and [o.id for o in two] == [org.id, other.id]
    assert [o.id for o in every] == [org.id, other.id] and mine._cursor_wrapper is None  # the caller's query untouched
    assert renamed.name == "Direct, renamed" and Organization.get_by_id(org.id).name == "Direct, renamed"
    assert shapes["hits"] >= 1 and pool["in_use"] == 0


def test_row_plans_are_bounded_oldest_forgotten_first(monkeypatch):
    from kit.db import rows

    monkeypatch.setattr(rows, "MAX_PLANS", 3)
    new_org("Planned")
    others = [Organization.name, Organization.slug, Organization.logo, Organization.metadata, Organization.created_at,
              Organization.updated_at, (Organization.name, Organization.slug)]
    for other in others:  # seven lists of fields: seven shapes of row, each a new plan
        assert Organization.select(Organization.id, *(other if isinstance(other, tuple) else (other,))).first()
        assert rows.plan_count() <= 3
    kept = rows.plan_count()
    Organization.select(Organization.id, *others[-1]).first()
    assert rows.plan_count() == kept  # the newest is kept and served again


def test_a_select_list_with_expressions_makes_no_plan_that_could_only_crowd_out_others():
    from kit.db import rows

    new_org("Expressed")
    before = rows.plan_count()
    for _ in range(5):  # each query makes its expression anew: a plan keyed by it would never serve again
        row = Organization.select(Organization.id, fn.lower(Organization.name).alias("low")).where(
            Organization.name == "Expressed").first()
        assert row.low == "expressed"
    assert rows.plan_count() == before


# Last: the attacker suite's database is module-wide, and the models are bound to it while it lives.
def test_a_prepared_statement_binds_each_call_and_changes_only_its_tenants_row():
    a, b = new_org("Prepared A"), new_org("Prepared B")
    OrgCredit.grant(a, 10)
    OrgCredit.grant(b, 100)
    assert [OrgCredit.consume(a, 1), OrgCredit.consume(b, 2), OrgCredit.consume(a, 3)] == [9, 98, 6]
    assert [Usage.increment(a, "prepared", 2), Usage.increment(b, "prepared", 5),
            Usage.increment(a, "prepared", 1)] == [2, 5, 3]
    statement = prepared(OrgCredit, _consume)
    with tenant(b):  # as kit_app under row-level security: a's row is not b's to change
        assert statement.execute(org=a.id, amount=1).fetchall() == []
    with pytest.raises(TenantRequired):  # the same contract as any query: no tenant, nothing sent
        statement.execute(org=a.id, amount=1)
    assert (OrgCredit.balance_of(a), OrgCredit.balance_of(b)) == (6, 98)


def test_get_by_id_is_a_prepared_statement_with_peewees_meaning_on_both_engines(test_db_url):
    a, b = new_org("By id"), new_org("By id too")
    OrgCredit.grant(a, 3)
    assert Organization.get_by_id(a.id).name == "By id"
    with pytest.raises(Organization.DoesNotExist, match=r"instance matching query does not exist:\nSQL: SELECT"):
        Organization.get_by_id(uuid.uuid4())
    with tenant(a):
        credit = OrgCredit.get(OrgCredit.organization == a.id)
        assert OrgCredit.get_by_id(credit.id).balance == 3
    with tenant(b), pytest.raises(OrgCredit.DoesNotExist):  # a's row, by its key, from b's context: not there
        OrgCredit.get_by_id(credit.id)
    adb = AsyncDatabase(test_db_url, replace(load_settings(), pool_min=0, pool_max=2))

    async def main():
        with tenant(a):
            through_run = await adb.run(OrgCredit.get_by_id, credit.id)
            direct = await adb.get_by_id(OrgCredit, credit.id)  # no greenlet: the prepared read, sent here
        with tenant(b), pytest.raises(OrgCredit.DoesNotExist, match="instance matching query does not exist"):
            await adb.get_by_id(OrgCredit, credit.id)
        return through_run, direct, adb.shape_stats()

    through_run, direct, shapes = asyncio.run(closing(adb, main()))
    assert through_run.balance == direct.balance == 3 and direct.id == credit.id
    assert shapes["hits"] == 3 and shapes["entries"] == 1  # the asyncio database's own cache: one statement


def test_one_cached_statement_serves_each_tenant_its_own_rows_only(attacked):  # noqa: F811
    app, attacker, victim = attacked
    with tenant(victim):
        victims = {n.organization_id for n in Note.select().where(Note.body != "")}
    hits = app.shape_stats()["hits"]
    with tenant(attacker):
        attackers = {n.organization_id for n in Note.select().where(Note.body != "")}
    assert app.shape_stats()["hits"] == hits + 1  # the very statement the victim's context ran
    assert victims == {victim} and attackers <= {attacker}  # the tenant rides before it, never inside
