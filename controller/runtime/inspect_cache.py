"""Inspect answers the runtime may reuse instead of asking the engine again.

A listing whose uptime for a running container is at least the time since an inspect of it
was sent shows that the container has not restarted meanwhile, so that answer still holds.
Without it a scale-down right after a scale-up inspects every replica twice before its first
stop (the resync pass's listing, then the reconcile's), in the node's call slots.
"""

from __future__ import annotations

from typing import Any

# A running container that (re)started this recently is inspected for its restart count.
RECENT_START_SECONDS = 60.0
# Inspect answers kept before the old ones are dropped (only ones under two minutes old stay).
INSPECTED_KEPT = 1024


class InspectCache:
    """Per container id: when an inspect of it (running) was sent, and what it said."""

    def __init__(self) -> None:
        self._inspected: dict[str, tuple[float, dict[str, Any]]] = {}
        self._limit = INSPECTED_KEPT

    def still(
        self, container_id: str, uptime: float | None, listed_by: float
    ) -> dict[str, Any] | None:
        """The last answer, if the container has not restarted since it was sent: the
        listing's uptime (rounded down, so never more than the truth) is at least the time
        from then to the listing's return (`listed_by`), where a restart would show less."""
        held = self._inspected.get(container_id)
        if held is not None and uptime is not None and uptime >= listed_by - held[0]:
            return held[1]
        return None

    def keep(self, container_id: str, sent: float, detail: dict[str, Any]) -> None:
        """Hold an answer of a running container (sent at `sent`); forget a stopped one's."""
        if (detail.get("State") or {}).get("Running"):
            self._inspected[container_id] = (sent, detail)
            if len(self._inspected) > self._limit:
                old = sent - 2 * RECENT_START_SECONDS
                self._inspected = {k: v for k, v in self._inspected.items() if v[0] >= old}
                self._limit = max(INSPECTED_KEPT, 2 * len(self._inspected))
        else:
            self._inspected.pop(container_id, None)
