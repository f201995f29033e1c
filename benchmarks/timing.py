"""How the benchmarks time an operation: ops per second on threads or asyncio tasks started together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


def on_threads(threads: int, ops: int, op: Callable[[], Any], release: Callable[[], Any] = lambda: None) -> float:
    """Run `op` `ops` times on each of `threads` threads started together (each then calls `release`); ops/s."""
    barrier = threading.Barrier(threads + 1)
    done: list[float] = []

    def work() -> None:
        barrier.wait()
        for _ in range(ops):
            op()
        done.append(time.perf_counter())
        release()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return threads * ops / (max(done) - start)


async def on_tasks(tasks: int, ops: int, op: Callable[[], Awaitable[Any]]) -> float:
    """Await `op()` `ops` times in each of `tasks` tasks started together; ops/s."""
    async def work() -> None:
        for _ in range(ops):
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(tasks)))
    return tasks * ops / (time.perf_counter() - start)
