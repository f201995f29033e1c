"""Forked children: every pool's inherited connections are dropped in the child without touching their sockets.

A forked child shares its parent's sockets; a statement or even a close from the child would reach
the parent's server sessions. Each pooled database registers itself here; after a fork the child
points every inherited socket at /dev/null and forgets the connections (`PooledDatabase.dispose`).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import psycopg2

_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def track(database: Any) -> None:
    """Dispose of `database`'s connections in any child forked from now on."""
    _pools.add(database)


def silence(conns: list[Any]) -> None:
    """Point each connection's socket at /dev/null, so nothing of it reaches the server (after fork)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in conns:
            try:
                os.dup2(devnull, conn.fileno())
            except (OSError, ValueError, psycopg2.Error):
                pass
    finally:
        os.close(devnull)


def _dispose_in_child() -> None:
    for db in list(_pools):
        db.dispose()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_in_child)
