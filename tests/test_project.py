"""The kit inside a user's own project: one root found from anywhere inside, [tool.kit], the user's models everywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kit.config import ConfigError
from kit.project import find_root, load_project

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_root_is_found_from_any_directory_inside_the_project(tmp_path):
    project = tmp_path / "app"
    (project / "scripts" / "deep").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'app'\n\n[tool.kit]\nmodels = ['kit.models', 'app.models']\n")
    assert find_root(project / "scripts" / "deep") == project
    assert find_root(tmp_path) is None
    legacy = tmp_path / "legacy"
    (legacy / "migrations").mkdir(parents=True)
    (legacy / "migrations" / "conf.py").write_text("")
    assert find_root(legacy / "migrations") == legacy
    found = load_project(project / "scripts" / "deep", env={})
    assert found.root == project and found.data_dir == project / ".kit"
    assert found.migrations == project / "migrations" and found.seeds == project / "seeds"
    assert found.models == ("kit.models", "app.models")


def test_outside_any_project_the_data_lives_in_one_place_per_user(tmp_path):
    outside = load_project(tmp_path, env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert outside.root is None and outside.data_dir == tmp_path / "xdg" / "kit"
    assert load_project(tmp_path, env={"KIT_DATA_DIR": str(tmp_path / "mine")}).data_dir == tmp_path / "mine"


def test_the_settings_and_directories_follow_the_project_not_the_current_directory(tmp_path):
    code = ("from kit.config import load_settings; from kit.migrate.loader import default_directory; "
            "from kit.seed import seeds_directory; print(load_settings().data_dir, default_directory(), seeds_directory())")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    for cwd in (ROOT, ROOT / "tests", ROOT / "kit" / "models"):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environ, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [str(ROOT / ".kit"), str(ROOT / "migrations"), str(ROOT / "seeds")], cwd


@pytest.mark.parametrize("text, words", [
    ("[tool.kit]\nmodel = ['x']\n", "[tool.kit] has no setting 'model'"),
    ("[tool.kit]\nmodels = 'app.models'\n", "models must be a list of module names"),
    ("[tool.kit]\nseeds = 3\n", "seeds must be a directory path"),
    ("[tool.kit\n", "is not valid TOML"),
])
def test_a_bad_tool_kit_table_is_one_sentence(tmp_path, text, words):
    (tmp_path / "pyproject.toml").write_text(text)
    if "[tool.kit]" not in text:
        (tmp_path / "migrations").mkdir()
        (tmp_path / "migrations" / "conf.py").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path, env={})
    assert words in str(caught.value) and str(tmp_path / "pyproject.toml") in str(caught.value)


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def test_docker_compose_is_a_deployment_shape_not_a_demo():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    postgres, migrate = compose["services"]["postgres"], compose["services"]["migrate"]
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg16", postgres["image"])  # a pinned release
    assert all(port.startswith("${POSTGRES_BIND:-127.0.0.1}:") for port in postgres["ports"])  # localhost by default
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # no password in the file
    assert "kit" not in {v for v in postgres["environment"].values() if "PASSWORD" in v}
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["command"][-1].endswith("kit db roles && kit migrate") and migrate["restart"] == "no"
    roles = migrate["environment"]  # the superuser makes the roles; migrations run as the owner, apps as kit_app
    assert roles["DATABASE_URL"].startswith("postgresql://kit_app:")
    assert roles["DATABASE_OWNER_URL"].startswith("postgresql://kit_owner:")
    assert all(roles[f"KIT_{r}_PASSWORD"].startswith(f"${{KIT_{r}_PASSWORD:?") for r in ("OWNER", "APP", "AUTH"))
    example = (ROOT / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=\n" in example and ".env" in (ROOT / ".gitignore").read_text().split()


TASKS_MODEL = '''

class Task(TimestampedModel):
    """A model the user adds after `kit init`."""

    project = ForeignKeyField(Project, backref="tasks", on_delete="CASCADE")
    title = TextField()
    done = IntegerField(default=0, constraints=[Check("done IN (0, 1)", name="tasks_done_flag")])

    class Meta:
        table_name = "tasks"
'''

TASKS_FIXTURE = '''
organizations:
  _key: slug
  acme: {name: Acme Inc., slug: acme}
projects:
  site: {organization: "@organizations.acme", name: Website}
tasks:
  copy: {project: "@projects.site", title: "Write the copy"}
  _generate:
    count: 5
    values: {project: "@projects.site", title: !format "task {n}"}
'''


@pytest.mark.once  # packaging, and a project's own embedded server: no pooler in the way
def test_from_a_built_wheel_kit_init_gives_a_project_that_works_from_any_directory(tmp_path):
    """Wheel, fresh venv, `kit init`, migrate, seed, a model of one's own, its migration, seed, dump, a script."""
    wheels = tmp_path / "wheels"
    # From a copy of the sources: setuptools reuses a `build/` directory and never removes files from
    # it, so a file renamed in the repository would otherwise ship twice.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".kit", "build", "*.egg-info", "node_modules", "__pycache__", ".venv", ".ruff_cache", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("peewee_saas_kit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    dependencies = Path(subprocess.run([sys.executable, "-c", "import peewee, os; print(os.path.dirname(peewee.__file__))"],
                                       check=True, capture_output=True, text=True).stdout.strip())
    (site / "kit_test_dependencies.pth").write_text(f"{dependencies}\n")  # the kit's dependencies, not the kit
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_", "PYTHON")) or k == "DATABASE_POOLER"}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    installed = run([str(python), "-c", "import kit; print(kit.__file__)"], tmp_path, env).stdout
    assert installed.startswith(str(site)), installed  # the wheel's kit, not the repository's

    run([str(venv / "bin" / "kit"), "init", "myapp"], tmp_path, env)
    app = tmp_path / "myapp"
    (app / "scripts").mkdir()
    pw_migrate = [str(python), "-m", "peewee_migrate"]
    try:
        first = run([*pw_migrate, "migrate"], app, env)
        assert f"creating a new embedded PostgreSQL 16 in {app / '.kit' / 'pgdata'}" in first.stderr
        run([str(python), "-m", "kit.seed", "fixtures/dev.yaml"], app / "scripts", env)
        with (app / "models.py").open("a") as models:
            models.write(TASKS_MODEL)
        run([*pw_migrate, "create", "--auto", "add_tasks"], app, env)
        generated = next((app / "migrations").glob("*_add_tasks.py")).read_text()
        assert 'table_name = "tasks"' in generated and 'table_name = "projects"' not in generated
        run([*pw_migrate, "migrate"], app, env)
        status = run([str(venv / "bin" / "kit"), "migrate", "status"], app / "scripts", env).stdout
        assert "add_tasks" in status and "pending" not in status and "unchecked" not in status, status
        run([str(venv / "bin" / "kit"), "migrate", "verify"], app / "scripts", env)
        (app / "seeds" / "fixtures" / "tasks.yaml").write_text(textwrap.dedent(TASKS_FIXTURE))
        seeded = run([str(python), "-m", "kit.seed", "fixtures/tasks.yaml"], app / "scripts", env).stdout
        assert "tasks" in seeded
        run([str(python), "-m", "kit.seed", "--dump", "tasks", "--out", "tasks-dump.yaml"], app, env)
        assert "Write the copy" in (app / "tasks-dump.yaml").read_text()
        (app / "scripts" / "count.py").write_text(
            "from kit.db import database\n"
            "print(database.execute_sql('SELECT count(*) FROM tasks').fetchone()[0],"
            " database.execute_sql('SELECT count(*) FROM users').fetchone()[0] > 0)\n")
        elsewhere = run([*pw_migrate, "migrate", "--directory", str(app / "migrations")], tmp_path, env)
        assert "creating" not in elsewhere.stderr  # the project's server, though run from outside it
        shown = run([str(python), "count.py"], app / "scripts", env)
        assert shown.stdout.split() == ["6", "True"] and "creating" not in shown.stderr  # the same server
        assert not (app / "scripts" / ".kit").exists()
        (app / "scripts" / "report.py").write_text(  # a script that imports the project's own models
            "import sys\nfrom models import Task\nprint(Task.select().count(), sys.argv[1:])\n")
        reported = run([str(venv / "bin" / "kit"), "run", "report.py", "--top", "3"], app / "scripts", env)
        assert reported.stdout.split() == ["6", "['--top',", "'3']"], reported.stdout
        # the first tests `kit init` wrote pass with no configuration, and leave no row behind, on one
        # worker and on two (each its own database)
        tested = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], app, env)
        assert "2 passed" in tested.stdout, tested.stdout
        tested = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], app, env)
        assert "2 passed" in tested.stdout, tested.stdout
        assert run([str(python), "count.py"], app / "scripts", env).stdout.split() == ["6", "True"]
    finally:
        subprocess.run([str(venv / "bin" / "kit"), "db", "stop"], cwd=app, env=env, capture_output=True, timeout=120)


