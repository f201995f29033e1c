"""`retry_transaction`: run a function as one transaction, again on the failures after which that is safe.

Which failures those are is `kit.db.outcomes.retryable`: a connection lost before COMMIT, no
connection at all, a serialization failure, a deadlock. Each time, nothing of the transaction was
committed, so running the whole function again cannot double anything it writes, provided the
function does nothing outside the database that it would repeat (send an email, call an API):
keep those after it returns.

At most `tries` runs (`DEFAULT_TRIES`), waiting `RETRY_BASE` seconds before the second and twice as
long before each next one, with jitter, so that a restart of a few seconds or two clients caught in
the same deadlock get through. The last failure is raised as it is (one of the `KitError` family for
an outage). Inside a transaction already open it refuses: only the outermost transaction can be run
again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kit.db.outcomes import retryable
from kit.errors import ArgumentError, describe

log = logging.getLogger("kit.db")

DEFAULT_TRIES = 4
RETRY_BASE = 0.05  # seconds before the second run; doubled before each next one
RETRY_MAX = 1.0  # seconds: the longest wait between two runs

T = TypeVar("T")


def retry_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before run `attempt + 1` (after `attempt` failed runs): doubling, capped, jittered."""
    return min(RETRY_MAX, RETRY_BASE * 2 ** (attempt - 1)) * (0.5 + rand() / 2)


def check_tries(tries: int) -> int:
    """`tries` checked: a whole number of runs, at least one."""
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ArgumentError(f"tries must be a whole number of runs, 1 or more (got {tries!r}); nothing was run")
    return tries


def refuse_nested(name: str) -> None:
    """Raise ArgumentError: a transaction already open cannot be run again from inside it."""
    raise ArgumentError(f"{name} was called inside a transaction that is already open; only the outermost "
                        "transaction can be run again, so call it outside that one; nothing was run")


def wait_before_next(exc: BaseException, attempt: int, tries: int) -> float | None:
    """Seconds to wait before running the transaction again after `exc` ended run `attempt`; None: raise it."""
    if attempt >= tries or not retryable(exc):
        return None
    wait = retry_delay(attempt)
    log.info("transaction run again (%d of %d) in %.0f ms: %s", attempt + 1, tries, wait * 1000, describe(exc))
    return wait


def retry_transaction(fn: Callable[..., T], *args: Any, tries: int = DEFAULT_TRIES, database: Any = None,
                      **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in one transaction; run it again (up to `tries` runs) when nothing was committed."""
    check_tries(tries)
    if database is None:
        from kit.db.configured import database
    if database.in_transaction():
        refuse_nested("retry_transaction")
    attempt = 0
    while True:
        attempt += 1
        try:
            with database.atomic():
                return fn(*args, **kwargs)
        except Exception as exc:
            wait = wait_before_next(exc, attempt, tries)
            if wait is None:
                raise
            time.sleep(wait)
