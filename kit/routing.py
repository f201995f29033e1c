"""Read routing over streaming replicas: which server a read may go to (`kit.db.Database` runs it there).

The rules, as `Database` applies them (see docs/replicas.md):

- Only reads that cannot write are routed: peewee SELECT queries (`Model.select()`, `.get()`,
  `.count()`, iteration) without FOR UPDATE/SHARE, outside any transaction, on a thread whose
  primary connection holds no session state. Raw SQL goes to the primary, unless in `on_replica()`.
- **Read-your-writes.** A context (a thread, or an asyncio task) that sent anything but a read to the
  primary reads from a replica only once that replica has replayed past the primary's WAL insert
  position taken after the write (`pg_current_wal_insert_lsn()`, taken at the next read, so writes
  cost no extra round trip); until then, from the primary. Replica lag is never an error.
- **Health.** A replica is re-read at most every `CHECK_EVERY` seconds (inline, by a reading thread:
  there is no background thread) for its replayed position and lag (`lag_seconds`, PostgreSQL's usual
  measure: 0 when all it received is replayed, else the time since the last transaction it replayed).
  One lagging past `max_lag` is skipped until it is back under; one that cannot be reached (or fails a
  read with its connection lost) is skipped for `RETRY_AFTER` seconds, doubling to `RETRY_MAX`; one
  that is no longer in recovery (promoted) is skipped: it is another primary. No replica left means
  the primary serves the read.
- A thread keeps to the replica it already holds a connection to, so its reads do not go back in time
  by hopping between replicas; a new one is taken in turn.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kit.errors import ArgumentError, describe

log = logging.getLogger("kit.routing")

__all__ = ["CHECK_EVERY", "HOT_STANDBY", "PROBE_SQL", "promoted", "Replica", "Router", "lsn_int", "lsn_text"]

CHECK_EVERY = 1.0  # seconds: how stale a replica's known state may be before a read re-reads it
RECHECK_FOR_WRITES = 0.005  # seconds: a replica behind a context's write is asked again after this at most
RETRY_AFTER = 1.0  # seconds an unreachable replica is skipped, doubled on each further failure ...
RETRY_MAX = 30.0  # ... up to this

PROBE_SQL = """
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
       CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL
                 OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0) END
"""

UP, LAGGING, DOWN, PROMOTED = "up", "lagging", "down", "not in recovery"
# PostgreSQL 14+ reports `in_hot_standby` to the client with every answer after it changes (before
# ReadyForQuery, checked when the statement has run), so a read that a server promoted since it was
# last asked has answered is known as such at no cost: its answer is set aside and the primary reads.
HOT_STANDBY = "in_hot_standby"


def promoted(reported: str | None) -> bool:
    """True when a server's reported `in_hot_standby` says it is no longer a standby (None: not reported)."""
    return reported == "off"


_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def lsn_int(text: str | None) -> int:
    """A WAL position written `X/Y` as a number (0 for None); ArgumentError for anything else."""
    if not text:
        return 0
    found = _LSN.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise ArgumentError(f"read position: expected a WAL position as write_position() gives it (X/Y, each "
                            f"1 to 8 hex digits), got {type(text).__name__} {str(text)[:40]!r}")
    return (int(found[1], 16) << 32) | int(found[2], 16)


def lsn_text(value: int) -> str:
    """A WAL position as PostgreSQL writes it (`X/Y`)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(eq=False)
class Replica:
    """One replica: its pool (a `kit.db.PooledDatabase`) and what the router last learnt of it."""

    name: str  # its URL, password masked
    database: Any
    state: str = DOWN  # not yet asked
    replayed: int = 0  # the WAL position it had replayed when last asked
    lag: float = 0.0  # seconds, when last asked
    checked: float = -1e9  # monotonic time it was last asked (or failed)
    retry_at: float = 0.0  # when down: the earliest it is tried again
    failures: int = 0  # failures in a row
    reads: int = 0
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stats(self) -> dict[str, Any]:
        """What is known of it: state, lag, replayed position, reads served, last error, its pool's counts."""
        return {"server": self.name, "state": self.state, "lag_seconds": round(self.lag, 3),
                "replayed_lsn": lsn_text(self.replayed), "reads": self.reads, "last_error": self.last_error,
                **self.database.pool_stats()}


class Router:
    """Chooses the replica for a read, keeping each replica's health as reads find it."""

    def __init__(self, replicas: Iterable[Replica], max_lag: float, wait_for_probes: bool = True) -> None:
        self.replicas = list(replicas)
        self.max_lag = max_lag
        self.wait_for_probes = wait_for_probes  # False on an event loop: a replica being asked is not asked twice
        self._turn = itertools.count()

    def choose(self, after: int) -> Replica | None:
        """A replica fit for a read that must see WAL position `after` (0: anything), or None: the primary."""
        now = time.monotonic()
        held = [r for r in self.replicas if not r.database.is_closed()]  # this thread's, first
        start = next(self._turn) % len(self.replicas)
        for replica in held + self.replicas[start:] + self.replicas[:start]:
            if self._fit(replica, after, now):
                return replica
        return None

    def _fit(self, replica: Replica, after: int, now: float) -> bool:
        """True when `replica` may serve a read that must see `after`, asking it first if what is known is old."""
        if replica.state == DOWN and now < replica.retry_at:
            return False
        stale = now - replica.checked >= CHECK_EVERY
        behind = replica.replayed < after and now - replica.checked >= RECHECK_FOR_WRITES
        if stale or behind or replica.state == DOWN:
            self.probe(replica)
        return replica.state == UP and replica.replayed >= after

    def probe(self, replica: Replica) -> None:
        """Ask `replica` for its state now (on this thread's connection to it).

        Without `wait_for_probes` (the asyncio database, where every task shares one thread) a replica
        another task is asking already is not asked again: what is known of it stands.
        """
        if not replica.lock.acquire(blocking=self.wait_for_probes):
            return
        try:
            self._probe(replica)
        finally:
            replica.lock.release()

    def _probe(self, replica: Replica) -> None:
        """`probe`, under the replica's lock."""
        try:
            in_recovery, replayed, lag = replica.database.execute_sql(PROBE_SQL).fetchone()
        except Exception as exc:  # unreachable, or its connection died: skipped for a while
            self.failed(replica, exc)
            return
        replica.checked, replica.failures, replica.last_error = time.monotonic(), 0, None
        replica.replayed, replica.lag = lsn_int(replayed), float(lag or 0)
        replica.state = (PROMOTED if not in_recovery else LAGGING if replica.lag > self.max_lag else UP)

    def promoted(self, replica: Replica) -> None:
        """Mark `replica` as promoted, found so by a read: skipped until a probe finds it in recovery again."""
        replica.state = PROMOTED
        replica.checked = time.monotonic()
        replica.last_error = "promoted: it is not in recovery, so it is no longer the primary's replica"
        log.warning("replica %s skipped: it was promoted (not in recovery)", replica.name)

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """Skip `replica` for a while after it could not be reached (or lost its connection)."""
        now = time.monotonic()
        replica.state, replica.checked = DOWN, now
        replica.retry_at = now + min(RETRY_AFTER * 2 ** replica.failures, RETRY_MAX)
        replica.failures += 1
        replica.last_error = describe(exc)
        log.warning("replica %s skipped for %.0f s: %s", replica.name, replica.retry_at - now, replica.last_error)
        try:  # its connection for this thread is of no further use
            replica.database.manual_close()
        except Exception:
            pass
