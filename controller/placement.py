"""The scheduler's view of node usage, kept between reconciles: read from the store, then
kept current by our own placements.

A placement is assumed the moment it is chosen and before it is written (kube-scheduler's
"assume, then bind"), so concurrent reconciles schedule against each other's choices without
a lock held across a database write. Capacity freed meanwhile is seen at the next read: the
cache can overestimate usage, never underestimate it, and a refusal always re-reads first.
The choice itself is `node_index.NodeIndex.schedule` (pure). Host ports are kept the same
way as resources: the ports our live replicas hold per node are read with the usage
(`node_ports`), and an assumed placement holds its deployment's ports at once, so two
reconciles never put two holders of one port on one node.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence

from controller import errors, scheduler
from controller.model import ZERO, Node, Resources
from controller.node_index import NodeIndex
from controller.placement_rules import NO_RULES, PlacementRules
from controller.ports import ReconcileStore

# The scheduler's view of node usage is re-read from the store at least this often (seconds).
USAGE_MAX_AGE = 5.0

# What an assumed placement holds: its node, its resources and its host ports.
_Assumed = tuple[uuid.UUID, Resources, frozenset[scheduler.Port]]


class PlacementCache:
    """Node usage for the scheduler, with placements assumed until their write is over."""

    def __init__(self, store: ReconcileStore, nodes: Callable[[], tuple[Node, ...]]) -> None:
        self._store = store
        self._nodes = nodes
        self._index: NodeIndex | None = None
        self._read_at = 0.0  # monotonic seconds
        self._lock = asyncio.Lock()  # one read at a time
        # Placements chosen but not yet written, and (during a read) every one chosen meanwhile.
        self._assumed: dict[uuid.UUID, _Assumed] = {}
        self._assumed_during_read: dict[uuid.UUID, _Assumed] | None = None

    def new_term(self) -> None:
        """Leadership (re)gained: another leader may have placed replicas meanwhile."""
        self._index = None

    async def choose(
        self,
        replica_ids: Sequence[uuid.UUID],
        request: Resources,
        spread: Counter[uuid.UUID],
        excluded: Collection[uuid.UUID],
        ports: frozenset[scheduler.Port] = scheduler.NO_PORTS,
        rules: PlacementRules = NO_RULES,
    ) -> scheduler.ScheduleResult:
        """Nodes for `replica_ids` (each publishing host `ports`, placed by the deployment's
        `rules`), each assumed at once; `settle` every placement after its write. A refusal
        re-reads usage first (capacity or a port may have been freed since)."""
        called_at = time.monotonic()
        if self._index is None or called_at - self._read_at > USAGE_MAX_AGE:
            await self._read(called_at)
        result = self._current().schedule(
            list(replica_ids), request, spread, excluded, ports, rules
        )
        if result.unplaced and self._read_at < called_at:
            await self._read(called_at)
            result = self._current().schedule(
                list(replica_ids), request, spread, excluded, ports, rules
            )
        # No await between choosing and assuming: the next reconcile sees these placements.
        for p in result.placements:
            self._assume(p.replica_id, (p.node_id, request, ports))
        return result

    async def fitting(
        self,
        request: Resources,
        rules: PlacementRules = NO_RULES,
        ports: frozenset[scheduler.Port] = scheduler.NO_PORTS,
        excluded: Collection[uuid.UUID] = (),
    ) -> frozenset[uuid.UUID]:
        """The nodes that could take one more replica of `request` (host `ports`) under
        `rules` now, by readiness, capacity, ports, selector and spread label; the
        deployment's `max_per_node` is the caller's business (the rebalance decision knows
        which replicas move). Async because usage may have to be re-read first."""
        if self._index is None or time.monotonic() - self._read_at > USAGE_MAX_AGE:
            await self._read(time.monotonic())
        return self._current().fitting(request, rules, ports, excluded)

    def settle(self, replica_id: uuid.UUID, *, written: bool) -> None:
        """The placement's write is over: kept if it was written, taken back if not."""
        assumed = self._assumed.pop(replica_id, None)
        if assumed is None or written or self._index is None:
            return
        node_id, request, ports = assumed
        self._index.add(node_id, request, sign=-1, ports=ports)

    def _assume(self, replica_id: uuid.UUID, assumed: _Assumed) -> None:
        """Remember a placement the index already counts until its write is over."""
        self._assumed[replica_id] = assumed
        if self._assumed_during_read is not None:
            self._assumed_during_read[replica_id] = assumed

    async def _read(self, wanted_after: float) -> None:
        """Re-read usage from the store, plus every placement that may be missing from that
        read: those being written when it began and those chosen while it ran (a placement
        both written and counted is counted twice, which errs on the safe side)."""
        async with self._lock:
            if self._index is not None and self._read_at >= wanted_after:
                return  # another reconcile re-read meanwhile
            started = time.monotonic()
            pending = self._assumed_during_read = dict(self._assumed)
            try:
                usage = await self._store.node_usage()
                held = await self._store.node_ports()
            finally:
                self._assumed_during_read = None
            for node_id, request, ports in pending.values():
                usage[node_id] = usage.get(node_id, ZERO) + request
                scheduler.hold(held.setdefault(node_id, Counter()), ports)
            self._index = NodeIndex(self._nodes(), usage, held)
            self._read_at = started

    def _current(self) -> NodeIndex:
        """The index over the current nodes and the cached usage."""
        nodes = self._nodes()
        index = self._index
        if index is None:  # a new term began while this reconcile waited
            raise errors.TransientError("scheduler cache not loaded yet")
        if index.nodes is not nodes:
            # Nodes changed (a probe, a cordon, ports of other containers, labels): same
            # usage, new node set.
            index = self._index = NodeIndex(nodes, index.used, index.held)
        return index
