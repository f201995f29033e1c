"""YAML seed fixtures on freshly migrated databases: syntax, determinism, idempotency, atomicity, errors, dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from kit import betterauth, fixtures, migrate
from kit.fixtures import FixtureError, Resolver, load, parse
from kit.models import ALL_MODELS

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "seeds" / "fixtures" / "dev.yaml"


@pytest.fixture
def db(migrated_database):
    """An empty database with the project's migrations applied."""
    return migrated_database


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def counts(db) -> dict[str, int]:
    return {m._meta.table_name: db.execute_sql(f'SELECT count(*) FROM "{m._meta.table_name}"').fetchone()[0]
            for m in ALL_MODELS}


def rows_of(db, table: str, columns: str = "*") -> list[tuple]:
    return db.execute_sql(f'SELECT {columns} FROM "{table}" ORDER BY id').fetchall()


def test_the_development_seed_fills_every_table_and_reloads_unchanged(db):
    report = load(parse(DEV), db)
    filled = counts(db)
    assert all(n > 0 for n in filled.values()), {t: n for t, n in filled.items() if n == 0}
    assert sum(c.inserted for c in report.values()) == sum(filled.values())
    again = load(parse(DEV), db)
    assert all(c.inserted == 0 and c.updated == 0 for c in again.values())
    assert sum(c.unchanged for c in again.values()) == sum(filled.values())
    assert counts(db) == filled
    passwords = [r[0] for r in db.execute_sql("SELECT password FROM accounts WHERE password IS NOT NULL")]
    assert passwords and all(":" in p and "password123" not in p and len(p.split(":")[1]) == 128 for p in passwords)
    vectors = db.execute_sql("SELECT vector_norm(embedding) FROM document_chunks").fetchall()
    assert all(abs(v[0] - 1) < 1e-5 for v in vectors)


def test_dry_run_reports_and_writes_nothing(db):
    report = load(parse(DEV), db, dry_run=True)
    assert report["users"].inserted == 43
    assert all(n == 0 for n in counts(db).values())


def test_references_in_any_order_across_included_files_and_to_the_database(db, tmp_path):
    db.execute_sql("INSERT INTO plans (slug, name) VALUES ('legacy', 'Legacy')")
    write(tmp_path, "people.yaml", """
        users:
          ada: {name: Ada, email: ada@example.com}
    """)
    main = write(tmp_path, "main.yaml", """
        members:   # before the tables it references
          ada_lab: {organization: "@organizations.lab", user: "@users.ada", role: owner}
        subscriptions:
          lab: {organization: "@organizations.lab", plan: {$find: {slug: legacy}}, status: active}
        organizations:
          lab: {name: "@users.ada.name", slug: lab}
        include: [people.yaml]
    """)
    load(parse(main), db)
    org_name, = db.execute_sql("SELECT name FROM organizations WHERE slug = 'lab'").fetchone()
    assert org_name == "Ada"
    plan = db.execute_sql("SELECT p.slug FROM subscriptions s JOIN plans p ON p.id = s.plan_id").fetchone()[0]
    assert plan == "legacy"
    assert rows_of(db, "members", "role") == [("owner",)]


def test_ids_into_text_columns_and_values_encrypted_as_better_auth_does(db, tmp_path, monkeypatch):
    monkeypatch.setenv("BETTER_AUTH_SECRET", "seed-test-secret")
    path = write(tmp_path, "auth.yaml", """
        users:
          ada: {name: Ada, email: ada@example.com, two_factor_enabled: true}
        accounts:
          ada: {user: "@users.ada", provider_id: credential, account_id: "@users.ada.id", password: !password pw}
        two_factors:
          ada: {user: "@users.ada", secret: !encrypt "base32:JBSWY3DPEHPK3PXP", backup_codes: !encrypt [one, two]}
    """)
    load(parse(path), db)
    user_id, account_id = db.execute_sql("SELECT user_id, account_id FROM accounts").fetchone()
    assert account_id == str(user_id)  # Better Auth's credential accounts carry the user's id
    secret, codes = db.execute_sql("SELECT secret, backup_codes FROM two_factors").fetchone()
    assert "JBSWY3DPEHPK3PXP" not in secret and "one" not in codes
    assert betterauth.decrypt(secret) == "base32:JBSWY3DPEHPK3PXP"
    assert json.loads(betterauth.decrypt(codes)) == ["one", "two"]
    again = load(parse(path), db)  # the same ciphertext on every load: nothing to update
    assert again["two_factors"].unchanged == 1 and all(c.inserted == c.updated == 0 for c in again.values())
    monkeypatch.setenv("BETTER_AUTH_SECRET", "rotated-secret")  # another secret: the rows are re-encrypted
    assert load(parse(path), db)["two_factors"].updated == 1
    assert betterauth.decrypt(db.execute_sql("SELECT secret FROM two_factors").fetchone()[0]) == "base32:JBSWY3DPEHPK3PXP"


