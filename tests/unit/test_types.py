"""The type checker over `kit/`: strict and clean on the public core, and clean over the whole package.

`mypy --strict` on the modules a user's code meets first (the package, its errors, the settings, the
tenant context, prepared statements); the rest of `kit/` is checked without `--strict` and must be
clean too. peewee ships stubs of its public API only: where the kit reads peewee's private state (a
query's `_where`, an index's `_name`), it does so through a value typed `Any` or a declaration on its
own subclass, named where it happens. mypy is a dev dependency (pinned: its verdicts change between
releases); without it this is skipped with one line.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.skipif(importlib.util.find_spec("mypy") is None,  # in this Python
                                                   reason="mypy is not installed (pip install -e '.[dev]')")]

ROOT = Path(__file__).resolve().parents[2]
STRICT = ["kit/__init__.py", "kit/errors.py", "kit/masking.py", "kit/config.py", "kit/tenancy.py", "kit/db/prepared.py"]


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_public_core_is_strictly_typed():
    ran = mypy("--strict", "--allow-untyped-calls", "--follow-imports=silent", *STRICT)
    assert ran.returncode == 0, ran.stdout[-3000:]


def test_the_whole_package_type_checks_clean():
    ran = mypy("kit")
    assert ran.returncode == 0 and "Success: no issues found" in ran.stdout, ran.stdout[-3000:]
