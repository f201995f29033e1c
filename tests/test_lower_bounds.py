"""The oldest versions the package's metadata accepts, installed and run: Python, peewee, psycopg2 and the rest.

setup.cfg's lower bounds are promises: a fresh virtual environment with the oldest Python that
`python_requires` allows and every requirement pinned to its lower bound gets the unit tier and a
round of the kit's model operations against the suite's database. Without that Python here, skipped
with one line. Run once, not again through PgBouncer.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = configparser.ConfigParser()
CONFIG.read(ROOT / "setup.cfg")
OLDEST_PYTHON = re.fullmatch(r">=\s*(\d+\.\d+)", CONFIG["options"]["python_requires"].strip())[1]


def _interpreter() -> str | None:
    """A Python of the oldest version `python_requires` allows that runs here (pyenv's, or one on PATH)."""
    candidates = [*map(str, sorted(Path.home().glob(f".pyenv/versions/{OLDEST_PYTHON}.*/bin/python{OLDEST_PYTHON}"))),
                  shutil.which(f"python{OLDEST_PYTHON}")]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:  # a shim may not run
            return candidate
    return None


def lower_bounds(requirements: str) -> list[str]:
    """Each requirement pinned to its lower bound (`peewee>=4.5,<5` -> `peewee==4.5`)."""
    pins = []
    for line in requirements.split("\n"):
        line = line.strip()
        if line:
            found = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+?)\s*>=\s*([\w.]+)(?:\s*,.*)?", line)
            assert found, f"setup.cfg: {line!r} has no lower bound"
            pins.append(f"{found[1]}=={found[2]}")
    return pins


pytestmark = [
    pytest.mark.skipif(_interpreter() is None, reason=f"no Python {OLDEST_PYTHON} here: the lower-bound run is skipped"),
    pytest.mark.skipif(os.environ.get("DATABASE_POOLER") == "pgbouncer", reason="run once, not through PgBouncer"),
]

EXTRAS = "lint,seed,embedded"  # what the unit tier needs (and the embedded server's package, installed)
SCRIPT = """
import uuid
from kit.models import Organization, OrgCredit, Usage
org = Organization.create(name="Lower bounds", slug="lower-" + uuid.uuid4().hex[:8])
assert Organization.get_by_id(org.id).name == "Lower bounds"
assert OrgCredit.grant(org, 5) == 5 and OrgCredit.consume(org, 2) == 3
assert Usage.increment(org, "lower", 2) == 2 and Usage.increment(org, "lower", 1) == 3
import peewee, psycopg2, sys
print(sys.version_info[:2], peewee.__version__, psycopg2.__version__.split()[0])
"""


def test_the_oldest_versions_the_metadata_accepts_install_and_run(tmp_path, test_db_url):
    extras = CONFIG["options.extras_require"]
    pins = lower_bounds(CONFIG["options"]["install_requires"]) + [
        pin for extra in EXTRAS.split(",") for pin in lower_bounds(extras[extra])]
    (tmp_path / "lower.txt").write_text("\n".join(pins) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([_interpreter(), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--constraint", str(tmp_path / "lower.txt"),
                              f"{ROOT}[{EXTRAS}]", "pytest"], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_"))}
    env |= {"KIT_SHAPES_VERIFY": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    unit = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "unit", "tests/unit"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert unit.returncode == 0, unit.stdout[-3000:]
    ran = subprocess.run([python, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=env | {"DATABASE_URL": test_db_url})
    assert ran.returncode == 0, ran.stderr[-2000:]
    version, peewee_version, psycopg2_version = ran.stdout.strip().rsplit(" ", 2)
    assert version == f"({OLDEST_PYTHON.replace('.', ', ')})"
    pinned = dict(pin.split("==") for pin in pins)
    assert _release(peewee_version) == _release(pinned["peewee"])
    assert _release(psycopg2_version) == _release(pinned["psycopg2-binary"])


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
