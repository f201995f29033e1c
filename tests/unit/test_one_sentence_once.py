"""Every error sentence of the kit is written once: no two places build the same message (`kit.db.contract`)."""

from __future__ import annotations

import ast
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

import kit.errors

pytestmark = pytest.mark.unit
KIT = Path(kit.errors.__file__).resolve().parent
ERRORS = {name for name, value in vars(kit.errors).items()
          if inspect.isclass(value) and issubclass(value, kit.errors.KitError)}


def sentences() -> dict[str, list[str]]:
    """The constant text of each kit error's message, by where it is built."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(KIT.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ERRORS
                    and node.args):
                continue
            text = "".join(part.value for part in ast.walk(node.args[0])
                           if isinstance(part, ast.Constant) and isinstance(part.value, str))
            if len(text) >= 25:
                found[text].append(f"{path.relative_to(KIT.parent)}:{node.lineno}")
    return found


def test_no_error_sentence_is_written_twice():
    twice = {text: places for text, places in sentences().items() if len(places) > 1}
    assert twice == {}


def test_the_check_finds_the_sentences_it_looks_for():
    assert any("the database connection was lost during COMMIT" in text for text in sentences())