def test_generated_rows_fake_values_choices_picks_and_embeddings(db, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_TEST_SLUG_PREFIX", "env")
    np.save(tmp_path / "vectors.npy", np.arange(3 * 1536, dtype=np.float32).reshape(3, 1536))
    path = write(tmp_path, "gen.yaml", """
        organizations:
          one: {name: One, slug: !env KIT_TEST_SLUG_PREFIX}
          two: {name: Two, slug: two, metadata: {region: !env {name: KIT_TEST_UNSET_VAR, default: eu}}}
        users:
          _generate:
            count: 20
            values:
              name: !fake {method: person.full_name, locale: de}
              email: !format "u{n}@example.com"
              email_verified: !choice {true: 1, false: 0}
        members:
          _generate:
            per: organizations
            between: [3, 5]
            parent: organization
            values:
              user: !pick {table: users, unique: true}
              role: !choice [admin, member]
        document_sources:
          doc: {organization: "@organizations.one", title: Doc, created_by: !pick users}
        document_chunks:
          _generate:
            per: document_sources
            between: [3, 3]
            parent: source
            values:
              organization: "@parent.organization"
              position: !index
              content: !fake text.sentence
              embedding: !embedding {file: vectors.npy}
        announcements:
          soon: {title: T, body: B, published_at: !now -1d, expires_at: !now +2h30m}
    """)
    load(parse(path), db)
    assert rows_of(db, "organizations", "slug") and {r[0] for r in rows_of(db, "organizations", "slug")} == {"env", "two"}
    assert db.execute_sql("SELECT metadata::jsonb->>'region' FROM organizations WHERE slug = 'two'").fetchone()[0] == "eu"
    users = rows_of(db, "users", "email, email_verified")
    assert len(users) == 20 and all(verified for _, verified in users)
    per_org = db.execute_sql("SELECT count(*), count(DISTINCT user_id) FROM members GROUP BY organization_id").fetchall()
    assert all(3 <= n <= 5 and n == distinct for n, distinct in per_org)
    chunks = db.execute_sql("SELECT position, subvector(embedding, 1, 2)::text, organization_id = (SELECT id FROM organizations "
                            "WHERE slug = 'env') FROM document_chunks ORDER BY position").fetchall()
    assert [(p, same) for p, _, same in chunks] == [(0, True), (1, True), (2, True)]
    assert [v for _, v, _ in chunks] == ["[0,1]", "[1536,1537]", "[3072,3073]"]
    published, expires = db.execute_sql("SELECT published_at, expires_at FROM announcements").fetchone()
    assert (expires - published).total_seconds() == 24 * 3600 + 9000


def resolve_all(fixture, db, seed=0) -> dict[tuple[str, str], dict]:
    resolver = Resolver(fixture, seed, db)
    return {(row.table, row.label): {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in values.items()}
            for table in fixtures.touched_tables(fixture) for row, values in resolver.table_rows(table)}


GENERATED = """
    users:
      fixed: {name: Fixed, email: fixed@example.com}
      _generate:
        count: 5
        values:
          name: !fake person.full_name
          email: !fake person.email
"""


def test_same_file_and_seed_give_the_same_data_and_edits_stay_local(db, tmp_path):
    base = parse(write(tmp_path, "a.yaml", GENERATED))
    first, second = resolve_all(base, db), resolve_all(base, db)
    assert first == second
    other_seed = resolve_all(base, db, seed=7)
    assert other_seed[("users", "a:gen.0")]["name"] != first[("users", "a:gen.0")]["name"]
    (tmp_path / "b").mkdir()
    edited = parse(write(tmp_path / "b", "a.yaml", GENERATED.replace("name: Fixed", "name: Edited")))
    changed = resolve_all(edited, db)
    assert changed[("users", "fixed")]["name"] == "Edited"
    assert {k: v for k, v in changed.items() if k[1] != "fixed"} == {k: v for k, v in first.items() if k[1] != "fixed"}


def test_running_twice_upserts_and_reports_updates(db, tmp_path):
    path = write(tmp_path, "u.yaml", GENERATED)
    assert load(parse(path), db)["users"].inserted == 6
    changed = write(tmp_path, "u.yaml", GENERATED.replace("name: Fixed", "name: Renamed"))
    report = load(parse(changed), db)["users"]
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 5)
    assert len(rows_of(db, "users", "id")) == 6


