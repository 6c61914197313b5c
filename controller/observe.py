"""What the engines show, as the reconciler and the resync pass see it: listings, plus what a
listing alone does not tell (an exit code from a `die` event, since when a container has been
unhealthy) and which nodes to list for one deployment.

Kept in memory, as kubelet keeps its probe state: lost on failover, and rebuilt by the next
listing and event stream (an unhealthy container's grace starts again, at worst).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from controller.model import Deployment, NodeRecord, NodeStatus, NodeView, ObservedContainer
from controller.runtime import Runtime

# Exit codes remembered from `die` events (oldest dropped first).
EXITS_REMEMBERED = 10_000


class Observer:
    """Lists nodes and keeps the observation state that outlives one listing."""

    def __init__(
        self,
        runtime: Runtime,
        records: Callable[[], Mapping[uuid.UUID, NodeRecord]],
        clock: Callable[[], datetime],
    ) -> None:
        self._runtime = runtime
        self._records = records
        self._clock = clock
        # When each container was first seen unhealthy.
        self.unhealthy_since: dict[str, datetime] = {}
        # Exit codes from `die` events: a container restarted in place no longer shows its.
        self._exits: dict[str, int] = {}
        # Per deployment, the nodes its containers were last seen on (resync passes, events,
        # reconciles). With the nodes of its replica rows, these are the nodes a reconcile
        # lists: listing every node of a large fog per reconcile costs a call per node.
        self._seen: dict[uuid.UUID, frozenset[uuid.UUID]] = {}

    async def observe(
        self, records: Iterable[NodeRecord], deployment_id: uuid.UUID | None = None
    ) -> dict[uuid.UUID, NodeView]:
        """List every reachable node at once; the rest are absent from the map (unknown).

        A reconcile passes its `deployment_id`: the planner only ever looks at that
        deployment's containers (`plan.Observed.index`), so listing the others would cost a
        scan of the whole fog per reconcile (and, on Docker, an inspect of every container of
        every other deployment that is not running) for nothing."""
        reachable = list(records)
        views = await asyncio.gather(*(self._runtime.list(r, deployment_id) for r in reachable))
        now = self._clock()
        if self._exits:
            views = [
                replace(
                    v,
                    containers=tuple(
                        replace(c, exit_code=self._exits[c.id])
                        if c.exit_code is None and c.id in self._exits
                        else c
                        for c in v.containers
                    ),
                )
                for v in views
            ]
        for view in views:
            for c in view.containers:
                if c.health == "unhealthy":
                    self.unhealthy_since.setdefault(c.id, now)
                else:
                    self.unhealthy_since.pop(c.id, None)
        return {v.node_id: v for v in views}

    async def observe_one(self, d: Deployment) -> dict[uuid.UUID, NodeView]:
        """List the nodes that may hold `d`'s containers: its replicas' nodes and the nodes
        its containers were last seen on. A container of `d` anywhere else (started by hand,
        say) is found by the next resync pass, which lists every node, or at once by its
        node's event stream."""
        wanted = {r.node_id for r in d.replicas if r.node_id is not None}
        wanted |= self._seen.get(d.id, frozenset())
        records = self._records()
        found_records = (records.get(node_id) for node_id in wanted)
        listed = [r for r in found_records if r is not None and r.status is NodeStatus.READY]
        views = await self.observe(listed, d.id)
        found = {c.node_id for v in views.values() for c in v.containers}
        was = self._seen.get(d.id, frozenset())
        seen = found | (was - {r.id for r in listed})
        if seen:
            self._seen[d.id] = frozenset(seen)
        else:
            self._seen.pop(d.id, None)
        return views

    def note_seen(self, deployment_id: uuid.UUID, node_id: uuid.UUID) -> None:
        """A container of the deployment showed up on `node_id` (a Docker event)."""
        self._seen[deployment_id] = self._seen.get(deployment_id, frozenset()) | {node_id}

    def seen_in(self, grouped: Mapping[uuid.UUID | None, Iterable[ObservedContainer]]) -> None:
        """Where each deployment's containers are now, from a pass that listed every node."""
        self._seen = {
            deployment_id: frozenset(c.node_id for c in found)
            for deployment_id, found in grouped.items()
            if deployment_id is not None
        }

    def note_exit(self, container_id: str, code: int) -> None:
        """A container's last exit code, from its `die` event (bounded memory)."""
        self._exits[container_id] = code
        if len(self._exits) > EXITS_REMEMBERED:
            self._exits.pop(next(iter(self._exits)))

    def forget(self, deployment_id: uuid.UUID) -> None:
        self._seen.pop(deployment_id, None)
