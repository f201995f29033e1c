"""`kit.pool.ConnectionPool`'s time rules on a clock the test moves: ages, idleness, pings; exact and instant.

The pool knows nothing of drivers: its `Hooks` open, close and ping whatever a connection is, so these
rules are tested here on plain objects, and with real PostgreSQL connections in the server tier.
"""

from __future__ import annotations

import pytest

from kit.pool import ConnectionPool, Hooks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    """A pool over numbered stand-in connections, with the clock, what was opened, closed and pinged."""
    clock, opened, closed, pinged = Clock(), [], [], []

    def open_() -> int:
        opened.append(len(opened) + 1)
        return opened[-1]

    hooks = Hooks(open=open_, close=closed.append, ping=lambda conn: pinged.append(conn) or True)
    pool = ConnectionPool(hooks, clock=clock, max_size=3, check_after=30)
    return pool, clock, opened, closed, pinged


def test_the_oldest_idle_connection_is_reused_first(world):
    pool, clock, *_ = world
    first = pool.getconn()
    clock.now += 1
    second = pool.getconn()
    pool.putconn(second)
    pool.putconn(first)
    assert pool.getconn() == first


def test_a_connection_idle_for_check_after_is_pinged_once_before_use_and_not_before(world):
    pool, clock, _, _, pinged = world
    conn = pool.getconn()
    pool.putconn(conn)
    clock.now += 29.9
    pool.putconn(pool.getconn())
    assert pinged == []  # a busy pool pays nothing
    clock.now += 30.0
    assert pool.getconn() == conn and pinged == [conn]


def test_stale_connections_are_closed_at_checkout_not_reused(world):
    pool, clock, opened, closed, _ = world
    pool.configure(stale_timeout=60)
    conn = pool.getconn()
    pool.putconn(conn)
    clock.now += 60.5
    fresh = pool.getconn()
    assert fresh != conn and closed == [conn] and opened == [1, 2]


def test_idle_connections_above_min_expire_after_max_idle_exactly(world):
    pool, clock, _, closed, _ = world
    pool.configure(min_size=1, max_idle=10)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    clock.now += 5
    pool.putconn(b)
    clock.now += 5  # a idle 10 s, b idle 5 s
    assert pool.close_expired() == pytest.approx(5) and closed == [a]  # b has 5 s left
    clock.now += 5
    pool.close_expired()
    assert closed == [a]  # b is the one min_size keeps
    assert pool.stats()["idle"] == 1


def test_close_stale_closes_what_was_checked_out_longer_than_the_age(world):
    pool, clock, _, closed, _ = world
    old = pool.getconn()
    clock.now += 100
    young = pool.getconn()
    assert pool.close_stale(50) == 1 and closed == [old]
    pool.putconn(young)
    assert pool.stats()["in_use"] == 0
