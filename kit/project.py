"""The project the kit works in: its root directory, and what `[tool.kit]` in its pyproject.toml says.

The root is the nearest directory, from the current one upwards, whose `pyproject.toml` has a
`[tool.kit]` table, or that holds `migrations/conf.py`. Every command and the embedded server use it,
so a script run from `scripts/` sees the same database as one run from the root.

    [tool.kit]
    models = ["kit.models", "myapp.models"]   # modules whose models the kit migrates, checks, seeds, dumps
    migrations = "migrations"                  # directories, relative to the root
    seeds = "seeds"
    data_dir = ".kit"                          # the embedded server's data

Outside any project the embedded server keeps its data in one per-user place: `$XDG_DATA_HOME/kit`
(else `~/.local/share/kit`). KIT_PROJECT_ROOT names the root outright (`pw_migrate --directory` sets it
from the migrations it is given); KIT_DATA_DIR, KIT_MIGRATIONS_DIR and KIT_SEEDS_DIR override the rest.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import ConfigError

KIT_MODELS = "kit.models"
_KEYS = {"models", "migrations", "seeds", "data_dir"}


@dataclass(frozen=True)
class Project:
    """Where the kit's files are, and which model modules it uses."""

    root: Path | None  # None: outside any project
    models: tuple[str, ...]
    migrations: Path
    seeds: Path
    data_dir: Path


def find_root(start: Path | None = None) -> Path | None:
    """The nearest directory upwards from `start` (the current one) that is a kit project, or None."""
    here = Path(start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        if (directory / "migrations" / "conf.py").is_file() or _has_tool_kit(directory / "pyproject.toml"):
            return directory
    return None


def _has_tool_kit(pyproject: Path) -> bool:
    try:
        return "[tool.kit]" in pyproject.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def user_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The embedded server's data directory outside any project: one per user."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".local" / "share") / "kit"


def load_project(start: Path | None = None, env: Mapping[str, str] | None = None) -> Project:
    """The project around `start` (the current directory), with the environment's overrides applied."""
    env = os.environ if env is None else env
    named = env.get("KIT_PROJECT_ROOT", "").strip()
    root = Path(named).expanduser().absolute() if named else find_root(start)
    table = _tool_kit(root / "pyproject.toml") if root is not None else {}
    base = root if root is not None else Path(start or Path.cwd()).absolute()

    def directory(key: str, variable: str, default: str) -> Path:
        given = env.get(variable, "").strip()
        if given:
            return Path(given).expanduser().absolute()
        return (base / table.get(key, default)).absolute()

    data_dir = directory("data_dir", "KIT_DATA_DIR", ".kit")
    if root is None and not env.get("KIT_DATA_DIR", "").strip():
        data_dir = user_data_dir(env)
    models = tuple(table.get("models", [KIT_MODELS]))
    if KIT_MODELS not in models:
        models = (KIT_MODELS, *models)
    return Project(root, models, directory("migrations", "KIT_MIGRATIONS_DIR", "migrations"),
                   directory("seeds", "KIT_SEEDS_DIR", "seeds"), data_dir)


def _tool_kit(pyproject: Path) -> dict[str, Any]:
    """`[tool.kit]` of a pyproject.toml, checked; {} when the file or the table is absent."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {pyproject}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("kit", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{pyproject}: [tool.kit] must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{pyproject}: [tool.kit] has no setting {unknown[0]!r}; "
                          f"it knows {', '.join(sorted(_KEYS))}")
    models = table.get("models", [KIT_MODELS])
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise ConfigError(f"{pyproject}: [tool.kit] models must be a list of module names, "
                          f"such as [\"kit.models\", \"myapp.models\"]")
    for key in ("migrations", "seeds", "data_dir"):
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            raise ConfigError(f"{pyproject}: [tool.kit] {key} must be a directory path (text)")
    return table
