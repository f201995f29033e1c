"""Everything the kit raises on purpose is a KitError (kit/__init__.py's promise), and its data is what it declares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kit.errors import ArgumentError, ArgumentTypeError, KitError, SessionLost

pytestmark = pytest.mark.unit

KIT = Path(__file__).resolve().parents[2] / "kit"
BUILTIN = {"ValueError", "TypeError", "RuntimeError", "KeyError", "LookupError", "Exception", "AssertionError",
           "NotImplementedError", "OSError", "IndexError"}
# Where a builtin is the contract, not a refusal to a person: each with its reason.
ALLOWED = {
    ("fixtures/tags.py", "TypeError"): "json.dumps's `default=` hook must raise TypeError for what it cannot write",
    ("fixtures/tags.py", "NotImplementedError"): "abstract methods of the tag classes",
    ("db/shapes.py", "AssertionError"): "KIT_SHAPES_VERIFY: the suite's own check fails loudly",
    ("errors.py", "TypeError"): "KitError given an attribute it does not declare: the caller's bug",
    ("fixtures/rows.py", "IndexError"): "a row ordinal past the end, as a sequence says it; tags.py turns it into "
                                        "a FixtureError naming the fixture's line",
}


def raised_builtins():
    for path in sorted(KIT.rglob("*.py")):
        where = str(path.relative_to(KIT))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in BUILTIN:
                    yield where, exc.id, node.lineno


def test_nothing_is_raised_on_purpose_as_a_bare_builtin():
    bare = [f"kit/{where}:{line}: {name}" for where, name, line in raised_builtins() if (where, name) not in ALLOWED]
    assert bare == [], "raise a KitError subclass (ArgumentError is also a ValueError): " + "; ".join(bare)


def test_the_allowed_builtins_are_still_there():  # an exception no longer needed is taken off the list
    found = {(where, name) for where, name, _ in raised_builtins()}
    assert set(ALLOWED) <= found


def test_a_kit_error_takes_only_the_attributes_its_class_declares():
    lost = SessionLost("gone", lost=frozenset({"advisory locks"}), outcome_unknown=True)
    assert lost.lost == {"advisory locks"} and lost.outcome_unknown is True
    with pytest.raises(TypeError, match="declares no attribute colour"):
        KitError("x", colour="red")
    with pytest.raises(TypeError, match="declares no attribute _private"):
        SessionLost("x", _private=1)


def test_an_argument_of_the_wrong_type_is_caught_as_either_builtin():
    for catch in (TypeError, ValueError, ArgumentError, KitError):
        with pytest.raises(catch):
            raise ArgumentTypeError("an organization given as a slug")
