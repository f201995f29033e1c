"""docs/scaling.md's Citus layout, checked against the models without Citus: placement and every listed exception."""

from __future__ import annotations

import re
from pathlib import Path

from peewee import ForeignKeyField

from kit.models import ALL_MODELS

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
TENANT = "organization_id"


def placement() -> dict[str, str]:
    """table -> "distributed" / "reference" / "coordinator (local)", from the document's table."""
    rows = re.findall(r"^\| `(\w+)` \| ([a-z ()]+?) \|", DOC.read_text(), flags=re.M)
    tables = [t for t, _ in rows]
    assert len(tables) == len(set(tables)), "a table is placed twice in docs/scaling.md"
    return dict(rows)


def listed_exceptions() -> dict[str, set[str]]:
    block = re.search(r"```citus-exceptions\n(.*?)```", DOC.read_text(), flags=re.S).group(1)
    found = {}
    for line in block.strip().splitlines():
        kind, _, items = line.partition(":")
        found[kind.strip()] = {i.strip() for i in re.split(r",\s*(?![^()]*\))", items) if i.strip()}
    return found


def columns(model) -> dict[str, object]:
    return {f.column_name: f for f in model._meta.sorted_fields}


def computed_exceptions(roles: dict[str, str]) -> dict[str, set[str]]:
    distributed = {t for t, role in roles.items() if role == "distributed"}
    models = {m._meta.table_name: m for m in ALL_MODELS}
    found: dict[str, set[str]] = {k: set() for k in ("missing-organization-id", "nullable-organization-id",
                                                      "fk-without-organization-id", "fk-into-distributed",
                                                      "fk-to-local", "unique-without-organization-id")}
    for table, model in models.items():
        cols = columns(model)
        key = "id" if table == "organizations" else TENANT
        if table in distributed and table != "organizations":
            if TENANT not in cols:
                found["missing-organization-id"].add(table)
            elif cols[TENANT].null:
                found["nullable-organization-id"].add(table)
        for field in model._meta.sorted_fields:
            if not isinstance(field, ForeignKeyField):
                continue
            target = field.rel_model._meta.table_name
            if table in distributed and roles[target] == "coordinator (local)":
                found["fk-to-local"].add(f"{table}.{field.column_name} -> {target}")
            if target not in distributed:
                continue
            edge = f"{table}.{field.column_name} -> {target}"
            if table not in distributed:
                found["fk-into-distributed"].add(edge)
            elif target != "organizations" and field.column_name != TENANT:
                found["fk-without-organization-id"].add(edge)  # single-column keys: the tenant is not in them
        if table in distributed:
            uniques = [(f.column_name,) for f in model._meta.sorted_fields if f.unique and not f.primary_key]
            uniques += [tuple(e.column_name for e in i._expressions) for i in model._meta.fields_to_index()
                        if i._unique and len(i._expressions) > 1]
            for unique in sorted(set(uniques)):
                if key not in unique:
                    found["unique-without-organization-id"].add(f"{table} ({', '.join(unique)})")
    return found


def test_every_table_is_placed_exactly_once():
    roles = placement()
    assert set(roles) == {m._meta.table_name for m in ALL_MODELS}
    assert set(roles.values()) == {"distributed", "reference", "coordinator (local)"}


def test_every_tenant_table_carries_organization_id_except_those_listed():
    roles = placement()
    listed = listed_exceptions()
    computed = computed_exceptions(roles)
    for table, role in roles.items():
        model = next(m for m in ALL_MODELS if m._meta.table_name == table)
        if role == "distributed" and table != "organizations" and table not in listed["missing-organization-id"]:
            assert TENANT in columns(model), table
    # every model with an organization is distributed (a tenant table placed elsewhere would be a mistake)
    for model in ALL_MODELS:
        if TENANT in columns(model):
            assert roles[model._meta.table_name] == "distributed", model._meta.table_name
    assert computed["missing-organization-id"] == listed["missing-organization-id"]
    assert computed["nullable-organization-id"] == listed["nullable-organization-id"]


def test_every_foreign_key_and_unique_constraint_that_breaks_a_citus_rule_is_listed():
    computed, listed = computed_exceptions(placement()), listed_exceptions()
    for kind in ("fk-without-organization-id", "fk-into-distributed", "fk-to-local", "unique-without-organization-id"):
        assert computed[kind] == listed[kind], kind