def test_natural_keys_adopt_rows_already_in_the_database(db, tmp_path):
    db.execute_sql("INSERT INTO plans (slug, name, price) VALUES ('pro', 'Old name', 100)")
    path = write(tmp_path, "p.yaml", """
        plans:
          _key: slug
          pro: {slug: pro, name: Pro, price: 2900}
    """)
    assert load(parse(path), db)["plans"].updated == 1
    assert rows_of(db, "plans", "slug, name, price") == [("pro", "Pro", 2900)]


def test_an_error_in_the_last_row_of_the_last_table_writes_nothing(db, tmp_path):
    path = write(tmp_path, "bad.yaml", """
        users:
          a: {name: A, email: a@example.com}
        organizations:
          o: {name: O, slug: o}
        webhook_endpoints:
          ok: {organization: "@organizations.o", url: "https://ok.test", secret: s}
          bad: {organization: "@organizations.o", url: "ftp://nope.test", secret: s}
    """)
    with pytest.raises(FixtureError) as caught:
        load(parse(path), db)
    assert str(caught.value).startswith(f"{path}:7: webhook_endpoints.bad.url: new row for relation")
    assert "violates check constraint" in str(caught.value)
    assert all(n == 0 for n in counts(db).values())


@pytest.mark.parametrize(
    "text, line, where, words",
    [
        ("users:\n  a: {name: A, email: [unclosed\n", 2, "", "YAML syntax error"),
        ("userz:\n  a: {name: A}\n", 1, "userz", "unknown table"),
        ("users:\n  a:\n    name: A\n    mail: a@x.io\n", 4, "users.a.mail", "unknown column"),
        ("members:\n  m: {organization: '@organizations.nope', user: '@users.nobody'}\n", 2,
         "members.m.organization", "missing reference @organizations.nope"),
        ("organizations:\n  o: {name: O, slug: o}\norg_credits:\n  c: {organization: '@organizations.o', balance: lots}\n",
         4, "org_credits.c.balance", "expected a whole number, got str 'lots'"),
        ("users:\n  a: {name: A, email: a@x.io, email_verified: yes please}\n", 2, "users.a.email_verified",
         "expected true or false"),
        ("organizations:\n  o: {name: O, slug: o}\ndocument_sources:\n  s: {organization: '@organizations.o', title: T}\n"
         "document_chunks:\n  c: {source: '@document_sources.s', organization: '@organizations.o', position: 0,\n"
         "      content: x, embedding: [1, 2, 3]}\n", 7, "document_chunks.c.embedding", "expected 1536 dimensions, got 3"),
        ("users:\n  a: {name: '@users.b.name', email: a@x.io}\n  b: {name: '@users.a.name', email: b@x.io}\n", 2,
         "users.a.name", "references form a cycle: users.a.name -> users.b.name -> users.a.name"),
        ("users:\n  a: {name: !fake person.nonsense, email: a@x.io}\n", 2, "users.a.name", "no such provider method"),
        ("users:\n  a: {name: !env KIT_SURELY_UNSET_VARIABLE, email: a@x.io}\n", 2, "users.a.name",
         "environment variable KIT_SURELY_UNSET_VARIABLE is not set"),
        ("subscriptions:\n  s: {organization: '@organizations.o', plan: {$find: {slug: platinum}}, status: active}\n"
         "organizations:\n  o: {name: O, slug: o}\n", 2, "subscriptions.s.plan", "$find: no plans row with slug = 'platinum'"),
        ("users:\n  a: {name: !now tomorrow, email: a@x.io}\n", 2, "users.a.name", "!now takes an offset"),
        ("organizations:\n  o: {name: O, slug: o}\ndocument_sources:\n  _generate:\n    per: organizations\n"
         "    parent: organization\n    values: {title: T, created_by: !pick users}\n", 7,
         "document_sources.broken:gen.o.0.created_by", "!pick users: no users rows to pick from"),
    ],
)
def test_errors_name_file_line_and_place(db, tmp_path, text, line, where, words):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(FixtureError) as caught:
        load(parse(path), db)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: {where}"), message
    assert words in message
    assert all(n == 0 for n in counts(db).values())


