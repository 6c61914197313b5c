"""Group commit: calls that arrive while one is in flight run together in the next round.

Why: at fog scale dozens of reconciles run at once, each writing a row or two at a time. One
transaction (and one fencing check) per call made the database round trips the controller's
whole cost. A `Coalescer` runs the first call at once (one event-loop turn later, so calls
made in the same turn join it) and collects every call made meanwhile into the next round, as
a database's group commit does: no added latency when idle, batches as large as the load
when busy, and no timer to tune.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Coalescer"]


class Coalescer(Generic[T, R]):
    """`await submit(item)` returns `run(items)[i]` for the round the item was run in.

    `run` gets the items of one round in submission order and returns one result per item;
    a result that is an exception is raised to that item's caller alone, and if `run` raises,
    every caller of that round gets the exception. One round is in flight at a time, so rounds
    apply in submission order."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]]) -> None:
        self._run = run
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.rounds = 0  # how many rounds ran (for tests and metrics)
        self.items = 0  # how many items they held (items / rounds: the batch size)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self.rounds += 1
            self.items += len(batch)
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:  # handed to every caller, then re-raised
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # cancellation of the drainer itself
                continue
            if len(results) != len(batch):
                error = RuntimeError(f"{len(results)} results for {len(batch)} items")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
