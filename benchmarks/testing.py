"""What the kit's pytest plugin costs a test suite, beside migrating from scratch and beside pytest-django.

1. **A database for a run** (or an xdist worker): cloned from the template (`kit.testing.template`)
   against made from scratch (create, the kit's roles, every migration), medians of `--rounds`.
2. **The `db` fixture per test**: `--tests` tests that take `db` and as many that take nothing, run by
   pytest in a project of its own; each test's time (setup, call, teardown, as pytest reports
   them), the median of the first group less the median of the second. The same with
   pytest-django's `db` (`@pytest.mark.django_db`) on a comparable Django model, over the same
   PostgreSQL, in a virtual environment of its own (Django, pytest-django and psycopg2 from the
   package index; skipped with one line where they cannot be installed).

Run: `python benchmarks/testing.py [--tests N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tenancy import admin, with_dbname

from kit import embedded, roles
from kit.config import load_settings
from kit.db import resolve_url
from kit.testing import template

ROOT = Path(__file__).resolve().parent.parent
DJANGO_SETTINGS = '''
import os
from urllib.parse import urlsplit
url = urlsplit(os.environ["BENCH_ADMIN_URL"])
query = dict(part.split("=", 1) for part in url.query.split("&") if part)
SECRET_KEY = "bench"
INSTALLED_APPS = ["app"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": url.username,
                         "HOST": query.get("host", url.hostname), "PORT": query.get("port", url.port or 5432)}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
'''
TIMES = '''
import json
import time

times = {}


def pytest_runtest_logreport(report):
    times[report.nodeid] = times.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    with open("times.json", "w") as out:
        json.dump(times, out)
'''
DJANGO_MODEL = '''
from django.db import models


class Organization(models.Model):
    name = models.TextField()
    slug = models.TextField(unique=True)
'''


def medians_per_test(times: Path) -> tuple[float, float]:
    """(median seconds of tests named test_db_*, of tests named test_plain_*): setup, call and teardown."""
    groups: dict[str, list[float]] = {"db": [], "plain": []}
    for nodeid, seconds in json.loads(times.read_text()).items():
        groups[nodeid.split("::test_")[1].split("_")[0]].append(seconds)
    return statistics.median(groups["db"]), statistics.median(groups["plain"])


def run_pytest(python: str, directory: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run the project's tests; the two medians."""
    (directory / "conftest.py").write_text(TIMES)
    ran = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                         cwd=directory, env=env, capture_output=True, text=True, timeout=1800)
    if ran.returncode != 0:
        raise SystemExit(f"pytest failed in {directory}:\n{ran.stdout[-3000:]}{ran.stderr[-2000:]}")
    return medians_per_test(directory / "times.json")


def kit_tests(tests: int, env: dict[str, str]) -> tuple[float, float]:
    """The kit's `db` fixture: the two medians."""
    directory = Path(tempfile.mkdtemp(prefix="kit-bench-testing-"))
    body = "".join(f"def test_db_{i}(db):\n    pass\n\n\ndef test_plain_{i}():\n    pass\n\n\n" for i in range(tests))
    (directory / "test_speed.py").write_text("import pytest\n\n\n" + body)
    return run_pytest(sys.executable, directory, env | {"KIT_PROJECT_ROOT": str(directory)})


def django_tests(tests: int, admin_url: str) -> tuple[float, float] | None:
    """pytest-django's `db`: the two medians, or None where Django cannot be installed."""
    directory = Path(tempfile.mkdtemp(prefix="kit-bench-django-"))
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "django", "pytest-django", "psycopg2-binary"],
                               capture_output=True, text=True, timeout=900)
    if installed.returncode != 0:
        print(f"pytest-django: not measured, it could not be installed ({installed.stderr.strip().splitlines()[-1]})")
        return None
    (directory / "app").mkdir()
    (directory / "app" / "__init__.py").write_text("")
    (directory / "app" / "models.py").write_text(DJANGO_MODEL)
    (directory / "settings.py").write_text(DJANGO_SETTINGS)
    (directory / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = settings\n")
    subprocess.run([python, "-m", "django", "makemigrations", "app"], cwd=directory, check=True, capture_output=True,
                   env=os.environ | {"DJANGO_SETTINGS_MODULE": "settings", "PYTHONPATH": str(directory),
                                     "BENCH_ADMIN_URL": admin_url})
    body = "".join(f"@pytest.mark.django_db\ndef test_db_{i}():\n    pass\n\n\ndef test_plain_{i}():\n    pass\n\n\n"
                   for i in range(tests))
    (directory / "test_speed.py").write_text("import pytest\n\n\n" + body)
    return run_pytest(python, directory, dict(os.environ) | {"BENCH_ADMIN_URL": admin_url})


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300, help="tests of each kind")
    parser.add_argument("--rounds", type=int, default=5, help="databases made each way")
    args = parser.parse_args()
    settings = load_settings()
    admin_url = os.environ.get("KIT_TEST_ADMIN_URL") or embedded.start(settings.data_dir, roles.ADMIN)
    owner_url = resolve_url(settings, roles.OWNER)
    directory = ROOT / "migrations"

    def from_scratch() -> None:
        name = f"kit_bench_scratch_{os.getpid()}"
        admin(admin_url, f'CREATE DATABASE "{name}" OWNER {roles.OWNER}')
        roles.bootstrap(with_dbname(admin_url, name))
        template.migrate_as_owner(with_dbname(owner_url, name), directory)
        admin(admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')

    def from_template(made: str) -> None:
        name = template.clone(admin_url, made, "bench")
        template.drop(admin_url, name)

    made = template.ensure_template(admin_url, owner_url, directory)
    timings: dict[str, list[float]] = {"from scratch (create, roles, 10 migrations)": [],
                                       "cloned from the template": []}
    for _ in range(args.rounds):
        for label, make in zip(timings, (from_scratch, lambda: from_template(made)), strict=True):
            started = time.perf_counter()
            make()
            timings[label].append(time.perf_counter() - started)
    print(f"a database for a run, median of {args.rounds} (each made and dropped):")
    for label, seconds in timings.items():
        print(f"  {label:<46} {statistics.median(seconds) * 1000:>8,.0f} ms")
    scratch, cloned = (statistics.median(v) for v in timings.values())
    print(f"  the template is {scratch / cloned:.0f}x faster\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIT_", "PYTEST_"))}
    env |= {"KIT_TEST_ADMIN_URL": admin_url, "KIT_MIGRATIONS_DIR": str(directory),
            "KIT_DATA_DIR": str(settings.data_dir)}
    rows = [("kit (`db`: a transaction rolled back)", kit_tests(args.tests, env))]
    django = django_tests(args.tests, admin_url)
    if django is not None:
        rows.append(("pytest-django (`django_db`)", django))
    print(f"per test, median of {args.tests} (setup + call + teardown, less a test with no fixture):")
    for label, (with_db, plain) in rows:
        print(f"  {label:<40} {(with_db - plain) * 1000:>7.2f} ms  (with it {with_db * 1000:.2f} ms, "
              f"without {plain * 1000:.2f} ms)")
    if django is not None:
        kit_cost, django_cost = (r[1][0] - r[1][1] for r in rows)
        print(f"  pytest-django / kit = {django_cost / kit_cost:.2f}")


if __name__ == "__main__":
    main()
