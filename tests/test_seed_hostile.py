"""The seed loader against hostile input and real faults: one sentence at its place, nothing written, nothing lost."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from kit import migrate, seed
from kit.fixtures import FixtureError, load, parse
from kit.models import ALL_MODELS
from kit.models.base import JSONTextField

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "seeds" / "fixtures" / "dev.yaml"
ENV = {"KIT_MIGRATIONS_DIR": str(ROOT / "migrations")}


@pytest.fixture
def db(migrated_database, monkeypatch):
    """A migrated database that `python -m kit.seed` (run in this process) writes to."""
    monkeypatch.setattr(seed, "database", migrated_database)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return migrated_database


def counts(db) -> dict[str, int]:
    return {m._meta.table_name: db.execute_sql(f'SELECT count(*) FROM "{m._meta.table_name}"').fetchone()[0]
            for m in ALL_MODELS}


def run_seed(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m kit.seed ARGS` in this process: exit code, stdout, stderr."""
    code = seed.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def deep_includes(tmp_path: Path) -> Path:
    for i in range(1500):
        (tmp_path / f"chain{i}.yaml").write_text(f"include: [chain{i + 1}.yaml]\n")
    (tmp_path / "chain1500.yaml").write_text("users:\n  z: {name: Z, email: z@example.com}\n")
    return tmp_path / "chain0.yaml"


BOMB = "organizations:\n  o:\n    name: O\n    slug: bomb\n    metadata:\n" + textwrap.indent(
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)), "      ")

