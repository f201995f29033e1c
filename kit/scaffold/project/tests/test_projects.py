"""A first test. The kit's pytest plugin gives each test that asks for `db` a transaction rolled back at its
end, on a database of the run's own (cloned from your migrations), as the application's role with
row-level security on. `make(Model, ...)` makes rows with only what the test cares about. See the
kit's docs/testing.md.
"""

from models import Project

import kit


def test_a_project_is_its_organization_s_alone(db, tenant, other_org, make):
    make(Project, name="Apollo")  # in `tenant`: its organization is the tenant's
    assert [p.name for p in Project.select()] == ["Apollo"]
    with kit.tenant(other_org, switch=True):
        assert Project.select().count() == 0  # another organization sees none of it


def test_nothing_a_test_wrote_is_left(db):
    with kit.all_tenants():
        assert Project.select().count() == 0
