"""The development Citus cluster (`kit db citus`), and what the kit's tenancy meets on it.

Built from the Citus source tarball in KIT_CITUS_SOURCE, else `../shared/citus/` beside the project
(as CI has it); without one, this tier is skipped with one line. Run once: not again through PgBouncer.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg2
import pytest

from kit.devservers import citus
from kit.roles import APP, AUTH, DOOR, OWNER

ROOT = Path(__file__).resolve().parent.parent


def _source() -> Path | None:
    if os.environ.get(citus.SOURCE_VARIABLE):
        return Path(os.environ[citus.SOURCE_VARIABLE])
    found = sorted((ROOT.parent / "shared" / "citus").glob("citus-*.tar.gz"))
    return found[-1] if found else None


pytestmark = [
    pytest.mark.skipif(_source() is None, reason="no Citus source tarball (KIT_CITUS_SOURCE, ../shared/citus/): "
                                                 "the Citus tier is skipped"),
    pytest.mark.skipif(os.environ.get("DATABASE_POOLER") == "pgbouncer",
                       reason="the Citus cluster is tested once, not again through PgBouncer"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("kitdata")
    url = citus.start_citus(data_dir, _source())
    yield data_dir, url
    citus.stop_citus(data_dir)


def rows(url: str, sql: str, autocommit: bool = True) -> list[tuple]:
    conn = psycopg2.connect(url)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_a_coordinator_two_workers_pgvector_and_the_kits_roles_on_every_node(cluster):
    data_dir, url = cluster
    admin = citus.node_url(data_dir, role="postgres")
    nodes = rows(admin, "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive ORDER BY nodeport")
    assert [port for _, port in nodes] == [9700, 9701, 9702]
    assert url == citus.node_url(data_dir) and "kit_app@" in url
    for name, _ in citus.NODES:
        node = citus.node_url(data_dir, name, role="postgres")
        assert {r for r, in rows(node, "SELECT rolname FROM pg_roles")} >= {OWNER, APP, AUTH, DOOR}
        assert {e for e, in rows(node, "SELECT extname FROM pg_extension")} >= {"citus", "vector"}
    assert rows(url, "SELECT current_user") == [(APP,)]  # the application's role logs in to the coordinator


def test_a_second_start_builds_nothing_and_reuses_the_nodes(cluster):
    data_dir, url = cluster
    built = sorted(citus._cache_root().glob("*/built"))
    assert built, "the build is kept outside the project"
    before = [(p, p.stat().st_mtime_ns) for p in built]
    assert citus.start_citus(data_dir, _source()) == url
    assert [(p, p.stat().st_mtime_ns) for p in built] == before
    assert all(running for _, running in citus.citus_status(data_dir))


def test_the_tenant_reaches_the_workers_only_as_set_local_statements_of_their_own(cluster):
    """Why the kit's one-string tenant prefix cannot serve Citus as it is (docs/scaling.md).

    Citus sends only SET LOCAL to the workers (with citus.propagate_set_commands = 'local'), and sends
    the whole query string it came in: a SET LOCAL sent with its statement in one string is refused.
    """
    data_dir, url = cluster
    admin = citus.node_url(data_dir, role="postgres")
    org, other = uuid.uuid4(), uuid.uuid4()
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS probe_notes")
        cur.execute("CREATE TABLE probe_notes (organization_id uuid NOT NULL, id bigint, PRIMARY KEY "
                    "(organization_id, id))")
        cur.execute("SELECT create_distributed_table('probe_notes', 'organization_id')")
        cur.execute("INSERT INTO probe_notes SELECT o, g FROM unnest(%s::uuid[]) o, generate_series(1, 50) g",
                    ([str(org), str(other)],))
        cur.execute("ALTER TABLE probe_notes ENABLE ROW LEVEL SECURITY")
        cur.execute("ALTER TABLE probe_notes FORCE ROW LEVEL SECURITY")
        cur.execute("CREATE POLICY tenant ON probe_notes USING "
                    "(organization_id = nullif(current_setting('kit.tenant', true), '')::uuid)")
        cur.execute(f"GRANT SELECT ON probe_notes TO {APP}")
    conn.close()
    count = "SELECT count(*) FROM probe_notes"
    assert rows(url, count) == [(0,)]  # no tenant: nothing, on every shard
    assert rows(url, f"SELECT set_config('kit.tenant', '{org}', true); {count}") == [(0,)]  # not sent on
    with pytest.raises(psycopg2.Error, match="distributed query from a query on a shard"):
        rows(url, f"SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL kit.tenant = '{org}'; {count}")
    app = psycopg2.connect(url)
    try:
        with app.cursor() as cur:  # a transaction, each SET LOCAL a statement of its own: every shard sees it
            cur.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            cur.execute(f"SET LOCAL kit.tenant = '{org}'")
            cur.execute(count)
            assert cur.fetchall() == [(50,)]
            cur.execute(f"SELECT count(*) FROM probe_notes WHERE organization_id = '{other}'")
            assert cur.fetchall() == [(0,)]  # the other tenant's shard keeps its rows to itself
        app.rollback()
    finally:
        app.close()


def test_the_owner_cannot_run_create_extension_if_not_exists_there(cluster):
    """Why migration 001 does not run as the owner on Citus (docs/scaling.md): Citus checks the extension's owner."""
    data_dir, _ = cluster
    owner = psycopg2.connect(citus.node_url(data_dir, role=OWNER))
    try:
        with owner.cursor() as cur:
            with pytest.raises(psycopg2.Error, match="must be owner of extension vector"):
                cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            owner.rollback()
            cur.execute("SET LOCAL citus.enable_ddl_propagation = off")  # PostgreSQL's own: a notice, no error
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        owner.rollback()
    finally:
        owner.close()
