"""The Citus placement planner (`kit.distribute.plan`): steps in order, and every rule Citus enforces, as blockers."""

from kit.distribute import Catalog, Key, Step, plan

ORG = "organization_id"


def table(**columns: bool) -> dict[str, bool]:
    """Columns: name -> nullable."""
    return columns


def catalog(keys=(), placed=None, **tables) -> Catalog:
    return Catalog(columns=tables, keys=tuple(keys), placed=placed or {})


def pk(name: str, *columns: str) -> Key:
    return Key(name, "p", columns)


def fk(name: str, columns: tuple[str, ...], target: str, target_columns: tuple[str, ...]) -> Key:
    return Key(name, "f", columns, target, target_columns)


def test_reference_tables_come_first_and_after_what_they_point_at_then_distributed_ones_co_located():
    places = {"prices": "reference", "plans": "reference", "docs": "distributed", "chunks": "distributed",
              "sessions": "local"}
    found = plan(places, catalog(
        [pk("plans", "id"), pk("prices", "id"), fk("prices", ("plan_id",), "plans", ("id",)),
         pk("docs", ORG, "id"), pk("chunks", ORG, "id"), fk("chunks", (ORG, "doc_id"), "docs", (ORG, "id"))],
        plans=table(id=False), prices=table(id=False, plan_id=False), docs=table(id=False, organization_id=False),
        chunks=table(id=False, organization_id=False, doc_id=False), sessions=table(id=False)))
    assert found.blockers == {}
    assert found.steps == (Step("plans", "reference"), Step("prices", "reference"),
                           Step("docs", "distributed", None), Step("chunks", "distributed", "docs"))


def test_what_citus_already_places_is_done_and_the_rest_is_co_located_with_it():
    places = {"docs": "distributed", "chunks": "distributed"}
    found = plan(places, catalog([pk("docs", ORG, "id"), pk("chunks", ORG, "id")], placed={"docs": "distributed"},
                                 docs=table(organization_id=False, id=False), chunks=table(organization_id=False, id=False)))
    assert found.done == ("docs",) and found.steps == (Step("chunks", "distributed", "docs"),)


def test_a_distributed_table_needs_the_column_not_null_and_in_every_key():
    places = {"a": "distributed", "b": "distributed", "c": "distributed"}
    found = plan(places, catalog([pk("b", "id"), Key("b", "u", ("slug",)), pk("c", ORG, "id")],
                                 a=table(id=False), b=table(id=False, organization_id=False, slug=False),
                                 c=table(id=False, organization_id=True)))
    assert found.blockers["a"] == ["a: has no organization_id, the column Citus would place its rows by"]
    assert [r.split(",")[0] for r in found.blockers["b"]] == ["b: its primary key (id) lacks organization_id",
                                                             "b: its unique key (slug) lacks organization_id"]
    assert found.blockers["c"] == ["c: organization_id may be NULL, and Citus places every row by it"]
    assert found.steps == ()


def test_foreign_keys_between_kinds_citus_refuses_are_blockers():
    places = {"docs": "distributed", "chunks": "distributed", "users": "reference", "flags": "reference",
              "sessions": "local", "notes": "distributed"}
    found = plan(places, catalog(
        [pk("docs", ORG, "id"), pk("chunks", ORG, "id"), fk("chunks", ("doc_id",), "docs", ("id",)),
         pk("users", "id"), fk("users", ("org_id",), "docs", (ORG,)),
         fk("sessions", ("doc_id",), "docs", ("id",)), pk("notes", ORG, "id"), fk("notes", ("session_id",), "sessions",
                                                                                   ("id",)),
         pk("flags", "id"), fk("flags", ("user_id",), "users", ("id",))],
        docs=table(id=False, organization_id=False), chunks=table(id=False, organization_id=False, doc_id=False),
        users=table(id=False, org_id=True), flags=table(id=False, user_id=True), sessions=table(id=False, doc_id=True),
        notes=table(id=False, organization_id=False, session_id=True)))
    assert found.blockers["chunks"] == [
        "chunks: its foreign key (doc_id) -> docs lacks organization_id on both sides, so Citus cannot keep it within "
        "a shard"]
    assert found.blockers["users"] == [
        "users: its foreign key (org_id) -> docs points at a table that is distributed, and a reference table may "
        "point only at reference tables"]
    assert [r.split(",")[0] for r in found.blockers["docs"]] == ["docs: users (org_id) points at it and is a reference "
                                                                "table", "docs: sessions (doc_id) points at it and is "
                                                                "on the coordinator"]
    assert found.blockers["notes"] == ["notes: its foreign key (session_id) -> sessions points at a table that stays "
                                       "on the coordinator"]
    assert found.blockers["flags"] == ["flags: points at users, which cannot be placed yet"]  # tied to a blocked one
    assert found.steps == ()


