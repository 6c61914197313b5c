"""Container events of one engine, recorded in a background thread, for timing convergence.

Why the event stream rather than polling ``GET /containers/json``: polling every 50 ms would
itself load the engine we are measuring (a list call competes with the creates for the
daemon's locks), and it only says *that* a container runs, not *when* it started. The engine
stamps every ``create``/``start``/``kill``/``destroy`` event with its own nanosecond clock, so
"first create to last start" is measured where the work happens, the same way for the raw SDK
baseline and for the controller, whatever the benchmark process is doing at that moment.

The engine runs on this machine, so its clock is the one ``time.time()`` reads; edit times
taken in the benchmark and event times can be subtracted directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from tests.harness.engines import API_VERSION

# How often a waiting coroutine looks at what the thread has recorded (memory only: no I/O).
_WAIT_INTERVAL = 0.02


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    action: str  # create, start, kill, die, stop, destroy, ...
    container_id: str
    at: float  # engine clock, seconds since the epoch
    attributes: Mapping[str, str] = field(default_factory=dict)  # labels, name, image, signal


Selector = Callable[[ContainerEvent], bool]


def first(events: Sequence[ContainerEvent], action: str | None = None) -> ContainerEvent | None:
    for e in events:
        if action is None or e.action == action:
            return e
    return None


def distinct(events: Sequence[ContainerEvent], action: str) -> list[ContainerEvent]:
    """The first `action` event of each container, in time order."""
    seen: dict[str, ContainerEvent] = {}
    for e in events:
        if e.action == action and e.container_id not in seen:
            seen[e.container_id] = e
    return sorted(seen.values(), key=lambda e: e.at)


class EventRecorder:
    """Follows ``GET /events?type=container`` of one engine until ``close()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = docker.APIClient(base_url=url, version=API_VERSION, timeout=30)
        self._events: list[ContainerEvent] = []
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._error: BaseException | None = None
        self._stream: Any = None
        self._closing = False
        self._thread = threading.Thread(target=self._follow, name="bench-events", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._opened.wait(timeout):
            raise TimeoutError(f"the event stream of {self.url} did not open within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"cannot follow events of {self.url}: {self._error}")

    def _follow(self) -> None:
        try:
            self._stream = self._client.events(decode=True, filters={"type": "container"})
        except BaseException as exc:
            self._error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            for raw in self._stream:
                event = _parse(raw)
                if event is not None:
                    with self._lock:
                        self._events.append(event)
        except BaseException as exc:
            if not self._closing:
                self._error = exc
        finally:
            if not self._closing and self._error is None:
                self._error = RuntimeError("the engine closed its event stream")

    def close(self) -> None:
        self._closing = True
        if self._stream is not None:
            with contextlib.suppress(Exception):  # already closed by the engine
                self._stream.close()
        self._thread.join(timeout=5)
        self._client.close()

    def mark(self) -> int:
        """A position in the recording; `since(mark)` returns what came after it."""
        with self._lock:
            return len(self._events)

    def since(self, mark: int, select: Selector | None = None) -> list[ContainerEvent]:
        with self._lock:
            events = self._events[mark:]
        if select is not None:
            events = [e for e in events if select(e)]
        return sorted(events, key=lambda e: e.at)

    async def wait(
        self,
        mark: int,
        select: Selector,
        done: Callable[[list[ContainerEvent]], bool],
        *,
        within: float,
        what: str,
    ) -> list[ContainerEvent]:
        """The selected events since `mark` once `done(events)` holds; TimeoutError after
        `within` seconds (the message says how far it got)."""
        deadline = time.monotonic() + within
        while True:
            if self._error is not None:
                raise RuntimeError(f"event stream of {self.url} failed: {self._error}")
            events = self.since(mark, select)
            if done(events):
                return events
            if time.monotonic() > deadline:
                counts: dict[str, int] = {}
                for e in events:
                    counts[e.action] = counts.get(e.action, 0) + 1
                raise TimeoutError(f"timed out after {within:g}s waiting for {what}; saw {counts}")
            await asyncio.sleep(_WAIT_INTERVAL)


def _parse(raw: Any) -> ContainerEvent | None:
    if not isinstance(raw, dict) or raw.get("Type") != "container":
        return None
    actor = raw.get("Actor") or {}
    action = str(raw.get("Action") or raw.get("status") or "")
    container_id = str(actor.get("ID") or raw.get("id") or "")
    nanos = raw.get("timeNano")
    at = int(nanos) / 1e9 if nanos is not None else float(raw.get("time") or 0)
    attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
    return ContainerEvent(action=action, container_id=container_id, at=at, attributes=attributes)


def has_label(key: str, value: str) -> Selector:
    """Events of containers carrying label `key=value` (the engine copies labels into events)."""

    def select(e: ContainerEvent) -> bool:
        return e.attributes.get(key) == value

    return select
