"""The README runs: its Python, YAML and TOML blocks are executed as written, and docs/models.md is current."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from kit import migrate
from kit.fixtures import load, parse
from kit.models import project_models
from kit.project import _tool_kit
from kit.reference import markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEV = ROOT / "seeds" / "fixtures" / "dev.yaml"


def blocks(language: str) -> list[tuple[int, str]]:
    """The README's fenced blocks in `language`, with the line each starts on."""
    found, current, start = [], None, 0
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current, start, kind = [], number, line[3:].strip()
            else:
                if kind == language:
                    found.append((start, "\n".join(current) + "\n"))
                current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(blocks("python")) >= 2 and len(blocks("yaml")) >= 1 and len(blocks("toml")) >= 1


def shown_values(code: str) -> list[dict[str, object]]:
    """For each `print(...)  # {'key': value, ...}` line, the key/value pairs its comment promises."""
    promised = []
    for line in code.splitlines():
        match = re.match(r"\s*print\(.*\)\s*#\s*(\{.*)$", line)
        if match:
            pairs = re.findall(r"'(\w+)':\s*([^,}]+)", match.group(1))
            promised.append({k: ast.literal_eval(v.strip()) for k, v in pairs if v.strip() != "..."})
    return promised


@pytest.fixture
def seeded(fresh_database):
    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    load(parse(DEV), fresh_database)
    return fresh_database


@pytest.mark.parametrize("start, code", blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_every_python_block_runs_as_written_and_prints_what_its_comments_say(seeded, start, code):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = seeded.scratch_url.replace("kit_owner@", "kit_app@")  # as an application runs
    environ["DATABASE_OWNER_URL"] = seeded.scratch_url  # for kit.all_tenants()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"README line {start}:\n{result.stderr}"
    printed = [line for line in result.stdout.splitlines() if line.startswith("{")]
    for promise, line in zip(shown_values(code), printed, strict=True):
        actual = ast.literal_eval(line)
        assert {k: actual[k] for k in promise} == promise, f"README line {start}: prints {line}"


def test_the_fixture_example_loads_as_written(fresh_database, tmp_path):
    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    seeded = fresh_database
    (start, text), = blocks("yaml")
    shutil.copy(ROOT / "seeds" / "fixtures" / "plans.yaml", tmp_path / "plans.yaml")
    (tmp_path / "example.yaml").write_text(text)
    report = load(parse(tmp_path / "example.yaml"), seeded)
    assert report["users"].inserted == 41 and report["document_chunks"].inserted >= 4, f"README line {start}"
    assert report["members"].inserted >= 3 and report["subscriptions"].inserted == 1


def test_the_tool_kit_example_is_valid(tmp_path):
    (start, text), = blocks("toml")
    assert tomllib.loads(text)["tool"]["kit"]
    (tmp_path / "pyproject.toml").write_text(text)
    assert _tool_kit(tmp_path / "pyproject.toml")["models"] == ["kit.models", "myapp.models"], f"README line {start}"


def test_the_models_reference_is_current():
    written = (ROOT / "docs" / "models.md").read_text()
    assert written == markdown(project_models()), "docs/models.md is stale: run `kit models > docs/models.md`"
