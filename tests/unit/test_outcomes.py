"""The outage and run-again rules (`kit.db.outcomes`) and the retry pacing, on exceptions made by hand."""

from __future__ import annotations

import pytest
from peewee import IntegrityError, OperationalError

from kit.db.outcomes import is_outage, retryable, sqlstate
from kit.db.retry import RETRY_BASE, RETRY_MAX, check_tries, retry_delay
from kit.errors import ArgumentError, DatabaseUnavailable, SessionLost, StatementTimeout


class Coded(Exception):
    """A driver error with a SQLSTATE, named `pgcode` as psycopg2 names it (psycopg2's own is read-only)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"error {code}")
        self.pgcode = code


class AsyncpgLike(Exception):
    """asyncpg names the SQLSTATE `sqlstate`."""

    sqlstate = "40P01"


def wrapped(inner: BaseException) -> OperationalError:
    """An error as peewee's exception wrapper re-raises it: the driver's error first in args."""
    return OperationalError(inner, *inner.args)


def test_the_sqlstate_is_found_through_peewees_wrapping_and_causes():
    assert sqlstate(wrapped(Coded("40001"))) == "40001"
    outer = RuntimeError("outer")
    outer.__cause__ = AsyncpgLike()
    assert sqlstate(outer) == "40P01"
    assert sqlstate(OperationalError("no code")) is None


@pytest.mark.parametrize(("code", "outage"), [("08006", True), ("08001", True), ("57P01", True), ("57P03", True),
                                              ("57014", False), ("40001", False), ("23505", False)])
def test_outages_are_connection_classes_and_shutdowns_only(code, outage):
    assert is_outage(wrapped(Coded(code)), connection_closed=False) is outage


def test_a_driver_error_without_a_code_is_an_outage_only_on_a_closed_connection():
    exc = OperationalError("server closed the connection unexpectedly")
    assert is_outage(exc, connection_closed=True)
    assert not is_outage(exc, connection_closed=False)
    assert is_outage(DatabaseUnavailable("down"), connection_closed=False)


@pytest.mark.parametrize(("exc", "again"), [
    (SessionLost("lost before COMMIT", lost=frozenset({"an open transaction"})), True),
    (SessionLost("lost during COMMIT", outcome_unknown=True), False),
    (DatabaseUnavailable("could not connect"), True),
    (wrapped(Coded("40001")), True),
    (wrapped(Coded("40P01")), True),
    (wrapped(Coded("57014")), False),
    (StatementTimeout("ran past its limit"), False),
    (IntegrityError("duplicate key"), False),
    (ValueError("the caller's own"), False),
])
def test_a_transaction_is_run_again_only_when_nothing_of_it_can_have_committed(exc, again):
    assert retryable(exc) is again


def test_the_wait_doubles_from_the_base_is_capped_and_jittered_down_to_half():
    assert retry_delay(1, rand=lambda: 1.0) == RETRY_BASE
    assert retry_delay(2, rand=lambda: 1.0) == 2 * RETRY_BASE
    assert retry_delay(30, rand=lambda: 1.0) == RETRY_MAX
    assert retry_delay(1, rand=lambda: 0.0) == RETRY_BASE / 2


@pytest.mark.parametrize("tries", [0, -1, 1.5, True, "3"])
def test_tries_is_a_whole_number_of_runs(tries):
    with pytest.raises(ArgumentError, match="tries must be"):
        check_tries(tries)
