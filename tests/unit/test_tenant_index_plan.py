"""`kit maintain`'s tenant-index planner (kit.vector.tenants.plan_tenant_indexes): counts and indexes in, a plan out."""

from __future__ import annotations

from kit.models import DocumentChunk
from kit.vector.tenants import plan_tenant_indexes, tenant_index_name

V = DocumentChunk.embedding


def name(tenant: str) -> str:
    return tenant_index_name(V, tenant)


def test_big_tenants_get_one_small_ones_lose_theirs_and_half_way_keeps_it():
    counts = {"big": 5000, "middle": 900}  # the query returns tenants of min_rows // 2 or more only
    found = [(name("middle"), True, False), (name("gone"), True, False)]
    plan = plan_tenant_indexes(counts, found, V, min_rows=1500)
    assert plan.build == {name("big"): "big"}
    assert plan.kept == [name("middle")]  # under min_rows, not yet under half: kept, no flapping
    assert plan.drop == [name("gone")] and name("gone") in plan.valid


def test_an_invalid_index_is_dropped_and_rebuilt_and_one_being_built_is_left_alone():
    counts = {"a": 5000, "b": 5000}
    found = [(name("a"), False, False), (name("b"), False, True)]  # a: interrupted; b: another run builds it
    plan = plan_tenant_indexes(counts, found, V, min_rows=1500)
    assert plan.drop == [name("a")] and name("a") not in plan.valid  # not reported as dropped
    assert plan.build == {name("a"): "a"}
    assert plan.kept == []


def test_nothing_to_do_is_an_empty_plan():
    plan = plan_tenant_indexes({"a": 5000}, [(name("a"), True, False)], V, min_rows=1500)
    assert plan.drop == [] and plan.build == {} and plan.kept == [name("a")]
