"""A work queue of deployment keys, after client-go's: deduplicated, one worker per key at a
time, per-key exponential backoff on failure, and delayed requeue.

A key added while it is being processed is not handed to a second worker; it is queued again
when the first finishes, so a reconcile never races with itself and no wake-up is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

# Kubernetes' default item backoff: 5 ms doubling to 1000 s.
BACKOFF_BASE_SECONDS = 0.005
BACKOFF_MAX_SECONDS = 1000.0


class QueueObserver(Protocol):
    """Where the queue reports adds and waits (`metrics.QueueMetrics`); depth is read from
    `len()` at scrape time instead."""

    def added(self) -> None: ...

    def waited(self, seconds: float) -> None: ...


class WorkQueue(Generic[K]):
    def __init__(
        self,
        base_delay: float = BACKOFF_BASE_SECONDS,
        max_delay: float = BACKOFF_MAX_SECONDS,
        observer: QueueObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()
        self._shutdown = False
        self._base = base_delay
        self._max = max_delay
        # As client-go's queue metrics: the wait runs from the add that made the key dirty to
        # the get that hands it out (for a key re-added mid-reconcile, across the rest of it).
        self._observer = observer
        self._added_at: dict[K, float] = {}
        self._clock = clock  # for the observer's waits (injectable: tests need no real waits)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if self._observer is not None:
            self._observer.added()
            self._added_at[key] = self._clock()
        if key in self._processing:
            return  # re-queued by done()
        self._queue.append(key)
        self._wakeup.set()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds; an earlier pending timer for it wins."""
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Requeue after this key's next backoff step; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self._base * (2.0**failures), self._max)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    async def get(self) -> K | None:
        """The next key, or None once the queue is shut down."""
        while not self._queue:
            if self._shutdown:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        added_at = self._added_at.pop(key, None)
        if self._observer is not None and added_at is not None:
            self._observer.waited(self._clock() - added_at)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._shutdown:
            self._queue.append(key)
            self._wakeup.set()

    def shutdown(self) -> None:
        self._shutdown = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queue.clear()
        self._added_at.clear()
        self._wakeup.set()
