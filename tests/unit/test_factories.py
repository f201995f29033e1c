"""Factories of rows (`kit.testing`): what they make up for a column, the same for the same seed."""

from __future__ import annotations

import sys

import pytest

from kit.errors import ArgumentError
from kit.models import Plan, PlanPrice, User, WaitlistEntry
from kit.testing import Factory, fake
from kit.testing.factories import _first_allowed

pytestmark = pytest.mark.unit


def test_made_up_values_are_the_same_for_the_same_seed_and_unique_within_a_run():
    first, again, other = Factory(7), Factory(7), Factory(8)
    made = [first.values(User) for _ in range(3)]
    assert made == [again.values(User) for _ in range(3)]
    assert len({m["email"] for m in made}) == 3 and all(m["email"].endswith("@example.test") for m in made)
    assert other.values(User)["email"] != made[0]["email"]
    assert set(first.values(Plan)) == {"slug", "name"}  # only what the row cannot go without
    assert first.values(Plan, name="Pro")["name"] == "Pro"  # what the test gives is kept


def test_a_check_list_gives_its_first_value_and_fake_values_come_from_mimesis():
    assert _first_allowed(PlanPrice.interval) == "month"
    pytest.importorskip("mimesis")
    email = Factory(1).values(WaitlistEntry, email=fake("person.email"))["email"]
    assert email == Factory(1).values(WaitlistEntry, email=fake("person.email"))["email"] and "@" in email


@pytest.mark.parametrize("call, words", [
    (lambda f: f.values(User, nickname="x"), "make(User): it has no field 'nickname'"),
    (lambda f: f.many(User, -1), "the number of rows must be 0 or more"),
    (lambda f: fake("email"), "name a mimesis provider and method"),
    (lambda f: f.values(User, email=fake("person.nosuch")), "mimesis has no person.nosuch"),
])
def test_a_bad_request_is_one_sentence(call, words):
    with pytest.raises(ArgumentError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(Factory())


def test_fake_without_mimesis_names_the_seed_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mimesis", None)
    with pytest.raises(ArgumentError, match=r"needs mimesis, the seed extra: pip install 'peewee-saas-kit\[seed\]'"):
        Factory().values(User, email=fake("person.email"))
