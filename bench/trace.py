"""Timing spans around the controller's Docker calls, store calls, placements and passes.

Why: the engine's events say how long convergence took, not why. To say where the controller
spends the difference to the raw baseline, the benchmark wraps a few methods of the *running*
controller's objects (instance attributes shadowing the class methods; no controller file is
touched, and nothing changes behaviour): every Docker call (time queued behind the per-node
semaphore and time inside docker-py), every store call, every placement (one per slow-start
batch), every reconcile and every resync pass. Each wrapper costs a clock read and a list
append, microseconds against calls of tens of milliseconds.

The raw baseline records its own calls into the same `Trace`, so both are summarised alike:
how many calls of each kind, how long they took, and how many were in flight on average.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from controller.loop import Controller

# Store methods that run SQL (the others call these).
STORE_METHODS = (
    "ping",
    "load_deployments",
    "nodes",
    "node_usage",
    "create_replicas",
    "transition",
    "record_status",
    "prune_terminal_replicas",
    "update_nodes",
)


@dataclass(frozen=True, slots=True)
class Span:
    kind: str  # "docker:create_container", "queued:start", "store:transition", "place", ...
    start: float  # time.time()
    end: float
    size: int = 0  # rows written, replicas placed, ...

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Trace:
    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()  # Docker calls finish in executor threads

    def add(self, kind: str, start: float, end: float, size: int = 0) -> None:
        with self._lock:
            self._spans.append(Span(kind, start, end, size))

    def between(self, start: float, end: float) -> list[Span]:
        """Spans that began in [start, end]."""
        with self._lock:
            spans = list(self._spans)
        return sorted((s for s in spans if start <= s.start <= end), key=lambda s: s.start)


def _timed_async(
    trace: Trace, kind: str, fn: Callable[..., Awaitable[Any]], size: Callable[..., int] | None
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return await fn(*args, **kwargs)
        finally:
            trace.add(kind, start, time.time(), size(*args, **kwargs) if size else 0)

    return wrapper


def instrument(controller: Controller, trace: Trace) -> list[str]:
    """Record spans of `controller`'s work into `trace`; call before the controller runs.

    The controller is being worked on: a method that is no longer there is skipped, not an
    error, and its name is returned, so the profile says what it could not see."""
    missing: list[str] = []

    def wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name, None)
        if original is None:
            missing.append(f"{type(owner).__name__}.{name}")
            return
        setattr(owner, name, make(original))

    def timed_raw(raw: Any) -> Any:
        """Queueing for the node's call slots included."""

        async def call(node: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return await raw(node, fn, *args, **kwargs)
            finally:
                trace.add(f"queued+docker:{getattr(fn, '__name__', 'call')}", start, time.time())

        return call

    def timed_in(run_in: Any) -> Any:
        """The call itself, in its thread: every Docker call, graceful stops included (they
        wait in their own slots, outside `_raw`)."""

        async def call(
            executor: Any, node: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            name = getattr(fn, "__name__", "call")

            def in_thread(*a: Any, **kw: Any) -> Any:
                start = time.time()
                try:
                    return fn(*a, **kw)
                finally:
                    trace.add(f"docker:{name}", start, time.time())

            return await run_in(executor, node, in_thread, *args, **kwargs)

        return call

    wrap(controller.runtime, "_raw", timed_raw)
    wrap(controller.runtime, "_in", timed_in)

    def timed_store(name: str) -> Callable[[Any], Any]:
        if name == "transition":
            return lambda f: _timed_transition(trace, f)
        size = (lambda _d, count, _t: count) if name == "create_replicas" else None
        return lambda f: _timed_async(trace, f"store:{name}", f, size)

    for name in STORE_METHODS:
        wrap(controller.store, name, timed_store(name))
    wrap(
        controller.reconciler,
        "_place",
        lambda f: _timed_async(trace, "place", f, lambda _d, replicas, *_a: len(replicas)),
    )
    wrap(controller.reconciler, "reconcile", lambda f: _timed_async(trace, "reconcile", f, None))
    wrap(controller, "resync", lambda f: _timed_async(trace, "resync", f, None))
    return missing


def _timed_transition(
    trace: Trace, original: Callable[[Iterable[Any]], Awaitable[set[Any]]]
) -> Callable[[Iterable[Any]], Awaitable[set[Any]]]:
    async def transition(changes: Iterable[Any]) -> set[Any]:
        changes = list(changes)  # the store lists them too; we need the count
        start = time.time()
        try:
            return await original(changes)
        finally:
            trace.add("store:transition", start, time.time(), len(changes))

    return transition


# --- summaries -------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def by_kind(spans: list[Span]) -> dict[str, dict[str, float]]:
    """Per kind: count, total seconds, median and max milliseconds, rows/replicas moved."""
    groups: dict[str, list[Span]] = {}
    for s in spans:
        groups.setdefault(s.kind, []).append(s)
    out = {}
    for kind, group in sorted(groups.items()):
        secs = [s.seconds for s in group]
        out[kind] = {
            "count": len(group),
            "total_s": round(sum(secs), 3),
            "median_ms": _ms(statistics.median(secs)),
            "max_ms": _ms(max(secs)),
            "size": sum(s.size for s in group),
        }
    return out


def occupancy(spans: list[Span], start: float, end: float) -> dict[str, float]:
    """How busy the engine was kept: mean Docker calls in flight over [start, end], and the time
    with none in flight (the engine idle, waiting for the caller)."""
    window = end - start
    if window <= 0:
        return {"window_s": 0.0}
    edges: list[tuple[float, int]] = []
    for s in spans:
        a, b = max(s.start, start), min(s.end, end)
        if b > a:
            edges += [(a, 1), (b, -1)]
    edges.sort()
    busy = idle = 0.0
    level = 0
    t = start
    for at, delta in edges:
        if level == 0:
            idle += at - t
        busy += level * (at - t)
        t = at
        level += delta
    idle += end - t if level == 0 else 0.0
    return {
        "window_s": round(window, 3),
        "mean_in_flight": round(busy / window, 2),
        "idle_s": round(idle, 3),
    }


def batches(spans: list[Span], phase_end: float) -> list[dict[str, float]]:
    """The slow-start batches of a scale-up: one `place` span each, then that batch's Docker
    calls and row writes. `mean_in_flight` is how many of the batch's create/start calls were in
    flight on average (a batch ends with its slowest member, so its tail runs below the node's
    concurrency); `gap_ms` is the time between the batch's last Docker call and the next batch's
    first one, during which the engine does nothing for this deployment."""
    places = [s for s in spans if s.kind == "place"]
    docker_calls = [s for s in spans if s.kind in ("docker:create_container", "docker:start")]
    out = []
    for i, p in enumerate(places):
        until = places[i + 1].start if i + 1 < len(places) else phase_end
        mine = [c for c in docker_calls if p.end <= c.start < until]
        if not mine:
            continue
        first_call = min(c.start for c in mine)
        last_end = max(c.end for c in mine)
        following = [c for c in docker_calls if c.start >= until]
        next_call = min((c.start for c in following), default=None)
        out.append(
            {
                "size": p.size,
                "place_ms": _ms(p.seconds),
                "calls_s": round(last_end - first_call, 3),
                "mean_in_flight": occupancy(mine, first_call, last_end).get("mean_in_flight", 0.0),
                "gap_ms": _ms(next_call - last_end) if next_call is not None else 0.0,
            }
        )
    return out
