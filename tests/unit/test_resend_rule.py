"""The re-send rule (kit.db.pooled.never_ran): each clause of the docstring's rules 1-4 decides alone."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
import pytest

from kit.db.pooled import RESEND_WINDOW, never_ran


@dataclass
class Connection:
    """What the rule reads of a driver connection: whether the driver found it closed."""

    closed: int


class Answered(psycopg2.OperationalError):
    """An error as the server sends it, with a SQLSTATE: the server read the statement, so it may have run."""

    pgcode = "57014"


CLOSED_UNEXPECTEDLY = psycopg2.OperationalError("server closed the connection unexpectedly")  # no SQLSTATE
FAST = RESEND_WINDOW / 2


def test_all_four_rules_hold_then_it_is_re_sent():
    assert never_ran(CLOSED_UNEXPECTEDLY, Connection(2), idle=True, holds_session=False, seconds=FAST)


@pytest.mark.parametrize("change", [
    {"idle": False},  # 1: inside a transaction
    {"holds_session": True},  # 2: session state to lose
    {"conn": Connection(0)},  # 3: the driver still thinks the connection is open
    {"exc": Answered("terminating connection due to administrator command")},  # 3: the server answered
    {"exc": psycopg2.ProgrammingError("syntax error")},  # 3: not a lost connection at all
    {"seconds": RESEND_WINDOW * 2},  # 4: found late: it may have been running
])
def test_any_one_rule_broken_and_it_is_not_re_sent(change):
    arguments = {"exc": CLOSED_UNEXPECTEDLY, "conn": Connection(2), "idle": True, "holds_session": False,
                 "seconds": FAST, **change}
    assert not never_ran(arguments.pop("exc"), arguments.pop("conn"), **arguments)