# (file text, line of the error, words the message must hold); "{dir}" is the test's directory.
CORPUS = [
    ("include: [{a: 1}]\n", 1, "expected a file path"),
    ("? [a, b]\n: 1\n", 1, "expected a table name"),
    ("users:\n  _key: 5\n", 2, "expected a column name or a list of them"),
    ("users:\n  a: {name: !env {default: x}, email: a@x.io}\n", 2, "!env needs name"),
    ("members:\n  m: {user: !pick {unique: true}}\n", 2, "!pick needs table"),
    ("usage:\n  u: {metric: m, period_start: 2024-02-30, quantity: 1}\n", 2, "not a valid value '2024-02-30'"),
    ("users:\n  a: {name: A, email: a@x.io, created_at: !now +99999999999d}\n", 2, "more than any date can hold"),
    ("users:\n  a: {name: !format \"{n:>999999999}\", email: a@x.io}\n", 2, "a width or precision above 1,000"),
    ("users:\n  a: {name: !fake {method: text.text, quantity: 100000000}, email: a@x.io}\n", 2,
     "quantity 100,000,000 is more than 10,000"),
    ("document_chunks:\n  c: {embedding: !embedding {row: x}}\n", 2, "!embedding row is a whole number"),
    ("users:\n  a:\n    name: A\n    email: a@x.io\n   stray: 1\n", 5, "YAML syntax error"),
    (BOMB, 11, "aliases expand this value to more than 1,000,000 values"),
    ("organizations:\n  o: &r {name: O, slug: r, metadata: {self: *r}}\n", 2, "recursive anchor"),
    ("include: [/dev/zero]\n", 1, "lies outside"),
    ("include: [../../../../../../../../etc/shadow]\n", 1, "lies outside"),
    ("include: [sub]\n", 1, "is a directory"),
    ("users:\n  a: {name: A, email: a@x.io, created_at: '9999-12-31T23:59:59-12:00'}\n", 2,
     "a timestamp whose UTC time lies in the years 1 to 9999"),
    ("userz:\n  a: {name: A}\n", 1, "did you mean 'users'?"),
    ("users:\n  a: {name: A, emial: a@x.io}\n", 2, "did you mean 'email'?"),
    ("users:\n  alice: {name: A, email: a@x.io}\naccounts:\n  x: {user: '@users.alise', provider_id: p, account_id: a}\n",
     4, "did you mean 'alice'?"),
    ("users:\n  a: {name: !fak person.name, email: a@x.io}\n", 2, "did you mean '!fake'?"),
    ("organizations:\n  o: {name: O, slug: o, metadata: " + "[" * 200 + "]" * 200 + "}\n", 2, "nest more than 100 deep"),
    ("users:\n  a: {name: '" + "x" * 1_000_001 + "', email: a@x.io}\n", 2, "characters (at most 1,000,000)"),
    ("users:\n  a.b: {name: A, email: a@x.io}\n", 2, "a row label is a short name"),
    ("users:\n  _generate: {per: organizations, between: [1, 10000000], values: {name: x}}\n", 2,
     "from 0 to 1,000,000"),
    ("users:\n  _generate: {per: users, values: {name: x}}\n", 2, "cannot make rows per row of its own table"),
    ("users:\n  _generate: {count: 2, name: a@b, values: {name: x}}\n", 2, "a short name without '@'"),
    ("- users\n", 1, "a fixture file is a mapping"),
    ("users:\n  a: {name: !fake {method: person.name, locale: xx}, email: a@x.io}\n", 2, "unknown mimesis locale"),
    ("users:\n  a: {name: !fake person.__class__, email: a@x.io}\n", 2, "no such provider method"),
    ("users:\n  a: {name: A, email: a@x.io}\n  a: {name: B, email: b@x.io}\n", 3, "this label is used twice"),
    ("organizations:\n  o: {name: O, slug: o}\ndocument_sources:\n  s: {organization: '@organizations.o', title: T,"
     " created_by: !pick {table: users, match: 1}}\n", 4, "!pick match is a glob"),
    ("users:\n  a: {name: A, email: a@x.io, email_verified: !index 5}\n", 2, "!index takes no argument"),
    ("organizations:\n  o: {name: O, slug: o}\norg_credits:\n  c: {organization: '@organizations.o', "
     "balance: !env KIT_TEST_SECRET}\n", 4,
     "expected a whole number, got the value of environment variable KIT_TEST_SECRET (not shown)"),
    ("users:\n  a: {name: A, email: a@x.io, created_at: !now +2d, created_at: !now}\n", 2, "given twice"),
    ("users:\n  a: {name: A, email: a@x.io, email_verified: !choice []}\n", 2, "at least one option"),
    ("users:\n  _generate: {count: -1}\n", 2, "expected a whole number >= 0"),
    ("users:\n  _generate: {count: 3, valuez: {}}\n", 2, "did you mean 'values'?"),
    ("organizations:\n  o: {name: O, slug: o}\ndocument_sources:\n  s: {organization: '@organizations.o', title: T,"
     " metadata: {? [a, b]: 1}}\n", 4, "a key inside a value must be a plain word"),
]