def test_dump_writes_a_fixture_that_loads_back_to_the_same_rows(db, tmp_path):
    load(parse(DEV), db)
    tables = ["organizations", "document_sources", "document_chunks", "feature_flags"]
    before = {t: rows_of(db, t) for t in tables}
    out = tmp_path / "dump" / "snapshot.yaml"
    assert fixtures.dump(tables, out, db) == sum(len(v) for v in before.values())
    assert (out.parent / "snapshot.document_chunks.embedding.npy").exists()
    db.execute_sql("TRUNCATE organizations, document_sources, document_chunks, feature_flags CASCADE")
    load(parse(out), db)
    after = {t: rows_of(db, t) for t in tables}
    assert after == before


def seed_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "kit.seed", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300)


def test_command_finds_paths_under_seeds_and_prints_the_table(db, tmp_path):
    seeds = tmp_path / "myseeds" / "fixtures"
    seeds.mkdir(parents=True)
    (seeds / "tiny.yaml").write_text("users:\n  a: {name: A, email: a@example.com}\n")
    env = {"DATABASE_URL": db.scratch_url, "KIT_SEEDS_DIR": str(tmp_path / "myseeds"),
           "KIT_MIGRATIONS_DIR": str(ROOT / "migrations")}
    result = seed_cli("fixtures/tiny.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "users" in result.stdout and "total" in result.stdout
    missing = seed_cli("fixtures/none.yaml", cwd=tmp_path, env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("kit.seed: error: no fixture file fixtures/none.yaml")


def test_command_refuses_pending_migrations(fresh_database, tmp_path):
    env = {"DATABASE_URL": fresh_database.scratch_url, "KIT_MIGRATIONS_DIR": str(ROOT / "migrations")}
    result = seed_cli(str(DEV), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "pending migration(s)" in result.stderr and "run `pw_migrate migrate` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_large_loads_rebuild_vector_indexes_and_leave_the_schema_as_migrated(db, tmp_path, monkeypatch):
    monkeypatch.setattr(fixtures.loader, "DEFER_INDEX_ROWS", 50)
    executed = []
    original = db.execute_sql

    def spy(sql, *args, **kwargs):
        executed.append(sql)
        return original(sql, *args, **kwargs)

    monkeypatch.setattr(db, "execute_sql", spy)
    path = write(tmp_path, "chunks.yaml", """
        organizations:
          o: {name: O, slug: o}
        document_sources:
          s: {organization: "@organizations.o", title: T}
        document_chunks:
          _generate:
            per: document_sources
            between: [80, 80]
            parent: source
            values:
              organization: "@parent.organization"
              position: !index
              content: x
              embedding: !embedding
    """)
    load(parse(path), db)
    assert any(s.startswith('DROP INDEX "document_chunks_embedding_hnsw') for s in executed)
    assert migrate.verify(db, ROOT / "migrations") == []  # the HNSW index is back, as the models declare it
    assert db.execute_sql("SELECT count(*) FROM document_chunks").fetchone()[0] == 80
    executed.clear()
    load(parse(path), db)  # the table now holds the rows: nothing is dropped
    assert not any(s.startswith("DROP INDEX") for s in executed)


def test_a_natural_key_on_a_foreign_key_column_adopts_the_existing_row(db, tmp_path):
    path = write(tmp_path, "c.yaml", """
        organizations:
          o: {name: O, slug: o}
        customers:
          _key: organization
          c: {organization: "@organizations.o", provider_customer_id: cus_new}
    """)
    load(parse(path), db)
    db.execute_sql("UPDATE customers SET id = gen_random_uuid(), provider_customer_id = 'cus_made_by_app'")
    report = load(parse(path), db)["customers"]
    assert (report.inserted, report.updated) == (0, 1)
    assert rows_of(db, "customers", "provider_customer_id") == [("cus_new",)]


def test_growing_a_generator_keeps_the_rows_it_made_and_columns_draw_independently(db, tmp_path):
    base = """
        users:
          _generate:
            count: {count}
            values:
              name: !fake person.full_name
              email: !format "u{{n}}@example.com"
              {extra}
    """
    first = resolve_all(parse(write(tmp_path, "a.yaml", base.format(count=1500, extra=""))), db)
    grown = resolve_all(parse(write(tmp_path, "a.yaml", base.format(
        count=2500, extra="email_verified: !choice [true, false]"))), db)
    assert len(grown) == 2500 and len({v["name"] for v in grown.values()}) > 1000
    assert all(grown[key]["name"] == values["name"] for key, values in first.items())


def test_generated_embeddings_are_unit_vectors_that_differ_and_repeat_with_the_seed(db, tmp_path):
    path = write(tmp_path, "e.yaml", """
        organizations:
          o: {name: O, slug: o}
        document_sources:
          s: {organization: "@organizations.o", title: T}
        document_chunks:
          _generate:
            per: document_sources
            between: [1100, 1100]
            parent: source
            values: {organization: "@parent.organization", position: !index, content: x, embedding: !embedding}
    """)
    vectors = np.stack([v["embedding"] for k, v in resolve_all(parse(path), db).items() if k[0] == "document_chunks"])
    assert vectors.shape == (1100, 1536) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similarity = vectors @ vectors.T - np.eye(1100)
    assert np.abs(similarity).max() < 0.2  # no two alike: random directions in 1536-d are near orthogonal
    assert abs(float(vectors.mean())) < 1e-3
    again = np.stack([v["embedding"] for k, v in resolve_all(parse(path), db).items() if k[0] == "document_chunks"])
    assert np.array_equal(vectors, again)


def test_a_database_error_in_an_early_table_is_named_while_later_tables_stream(db, tmp_path):
    path = write(tmp_path, "early.yaml", """
        users:
          a: {name: A, email: same@example.com}
          b: {name: B, email: same@example.com}
        organizations:
          _generate:
            count: 3000
            values: {name: !fake finance.company, slug: !format "org-{n}"}
    """)
    with pytest.raises(FixtureError) as caught:
        load(parse(path), db)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: users.b") and "duplicate key value violates unique constraint" in message
    assert all(n == 0 for n in counts(db).values())
    assert load(parse(write(tmp_path, "fine.yaml", "users:\n  a: {name: A, email: a@example.com}\n")), db)["users"].inserted == 1


def many_users_and_organizations(users: int, organizations: int, extra: str = "") -> str:
    """A fixture generating users, then organizations (plus `extra` lines in the organizations table)."""
    return f"""
        users:
          _generate:
            count: {users}
            values: {{name: !fake person.full_name, email: !format "u{{n}}@example.com"}}
        organizations:
          _generate:
            count: {organizations}
            values: {{name: !fake finance.company, slug: !format "org-{{n}}"}}
          {extra}
    """


def test_a_resolve_error_after_thousands_of_rows_were_sent_writes_nothing(db, tmp_path):
    path = write(tmp_path, "late.yaml", many_users_and_organizations(
        6000, 5000, extra='last: {name: "@users.nobody.name", slug: last}'))
    with pytest.raises(FixtureError) as caught:
        load(parse(path), db)
    assert str(caught.value).startswith(f"{path}:9: organizations.last.name: missing reference @users.nobody")
    assert all(n == 0 for n in counts(db).values())


def test_a_backend_killed_mid_load_leaves_nothing_and_the_next_load_works(db, tmp_path):
    path = write(tmp_path, "big.yaml", many_users_and_organizations(20000, 20000))
    pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    killed = []

    def kill_midway(table, done, total):
        if table == "organizations" and done >= 4000 and not killed:
            killer = psycopg2.connect(db.scratch_url)
            killer.autocommit = True
            with killer.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(cur.fetchone()[0])
            killer.close()

    with pytest.raises(FixtureError, match="lost the connection to the database during the load .*; the "
                                           "transaction was never committed, so nothing was written"):
        load(parse(path), db, progress=kill_midway)
    assert killed == [True]
    assert all(n == 0 for n in counts(db).values())
    assert load(parse(path), db)["organizations"].inserted == 20000


def test_lookups_in_the_database_while_rows_stream_pause_the_copy_and_lose_nothing(db, tmp_path, monkeypatch):
    asked_while_streaming = []
    original = fixtures.resolver.Resolver.query

    def query(self, sql, params=()):
        asked_while_streaming.append(self.before_query is not None)
        return original(self, sql, params)

    monkeypatch.setattr(fixtures.resolver.Resolver, "query", query)
    db.execute_sql("INSERT INTO plans (slug, name) VALUES ('legacy', 'Legacy')")
    db.execute_sql("INSERT INTO users (name, email) SELECT 'U' || i, 'u' || i || '@db.example' "
                   "FROM generate_series(1, 50) AS i")
    path = write(tmp_path, "lookups.yaml", """
        organizations:
          _generate:
            count: 3000
            values: {name: !fake finance.company, slug: !format "org-{n}"}
        subscriptions:
          _generate:
            per: organizations
            between: [1, 1]
            parent: organization
            values: {plan: {$find: {slug: legacy}}, status: active}
        document_sources:
          _generate:
            per: organizations
            between: [1, 1]
            parent: organization
            values: {title: T, created_by: !pick users}
    """)
    report = load(parse(path), db)
    assert (report["subscriptions"].inserted, report["document_sources"].inserted) == (3000, 3000)
    legacy = db.execute_sql("SELECT count(*) FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
                            "WHERE p.slug = 'legacy'").fetchone()[0]
    assert legacy == 3000
    picked = db.execute_sql("SELECT count(DISTINCT created_by_id) FROM document_sources").fetchone()[0]
    assert 40 <= picked <= 50  # picks among the rows already in the database
    assert asked_while_streaming.count(True) == 2  # one $find, one pick: each asked once, mid-stream


def test_a_users_own_models_load_and_dump_like_the_kits(db, tmp_path):
    from peewee import ForeignKeyField, IntegerField, TextField

    from kit.models import Organization
    from kit.models.base import BaseModel

    class Project(BaseModel):
        organization = ForeignKeyField(Organization, backref="projects", on_delete="CASCADE")
        name = TextField()
        stars = IntegerField(default=0)

        class Meta:
            table_name = "test_projects"

    Project.bind(db, bind_refs=False, bind_backrefs=False)  # not Organization: it stays on the suite's database
    db.create_tables([Project])
    models = [*ALL_MODELS, Project]
    path = write(tmp_path, "projects.yaml", """
        organizations:
          o: {name: O, slug: o}
        test_projects:
          site: {organization: "@organizations.o", name: "@@site", stars: 3}
          _generate:
            count: 4
            values: {organization: "@organizations.o", name: !format "p{n}"}
    """)
    assert load(parse(path, models=models), db)["test_projects"].inserted == 5
    assert db.execute_sql("SELECT name FROM test_projects WHERE stars = 3").fetchone()[0] == "@site"
    with pytest.raises(FixtureError, match="unknown table 'test_projects'"):
        parse(path)  # the kit's models alone do not know it
    out = tmp_path / "dump.yaml"
    assert fixtures.dump(["organizations", "test_projects"], out, db, models=models) == 6
    before = rows_of(db, "test_projects")
    db.execute_sql("TRUNCATE test_projects, organizations CASCADE")
    load(parse(out, models=models), db)
    assert rows_of(db, "test_projects") == before
