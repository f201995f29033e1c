"""The docs run: every code block of the README, CONTRIBUTING and docs/ is executed or checked, strictly.

Python blocks run against a seeded database and print what their comments promise; the fixture
example loads; TOML parses and the `[tool.kit]` example is read; shell blocks name only commands that
exist (the `kit` ones parse); JavaScript is run by test_better_auth; every relative link resolves, every
page is reachable from the README, and generated tables match the code that defines them.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kit import migrate
from kit.cli import build_parser
from kit.config import variables_markdown
from kit.fixtures import load, parse
from kit.models import project_models
from kit.project import _tool_kit
from kit.reference import markdown

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]
DEV = ROOT / "seeds" / "fixtures" / "dev.yaml"
CHECKED_ELSEWHERE = {"js": "tests/test_better_auth.py", "citus-blockers": "tests/test_scaling.py",
                     "pytest": "tests/test_testing_plugin.py"}
SHELL_COMMANDS = {"kit", "pip", "pw_migrate", "python", "python3", "cd", "cp", "export", "docker", "tests/through-pgbouncer",
                  "tests/all",
                  ".", "source"}


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def all_blocks() -> list[tuple[str, int, str, str]]:
    """Every fenced block of every page: (page, first line, language, code)."""
    found = []
    for page in PAGES:
        current, start, kind = None, 0, ""
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                if current is None:
                    current, start, kind = [], number, line[3:].strip()
                else:
                    found.append((name(page), start, kind, "\n".join(current) + "\n"))
                    current = None
            elif current is not None:
                current.append(line)
    return found


def blocks(language: str) -> list[tuple[str, str]]:
    """The blocks in `language`, each as ("page:line", code)."""
    return [(f"{page}:{start}", code) for page, start, kind, code in all_blocks() if kind == language]


def test_every_block_has_a_language_the_suite_runs_or_checks():
    kinds = {kind for _, _, kind, _ in all_blocks()}
    assert kinds <= {"python", "yaml", "toml", "sh", *CHECKED_ELSEWHERE}, kinds
    assert len(blocks("python")) >= 4 and len(blocks("yaml")) >= 1 and len(blocks("toml")) >= 1


def test_the_readme_is_a_front_door_and_every_page_is_reachable_from_it():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "the README is a front door: the reference goes under docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", readme))
    linked |= {f"docs/{target}" for target in re.findall(r"\]\(([a-z-]+\.md)\)", (ROOT / "docs" / "README.md").read_text())}
    pages = {name(page) for page in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "pages no map links to"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{name(page)}: {target} does not exist"


def test_every_shell_block_names_commands_that_exist():
    parser = build_parser()
    for where, code in blocks("sh"):
        for line in code.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for command in re.split(r"\s*(?:&&|\|\|?|;)\s*", line):
                words = shlex.split(command)
                if words[0] == "opentelemetry-instrument":  # runs the command after it, instrumented
                    words = words[1:]
                assert words[0] in SHELL_COMMANDS, f"{where}: {words[0]!r} is not a command the docs may use"
                if words[0] == "kit":
                    try:
                        parser.parse_args([w for w in words[1:] if not w.startswith("<")])
                    except SystemExit as exc:
                        pytest.fail(f"{where}: `{command}` does not parse ({exc})")


def test_the_variables_table_is_generated_from_the_code():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert variables_markdown() in page, (
        "docs/configuration.md's variables table is stale: paste kit.config.variables_markdown()'s output")


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
def seeded(migrated_database):
    load(parse(DEV), migrated_database)
    return migrated_database


@pytest.mark.parametrize("start, code", blocks("python"), ids=[where for where, _ in blocks("python")])
def test_every_python_block_runs_as_written_and_prints_what_its_comments_say(seeded, start, code):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KIT_")) or k == "DATABASE_POOLER"}
    environ["DATABASE_URL"] = seeded.scratch_url.replace("kit_owner@", "kit_app@")  # as an application runs
    environ["DATABASE_OWNER_URL"] = seeded.scratch_url  # for kit.all_tenants()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"{start}:\n{result.stderr}"
    printed = [line for line in result.stdout.splitlines() if line.startswith("{")]
    for promise, line in zip(shown_values(code), printed, strict=True):
        actual = ast.literal_eval(line)
        assert {k: actual[k] for k in promise} == promise, f"{start}: prints {line}"


def test_the_fixture_example_loads_as_written(fresh_database, tmp_path):
    migrate.apply(fresh_database, ROOT / "migrations", say=lambda _: None)
    seeded = fresh_database
    (start, text), = blocks("yaml")  # the one fixture example (docs/seeds.md)
    assert text.strip(), start
    shutil.copy(ROOT / "seeds" / "fixtures" / "plans.yaml", tmp_path / "plans.yaml")
    (tmp_path / "example.yaml").write_text(text)
    report = load(parse(tmp_path / "example.yaml"), seeded)
    assert report["users"].inserted == 41 and report["document_chunks"].inserted >= 4, f"{start}"
    assert report["members"].inserted >= 3 and report["subscriptions"].inserted == 1


def test_the_tool_kit_example_is_valid(tmp_path):
    (start, text), = blocks("toml")
    assert tomllib.loads(text)["tool"]["kit"]
    (tmp_path / "pyproject.toml").write_text(text)
    assert _tool_kit(tmp_path / "pyproject.toml")["models"] == ["kit.models", "myapp.models"], f"{start}"


def test_the_models_reference_is_current():
    written = (ROOT / "docs" / "models.md").read_text()
    assert written == markdown(project_models()), "docs/models.md is stale: run `kit models > docs/models.md`"


def kit_constants() -> dict[str, object]:
    """Every module-level `NAME = literal` in kit/, by name."""
    found: dict[str, object] = {}
    for path in (ROOT / "kit").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return found


QUOTED = re.compile(r"`([A-Z][A-Z0-9_]{3,})` \(([\d,.]+)( ms)?")


def test_every_constant_the_docs_quote_has_the_value_the_code_has():
    constants, checked = kit_constants(), 0
    for page in PAGES:
        for name_, shown, ms in QUOTED.findall(page.read_text()):
            if name_ not in constants:
                continue
            value = float(shown.replace(",", "")) / (1000 if ms else 1)
            assert value == pytest.approx(float(constants[name_])), f"{page.name}: {name_} is {constants[name_]}"
            checked += 1
    assert checked >= 4
