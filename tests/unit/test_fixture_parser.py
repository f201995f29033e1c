"""The fixture parser's errors (kit.fixtures.parse): one sentence naming the file, the line and what is wrong."""

from __future__ import annotations

import pytest

from kit.fixtures import FixtureError, parse

CASES = [
    ("users: [\n", r":2: YAML syntax error"),
    ("nothing_here:\n  a: {name: x}\n", r":1: nothing_here: unknown table 'nothing_here'; known tables: accounts"),
    ("users:\n  a: {nope: 1}\n", r":2: users\.a\.nope: unknown column; users has: id"),
    ("- 1\n- 2\n", r":1: a fixture file is a mapping of table names to rows"),
    ("users:\n  a: {name: !nosuch x}\n", r":2: users\.a\.name: unknown tag !nosuch; the kit knows !fake"),
    ("include: [../../etc/passwd]\n", r"lies outside"),
]


@pytest.mark.parametrize("text, said", CASES)
def test_a_bad_file_is_one_sentence_naming_where(tmp_path, text, said):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FixtureError, match=f"^{str(path)}{said}" if said.startswith(":") else said) as raised:
        parse(path)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


def test_the_error_carries_the_file_line_and_path_it_names(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("users:\n  a: {nope: 1}\n")
    with pytest.raises(FixtureError) as raised:
        parse(path)
    assert (raised.value.file, raised.value.line, raised.value.path) == (path, 2, "users.a.nope")