def test_a_table_a_blocked_distributed_table_points_at_is_held_back_with_it():
    """The pointing table stays on the coordinator for now, and a coordinator table cannot point into a distributed one."""
    places = {"docs": "distributed", "chunks": "distributed"}
    found = plan(places, catalog([pk("docs", ORG, "id"), pk("chunks", "id"),
                                  fk("chunks", (ORG, "doc_id"), "docs", (ORG, "id"))],
                                 docs=table(id=False, organization_id=False),
                                 chunks=table(id=False, organization_id=False, doc_id=False)))
    assert list(found.blockers) == ["chunks", "docs"]
    assert found.blockers["docs"] == ["docs: chunks points at it and cannot be placed yet"]


def test_a_table_not_in_the_database_says_to_migrate_first():
    assert plan({"docs": "distributed"}, catalog()).blockers == {"docs": ["docs: not in the database (migrate first)"]}


def test_a_policy_with_a_sub_select_blocks_its_table_and_every_table_tied_to_it_unless_written_again():
    """Citus takes tables tied to a placed one into its metadata, and refuses sub-selects in their policies."""
    places = {"orgs": "reference", "endpoints": "local", "deliveries": "local", "plans": "reference"}
    tables = {"orgs": table(id=False), "endpoints": table(id=False, org_id=False), "plans": table(id=False),
              "deliveries": table(id=False, endpoint_id=False)}
    keys = [pk("orgs", "id"), fk("endpoints", ("org_id",), "orgs", ("id",)),
            fk("deliveries", ("endpoint_id",), "endpoints", ("id",)), pk("plans", "id")]
    found = plan(places, Catalog(tables, tuple(keys), subselect_policies=frozenset({"endpoints", "deliveries"})),
                 rewritten=frozenset({"endpoints"}))
    assert found.blockers == {"orgs": ["orgs: placing it brings deliveries into Citus's metadata (tied to it by "
                                       "foreign keys), whose row-level security looks rows up with a sub-select, "
                                       "which Citus refuses"]}
    assert found.steps == (Step("plans", "reference"),)  # not tied to anything: placed
    assert plan(places, Catalog(tables, tuple(keys), subselect_policies=frozenset({"endpoints"})),
                rewritten=frozenset({"endpoints"})).blockers == {}


def test_a_partitioned_table_with_checks_left_behind_holds_back_what_would_take_it_in():
    """Citus 13 cannot take a partitioned table with CHECK constraints in as a coordinator table."""
    places = {"orgs": "reference", "usage": "distributed", "plans": "reference"}
    tables = {"orgs": table(id=False), "plans": table(id=False),
              "usage": table(id=False, organization_id=False, created=False)}
    keys = [pk("orgs", "id"), pk("plans", "id"), fk("usage", (ORG,), "orgs", ("id",))]
    held = plan(places, Catalog(tables, (*keys, pk("usage", "id", "created")),
                                partitioned_with_checks=frozenset({"usage"})))
    assert held.blockers["orgs"] == ["orgs: placing it brings usage into Citus's metadata as a coordinator table, and "
                                     "Citus cannot take a partitioned table with CHECK constraints in so ('child table "
                                     "is missing constraint')"]
    assert held.steps == (Step("plans", "reference"),)
    placed = plan(places, Catalog(tables, (*keys, pk("usage", ORG, "id", "created")),
                                  partitioned_with_checks=frozenset({"usage"})))  # distributed with it: fine
    assert placed.blockers == {} and [s.table for s in placed.steps] == ["orgs", "plans", "usage"]
