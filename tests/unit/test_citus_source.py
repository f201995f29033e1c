"""`kit db citus start` without a source says in one sentence what is missing and where else to go."""

from __future__ import annotations

import pytest

from kit.devservers import citus

pytestmark = pytest.mark.unit


def test_no_source_is_one_sentence_naming_the_way_out(monkeypatch, tmp_path):
    monkeypatch.delenv(citus.SOURCE_VARIABLE, raising=False)
    with pytest.raises(citus.CitusError) as no_source:
        citus.find_source(None)
    with pytest.raises(citus.CitusError) as not_a_file:
        citus.find_source(tmp_path / "missing.tar.gz")
    for said in (str(no_source.value), str(not_a_file.value)):
        assert "\n" not in said and "DATABASE_URL" in said and citus.SOURCE_VARIABLE in said
    monkeypatch.setenv(citus.SOURCE_VARIABLE, str(tmp_path / "given.tar.gz"))
    (tmp_path / "given.tar.gz").write_bytes(b"")
    assert citus.find_source(None) == tmp_path / "given.tar.gz"