def test_every_hostile_input_is_one_sentence_at_its_place_and_writes_nothing(db, tmp_path, capsys, monkeypatch):
    load(parse(DEV), db)
    before = counts(db)
    monkeypatch.setenv("KIT_TEST_SECRET", "sk_live_do_not_print_me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "latin1.yaml").write_bytes(b"users:\n  a: {name: Jos\xe9}\n")
    cases = [(text, line, words, tmp_path / f"case{i}.yaml") for i, (text, line, words) in enumerate(CORPUS)]
    cases.append((None, None, "includes nest more than 32 files deep", deep_includes(tmp_path)))
    cases.append((None, 2, "is not UTF-8 text", tmp_path / "latin1.yaml"))
    problems = []
    for text, line, words, path in cases:
        if text is not None:
            path.write_text(text.replace("{dir}", str(tmp_path)))
        try:
            code, out, err = run_seed(capsys, str(path))
        except BaseException:  # noqa: BLE001 - a traceback is what this test forbids
            problems.append(f"{path.name}: traceback\n{traceback.format_exc(limit=3)}")
            continue
        message = err.strip()
        where = f"kit.seed: error: {path}:{line}: " if line else "kit.seed: error: /"
        placed = message.startswith(where) and re.match(r"kit\.seed: error: \S+\.yaml:\d+: ", message)
        if code == 0 or not placed or words not in message or "\n" in message \
                or "Traceback" in err or "sk_live" in err or "root:" in err:
            problems.append(f"{path.name} (exit {code}): {message[:300]!r}; wanted {where!r} ... {words!r}")
    assert not problems, "\n".join(problems)
    assert counts(db) == before


def test_reset_empties_exactly_the_tables_the_files_name(db, tmp_path, capsys):
    load(parse(DEV), db)
    before = counts(db)
    only = tmp_path / "orgs.yaml"
    only.write_text("organizations:\n  solo: {name: Solo, slug: solo}\n")
    code, out, err = run_seed(capsys, "--reset", str(only))
    assert code == 1
    assert err.startswith("kit.seed: error: --reset would also empty ") and "members (" in err
    assert "subscriptions (" in err and "--reset-cascade" in err and "nothing was written" in err
    assert counts(db) == before
    code, out, err = run_seed(capsys, "--reset-cascade", str(only))
    assert code == 0, err
    after = counts(db)
    assert after["organizations"] == 1 and after["members"] == 0 and after["subscriptions"] == 0
    assert after["users"] == before["users"] and after["audit_logs"] == before["audit_logs"]
    emptied = next(line for line in out.splitlines() if line.startswith("--reset emptied"))
    assert f"organizations ({before['organizations']:,} rows)" in emptied
    assert f"members ({before['members']:,} rows)" in emptied and "users" not in emptied
    users_only = tmp_path / "users.yaml"
    users_only.write_text("users:\n  solo: {name: Solo, email: solo@example.com}\n")
    assert run_seed(capsys, "--reset", str(users_only))[0] == 1  # sessions, accounts... hold rows


def test_staging_never_touches_a_user_table_of_the_same_name(db, tmp_path):
    db.execute_sql('CREATE TABLE "kit_seed_users" (note text)')
    db.execute_sql("INSERT INTO kit_seed_users VALUES ('mine')")
    load(parse(DEV), db)
    load(parse(DEV), db)  # the second load stages users for comparison
    assert db.execute_sql("SELECT note FROM kit_seed_users").fetchall() == [("mine",)]


def test_a_second_files_generators_never_touch_the_dev_seeds_rows(db, tmp_path):
    load(parse(DEV), db)
    users = db.execute_sql("SELECT id, name, email FROM users ORDER BY id").fetchall()
    extra = tmp_path / "extra.yaml"
    extra.write_text("users:\n  _generate:\n    count: 40\n    values:\n      name: !fake person.full_name\n"
                     "      email: !format \"extra{n}@example.net\"\n")
    report = load(parse(extra), db)["users"]
    assert (report.inserted, report.updated) == (40, 0)
    again = load(parse(DEV), db)
    assert all(c.inserted == 0 and c.updated == 0 for c in again.values())
    now = db.execute_sql("SELECT id, name, email FROM users ORDER BY id").fetchall()
    assert set(users) <= set(now) and len(now) == len(users) + 40


def test_a_dump_of_every_table_loads_back_unchanged_into_a_fresh_database(db, fresh_database, tmp_path, capsys):
    assert db.scratch_url != fresh_database.scratch_url  # two databases: the dump is compared with another
    load(parse(DEV), db)
    db.execute_sql("UPDATE organizations SET metadata = %s WHERE slug = 'acme'",
                   ('{"twitter": "@acme", "home": "@@home", "q": {"$find": {"slug": "x"}}, "tag": "!fake x"}',))
    tables = [m._meta.table_name for m in ALL_MODELS]
    out = tmp_path / "dump" / "all.yaml"
    code, _, err = run_seed(capsys, "--dump", ",".join(tables), "--out", str(out))
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.parent.glob("*.npy"))
    assert run_seed(capsys, "--dump", "users", "--out", str(out))[0] == 1  # exists: refused
    code, _, err = run_seed(capsys, "--dump", "users", "--out", str(out.parent))
    assert code == 1 and "is a directory" in err and "Traceback" not in err
    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    load(parse(out), fresh_database)
    for model in ALL_MODELS:  # JSON kept as text compares by its value: the model's value is a dict, written compact
        columns = ", ".join(f'"{f.column_name}"::jsonb' if isinstance(f, JSONTextField) else f'"{f.column_name}"'
                            for f in model._meta.sorted_fields)
        query = f'SELECT {columns} FROM "{model._meta.table_name}" ORDER BY id'
        assert fresh_database.execute_sql(query).fetchall() == db.execute_sql(query).fetchall(), model._meta.table_name
    metadata = json.loads(fresh_database.execute_sql("SELECT metadata FROM organizations WHERE slug = 'acme'")
                          .fetchone()[0])
    assert metadata["twitter"] == "@acme" and metadata["home"] == "@@home" and metadata["q"] == {"$find": {"slug": "x"}}
    code, _, err = run_seed(capsys, "--dump", "users", "--out", str(out), "--force")
    assert code == 0 and stat.S_IMODE(out.stat().st_mode) == 0o600


