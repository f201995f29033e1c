"""`kit init [DIR]`: a new project from the kit's starter files, as `django-admin startproject` does.

It writes `pyproject.toml` with `[tool.kit]`, `migrations/` (the kit's migrations and `conf.py`, owned
by the project from then on, and the example model's), `seeds/fixtures/` (the development seed),
`models.py` with one example model, `tests/` with a first test (the kit's pytest plugin runs it
with no configuration), a README and a `.gitignore`. It never overwrites a file.
"""

from __future__ import annotations

import re
from pathlib import Path

from kit.errors import KitError

STARTER = Path(__file__).resolve().parent / "scaffold"

PYPROJECT = """\
# The kit finds this project from any directory inside it by the [tool.kit] table below.
[tool.kit]
models = ["kit.models", "models"]  # the kit's tables and yours (models.py): migrations, drift checks, seeds
migrations = "migrations"
seeds = "seeds"

[tool.pytest.ini_options]
pythonpath = ["."]  # tests import models.py as the application does
"""

GITIGNORE = """\
__pycache__/
.kit/
.env
"""


def plan(target: Path) -> dict[Path, bytes]:
    """Every file a new project in `target` gets, with its content."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", target.name).strip("-") or "app"
    files: dict[Path, bytes] = {}
    for source in sorted((STARTER / "migrations").glob("*.py")) + sorted((STARTER / "project" / "migrations").glob(
            "*.py")):
        files[target / "migrations" / source.name] = source.read_bytes()
    for source in sorted((STARTER / "seeds" / "fixtures").glob("*.yaml")):
        files[target / "seeds" / "fixtures" / source.name] = source.read_bytes()
    files[target / "models.py"] = (STARTER / "project" / "models.py").read_bytes()
    for source in sorted((STARTER / "project" / "tests").glob("*.py")):
        files[target / "tests" / source.name] = source.read_bytes()
    readme = (STARTER / "project" / "README.md").read_text(encoding="utf-8").replace("{name}", name)
    files[target / "README.md"] = readme.encode("utf-8")
    files[target / "pyproject.toml"] = PYPROJECT.encode("utf-8")
    files[target / ".gitignore"] = GITIGNORE.encode("utf-8")
    return files


def create(target: Path) -> list[Path]:
    """Write a new project into `target` (made if needed); refuse, writing nothing, if any file exists."""
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise KitError(f"{target} is a file; give a directory for the new project")
    files = plan(target)
    existing = [path for path in files if path.exists() or path.is_symlink()]
    if existing:
        raise KitError(f"{existing[0]} exists; kit init never overwrites a file (nothing was written)")
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return list(files)