def test_the_seed_outside_any_project_says_it_cannot_check_migrations(tmp_path):
    (tmp_path / "f.yaml").write_text("users:\n  a: {name: A, email: a@example.com}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/none"  # never reached
    result = subprocess.run([sys.executable, "-m", "kit.seed", "f.yaml"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"kit.seed: error: no migrations directory at {tmp_path / 'migrations'}")


def test_kit_init_never_overwrites_a_file(tmp_path):
    from kit import KitError
    from kit.new_project import create

    written = create(tmp_path / "app")
    assert (tmp_path / "app" / "pyproject.toml") in written and (tmp_path / "app" / "migrations" / "conf.py").exists()
    (tmp_path / "app" / "models.py").write_text("# mine\n")
    before = {p: p.read_bytes() for p in (tmp_path / "app").rglob("*") if p.is_file()}
    with pytest.raises(KitError, match="exists; kit init never overwrites a file"):
        create(tmp_path / "app")
    assert {p: p.read_bytes() for p in (tmp_path / "app").rglob("*") if p.is_file()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("theirs\n")
    with pytest.raises(KitError, match="README.md exists"):
        create(other)
    assert sorted(p.name for p in other.iterdir()) == ["README.md"]  # nothing written beside it


def test_a_bad_tool_kit_table_stops_every_command_with_one_sentence(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.kit]\nmodels = 'oops'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    for args in (["kit", "migrate", "status"], ["kit", "--help"], ["kit.seed", "x.yaml"]):
        module, *rest = args
        result = subprocess.run([sys.executable, "-m", "kit.cli" if module == "kit" else module, *rest], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        if rest != ["--help"]:
            assert result.returncode == 2 and "models must be a list of module names" in result.stderr, args


def test_a_closed_pipe_ends_a_command_quietly():
    result = subprocess.run(f"{sys.executable} -m kit.cli db status | true", shell=True, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_pool_stats_before_first_use_are_the_configured_sizes(monkeypatch):
    from kit.db import Database

    monkeypatch.setenv("DATABASE_POOL_MIN", "1")
    monkeypatch.setenv("DATABASE_POOL_MAX", "7")
    stats = Database().pool_stats()
    assert (stats["min"], stats["max"], stats["in_use"], stats["opened"]) == (1, 7, 0, 0)


def test_a_query_on_a_database_never_migrated_is_one_sentence_saying_so(fresh_database):
    from peewee import ProgrammingError

    from kit import NotMigrated

    with pytest.raises(NotMigrated, match="never migrated; run `pw_migrate migrate`") as caught:
        fresh_database.execute_sql("SELECT count(*) FROM organizations")
    assert isinstance(caught.value, ProgrammingError)  # what code catching peewee's class expects
    fresh_database.execute_sql("CREATE TABLE migratehistory (id serial)")
    with pytest.raises(ProgrammingError) as caught:  # migrated: a missing table is the caller's own
        fresh_database.execute_sql("SELECT count(*) FROM organizations")
    assert not isinstance(caught.value, NotMigrated)