def seed_process(path: Path, url: str, *args: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ.update(ENV, DATABASE_URL=url)
    return subprocess.Popen([sys.executable, "-m", "kit.seed", str(path), *args], env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_seeds_started_at_once_take_turns_and_both_succeed(db):
    runs = [seed_process(DEV, db.scratch_url) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    single = counts(db)
    assert load(parse(DEV), db) and counts(db) == single
    totals = sorted(int(out.splitlines()[-1].split()[1].replace(",", "")) for _, out, _ in results)
    assert totals[0] == 0 and totals[1] == sum(single.values())  # one inserted all, the other nothing


STREAM = """
audit_logs:
  _generate:
    count: {count}
    values:
      action: !choice {{user.signed_in: 6, document.uploaded: 2}}
      ip: !fake internet.ip_v4
      target_id: !format "t{{n}}"
      metadata: {{source: stream}}
"""


def peak_rss_of_seed(path: Path, url: str) -> tuple[int, str]:
    """Run the seed command in a child process; return its peak resident memory (bytes) and its output."""
    code = ("import resource, sys; from kit.seed import main; rc = main([sys.argv[1]]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ.update(ENV, DATABASE_URL=url)
    result = subprocess.run([sys.executable, "-c", code, str(path)], env=environ, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[-1]), result.stdout


@pytest.mark.once  # the loader's own memory: the same through any pooler
def test_two_million_generated_rows_stream_in_flat_memory(db, tmp_path):
    small, large = tmp_path / "small.yaml", tmp_path / "large.yaml"  # different names: different rows
    small.write_text(STREAM.format(count=100_000))
    large.write_text(STREAM.format(count=2_000_000))
    small_peak, _ = peak_rss_of_seed(small, db.scratch_url)
    large_peak, out = peak_rss_of_seed(large, db.scratch_url)
    assert db.execute_sql("SELECT count(*) FROM audit_logs").fetchone()[0] == 2_100_000  # another file, new rows
    assert "2,000,000" in out
    grown = (large_peak - small_peak) / 2**20
    assert grown < 40, f"peak memory grew {grown:.0f} MiB from 100,000 to 2,000,000 rows"
    assert large_peak < 400 * 2**20, f"peak memory {large_peak / 2**20:.0f} MiB"


def test_literal_values_and_escapes_load_as_written(db, tmp_path):
    path = tmp_path / "lit.yaml"
    path.write_text("organizations:\n  o: {name: '@@acme', slug: o, metadata: !literal {a: '@b', $find: 1}}\n")
    load(parse(path), db)
    name, metadata = db.execute_sql("SELECT name, metadata FROM organizations").fetchone()
    assert name == "@acme" and json.loads(metadata) == {"a": "@b", "$find": 1}


def test_a_fixture_cannot_be_read_through_a_symlink_outside_its_directory(db, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("users:\n  s: {name: S, email: s@x.io}\n")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "link.yaml").symlink_to(outside / "secret.yaml")
    (inside / "top.yaml").write_text("include: [link.yaml]\n")
    with pytest.raises(FixtureError, match="lies outside"):
        parse(inside / "top.yaml")
    assert parse(inside / "top.yaml", allow_any_include=True).rows[0].label == "s"

