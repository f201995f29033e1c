"""docs/scaling.md's Citus layout against the code: where each table goes, and what keeps a table from Citus.

The placement comes from the models (`kit.distribute.placement`); what Citus would refuse comes from
the planner reading the migrated schema's catalog (`kit.distribute.plan`), on one server as on a
coordinator: the page shows both, and this keeps it equal to them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from kit import distribute
from kit.models import ALL_MODELS

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
TENANT = "organization_id"
SAID = {"distributed": "distributed", "reference": "reference", "local": "coordinator (local)"}


def placement() -> dict[str, str]:
    """table -> "distributed" / "reference" / "coordinator (local)", from the document's table."""
    rows = re.findall(r"^\| `(\w+)` \| ([a-z ()]+?) \|", DOC.read_text(), flags=re.M)
    tables = [t for t, _ in rows]
    assert len(tables) == len(set(tables)), "a table is placed twice in docs/scaling.md"
    return dict(rows)


def test_every_table_is_placed_exactly_once_where_the_models_say():
    roles = placement()
    assert set(roles) == {m._meta.table_name for m in ALL_MODELS}
    assert {t: SAID[r] for t, r in distribute.placement(ALL_MODELS).items()} == roles


def test_a_table_with_an_organization_goes_elsewhere_only_for_its_rows_of_no_organization():
    """A tenant table is distributed unless some of its rows belong to no organization (global, platform)."""
    for model in ALL_MODELS:
        field = model._meta.columns.get(TENANT)
        if field is not None and distribute.placement([model])[model._meta.table_name] != "distributed":
            assert field.null, f"{model._meta.table_name} has an organization on every row: distribute it"


def test_the_page_lists_what_the_planner_finds_on_the_migrated_schema(migrated_database):
    db = migrated_database
    block = re.search(r"```citus-blockers\n(.*?)```", DOC.read_text(), flags=re.S).group(1)
    catalog = distribute.read_catalog(lambda sql: db.execute_sql(sql).fetchall(), citus=False)
    planned = distribute.plan_models(ALL_MODELS, catalog)
    assert [r for reasons in planned.blockers.values() for r in reasons] == block.strip().splitlines()
    places = distribute.placement(ALL_MODELS)
    assert {s.table for s in planned.steps} == {t for t, r in places.items() if r != "local"}  # every one of them
    roles = [s.role for s in planned.steps]
    assert roles == sorted(roles, reverse=True)  # reference tables first, then the distributed ones
    assert len({s.colocate_with for s in planned.steps if s.role == "distributed"} - {None}) == 1  # co-located


def test_distribute_on_a_server_without_citus_is_one_sentence_and_changes_nothing(migrated_database):
    db = migrated_database
    policies = "SELECT polrelid::regclass::text, polname, pg_get_expr(polqual, polrelid) FROM pg_policy ORDER BY 1, 2"
    before = db.execute_sql(policies).fetchall()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env.update(DATABASE_URL=db.scratch_url.replace("kit_owner@", "kit_app@", 1), DATABASE_OWNER_URL=db.scratch_url)
    ran = subprocess.run([sys.executable, "-m", "kit.cli", "db", "distribute"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 1 and ran.stdout == "" and "Traceback" not in ran.stderr
    assert ran.stderr.strip().splitlines() == ["kit: error: the database has no Citus (the citus extension is not "
                                               "installed), so there is nothing to distribute; point "
                                               "DATABASE_OWNER_URL at a Citus coordinator; nothing was done"]
    dry = subprocess.run([sys.executable, "-m", "kit.cli", "db", "distribute", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and dry.stdout.splitlines()[0] == "organizations: would be a reference table"
    assert db.execute_sql(policies).fetchall() == before  # neither run changed a thing
