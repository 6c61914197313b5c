"""PURE: where replicas go. Filter nodes that can hold a replica, score the survivors, explain
the refusals in the shape kube-scheduler users know ("0/5 nodes fit: 3 insufficient memory").

No I/O, no clock: the reconciler passes in the nodes and what live replicas already hold on
them (`usage`, and the host ports in `held`), and persists the placements it gets back.

Host ports are a node resource as in kube-scheduler's NodePorts filter: a replica that
publishes port P/proto fits only a node where neither another of our replicas (`held`) nor a
container that is not ours (`Node.foreign_ports`) holds it.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.model import ZERO, Node, NodeStatus, Resources

# Refusal reasons, in the words operators read in a deployment's reason.
NOT_READY = "not ready"
UNSCHEDULABLE = "unschedulable"
INSUFFICIENT = "insufficient {}"
# A node whose engine kept refusing this deployment's replicas (the reconciler's memory).
REFUSED = "refused this deployment"
HOST_PORT_IN_USE = "host port {}/{} in use"
# Tolerance for float CPU sums (0.1 + 0.2 must fit in 0.3).
_EPSILON = 1e-9


# A node port: (port, protocol).
Port = tuple[int, str]
NO_PORTS: frozenset[Port] = frozenset()
_NONE_HELD: Mapping[Port, int] = {}


def ports_in_use(node: Node, ports: Collection[Port], held: Mapping[Port, int]) -> list[Port]:
    """Which of `ports` are taken on `node`: by our replicas (`held`, a count per port) or by
    containers that are not ours."""
    if not ports:
        return []
    return sorted(p for p in ports if held.get(p, 0) > 0 or p in node.foreign_ports)


def hold(held: Counter[Port], ports: Iterable[Port], sign: int = 1) -> None:
    """Count `ports` as held (or, with `sign` -1, released) in `held`; no zero counts kept."""
    for p in ports:
        held[p] += sign
        if held[p] <= 0:
            del held[p]


@dataclass(frozen=True, slots=True)
class Placement:
    replica_id: uuid.UUID
    node_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    placements: tuple[Placement, ...]
    # Why the first replica that did not fit was refused; None when all were placed.
    reason: str | None = None

    @property
    def unplaced(self) -> bool:
        return self.reason is not None


def refusals(
    node: Node,
    request: Resources,
    used: Resources,
    excluded: Collection[uuid.UUID] = (),
    ports: Collection[Port] = NO_PORTS,
    held: Mapping[Port, int] = _NONE_HELD,
) -> list[str]:
    """Every reason `node` cannot take one more replica needing `request` and host `ports`;
    empty means it fits. `excluded`: nodes that refused this deployment too often to be tried
    again for now; `held`: the host ports our live replicas hold on the node."""
    if node.id in excluded:
        return [REFUSED]
    if node.status is not NodeStatus.READY:
        return [NOT_READY]
    if node.unschedulable or node.draining:
        return [UNSCHEDULABLE]
    reasons = []
    if used.cpu_cores + request.cpu_cores > node.cpu_cores + _EPSILON:
        reasons.append(INSUFFICIENT.format("cpu"))
    if used.memory_mb + request.memory_mb > node.memory_mb:
        reasons.append(INSUFFICIENT.format("memory"))
    if used.gpu_units + request.gpu_units > node.gpu_units:
        reasons.append(INSUFFICIENT.format("gpu"))
    if node.storage_gb is not None and used.storage_gb + request.storage_gb > node.storage_gb:
        reasons.append(INSUFFICIENT.format("storage"))
    if ports:
        reasons += [HOST_PORT_IN_USE.format(*p) for p in ports_in_use(node, ports, held)]
    return reasons


def explain(
    nodes: Sequence[Node],
    request: Resources,
    usage: Mapping[uuid.UUID, Resources],
    excluded: Collection[uuid.UUID] = (),
    ports: Collection[Port] = NO_PORTS,
    held: Mapping[uuid.UUID, Mapping[Port, int]] | None = None,
) -> str:
    """`0/N nodes fit: ...`, each reason counted once per node it applies to (as kube does):
    `0/3 nodes fit: 2 host port 18080/tcp in use, 1 insufficient memory`."""
    counts: Counter[str] = Counter()
    fitting = 0
    held = held or {}
    for node in nodes:
        why = refusals(
            node,
            request,
            usage.get(node.id, ZERO),
            excluded,
            ports,
            held.get(node.id, _NONE_HELD),
        )
        if why:
            counts.update(why)
        else:
            fitting += 1
    if not nodes:
        return "0/0 nodes fit: no nodes registered"
    parts = ", ".join(
        f"{n} {text}" for text, n in sorted(counts.items(), key=lambda i: (-i[1], i[0]))
    )
    return (
        f"{fitting}/{len(nodes)} nodes fit: {parts}"
        if parts
        else f"{fitting}/{len(nodes)} nodes fit"
    )


def _utilisation(node: Node, used: Resources) -> float:
    """Mean fraction allocated over the dimensions the node has: lower is emptier."""
    fractions = [used.cpu_cores / node.cpu_cores, used.memory_mb / node.memory_mb]
    if node.gpu_units > 0:
        fractions.append(used.gpu_units / node.gpu_units)
    if node.storage_gb:
        fractions.append(used.storage_gb / node.storage_gb)
    return sum(fractions) / len(fractions)


def schedule(
    replica_ids: Sequence[uuid.UUID],
    request: Resources,
    nodes: Sequence[Node],
    usage: Mapping[uuid.UUID, Resources],
    spread: Mapping[uuid.UUID, int],
    excluded: Collection[uuid.UUID] = (),
    ports: Collection[Port] = NO_PORTS,
    held: Mapping[uuid.UUID, Mapping[Port, int]] | None = None,
) -> ScheduleResult:
    """Place `replica_ids` (in order) one by one; stop at the first that fits nowhere.

    `usage` is what live replicas already hold per node; `spread` how many live replicas of
    this deployment each node has; `excluded` the nodes not to try for this deployment;
    `ports` the host ports each replica publishes and `held` those our live replicas hold per
    node. Each placement counts against the next one, so a single pass never overcommits a
    node nor puts two holders of one host port on it. Score: fewest replicas of this
    deployment first (spread), then the least allocated node, then the name for a
    deterministic tie-break.
    """
    used = {node.id: usage.get(node.id, ZERO) for node in nodes}
    mine = {node.id: spread.get(node.id, 0) for node in nodes}
    taken = {node.id: Counter((held or {}).get(node.id, _NONE_HELD)) for node in nodes}
    placements: list[Placement] = []
    for replica_id in replica_ids:
        candidates = [
            n for n in nodes if not refusals(n, request, used[n.id], excluded, ports, taken[n.id])
        ]
        if not candidates:
            reason = explain(nodes, request, used, excluded, ports, taken)
            return ScheduleResult(tuple(placements), reason)
        best = min(
            candidates,
            key=lambda n: (mine[n.id], _utilisation(n, used[n.id] + request), n.name, str(n.id)),
        )
        used[best.id] = used[best.id] + request
        hold(taken[best.id], ports)
        mine[best.id] += 1
        placements.append(Placement(replica_id, best.id))
    return ScheduleResult(tuple(placements))


class NodeIndex:
    """`schedule()` for many calls in a row, in O(log n) per placement instead of O(n).

    The reconciler's scheduler cache: it holds the nodes and what is used on each, and gives
    exactly the placements `schedule()` gives for the same nodes, usage and spread (a
    hypothesis test holds it to that). Why it can: the first score is a deployment's own
    replica count on the node, which is zero on all but a handful of nodes, so the best node
    is the best fitting node outside that handful, found at the top of a heap ordered by the
    rest of the score, or else the best of the handful, looked at one by one. A heap per
    request shape (there are few) keeps, for every node that fits that shape, its score after
    one more such replica; entries go stale when a node's usage changes (a fresh one is
    pushed then) and are dropped lazily as they surface. Host ports are not part of the score,
    so they are checked as entries surface: a node holding a requested port is set aside like
    one holding the deployment's replicas.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        usage: Mapping[uuid.UUID, Resources],
        held: Mapping[uuid.UUID, Mapping[Port, int]] | None = None,
    ) -> None:
        self.nodes = tuple(nodes)
        self._by_id = {n.id: n for n in self.nodes}
        self._open = [n for n in self.nodes if not refusals(n, ZERO, ZERO)]  # ready, schedulable
        self.used: dict[uuid.UUID, Resources] = {n.id: usage.get(n.id, ZERO) for n in self.nodes}
        # Host ports our live and assumed replicas hold, per node (count per port).
        self.held: dict[uuid.UUID, Counter[Port]] = {
            n.id: Counter((held or {}).get(n.id, _NONE_HELD)) for n in self.nodes
        }
        self._version: dict[uuid.UUID, int] = dict.fromkeys(self._by_id, 0)
        self._heaps: dict[Resources, list[tuple[float, str, str, int, uuid.UUID]]] = {}

    def _entry(self, n: Node, request: Resources) -> tuple[float, str, str, int, uuid.UUID] | None:
        used = self.used[n.id]
        if refusals(n, request, used):
            return None
        score = _utilisation(n, used + request)
        return (score, n.name, str(n.id), self._version[n.id], n.id)

    def _heap(self, request: Resources) -> list[tuple[float, str, str, int, uuid.UUID]]:
        heap = self._heaps.get(request)
        if heap is None:
            entries = (self._entry(n, request) for n in self._open)
            heap = [e for e in entries if e is not None]
            heapq.heapify(heap)
            self._heaps[request] = heap
        return heap

    def add(
        self,
        node_id: uuid.UUID,
        delta: Resources,
        *,
        sign: int = 1,
        ports: Collection[Port] = NO_PORTS,
    ) -> None:
        """Usage on `node_id` changed by `delta` and host `ports` (taken away when `sign` is
        -1)."""
        if node_id not in self._by_id:
            return
        if ports:
            hold(self.held[node_id], ports, sign)
        used = self.used[node_id]
        if sign > 0:
            self.used[node_id] = used + delta
        else:
            self.used[node_id] = Resources(
                max(used.cpu_cores - delta.cpu_cores, 0.0),
                max(used.memory_mb - delta.memory_mb, 0),
                max(used.gpu_units - delta.gpu_units, 0),
                max(used.storage_gb - delta.storage_gb, 0),
            )
        self._version[node_id] += 1
        node = self._by_id[node_id]
        for request, heap in self._heaps.items():
            entry = self._entry(node, request)
            if entry is not None:
                heapq.heappush(heap, entry)

    def _best_outside(
        self,
        request: Resources,
        taken: Mapping[uuid.UUID, int],
        excluded: Collection[uuid.UUID] = (),
        ports: Collection[Port] = NO_PORTS,
    ) -> Node | None:
        """The best fitting node holding none of the deployment's replicas nor any of `ports`,
        and not excluded."""
        heap = self._heap(request)
        set_aside = []
        best: Node | None = None
        while heap:
            entry = heap[0]
            node_id = entry[4]
            if entry[3] != self._version[node_id]:
                heapq.heappop(heap)  # stale: a fresh entry was pushed when usage changed
                continue
            if (
                taken.get(node_id, 0) > 0
                or node_id in excluded
                or (ports and ports_in_use(self._by_id[node_id], ports, self.held[node_id]))
            ):
                set_aside.append(heapq.heappop(heap))
                continue
            best = self._by_id[node_id]
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return best

    def schedule(
        self,
        replica_ids: Sequence[uuid.UUID],
        request: Resources,
        spread: Mapping[uuid.UUID, int],
        excluded: Collection[uuid.UUID] = (),
        ports: Collection[Port] = NO_PORTS,
    ) -> ScheduleResult:
        """As `schedule()`, and the placements (with their host `ports`) count as used from
        now on."""
        mine = {k: v for k, v in spread.items() if v > 0 and k in self._by_id}
        placements: list[Placement] = []
        for replica_id in replica_ids:
            best = self._best_outside(request, mine, excluded, ports)
            if best is None:
                holders = [
                    self._by_id[k]
                    for k in mine
                    if not refusals(
                        self._by_id[k], request, self.used[k], excluded, ports, self.held[k]
                    )
                ]
                if holders:
                    best = min(
                        holders,
                        key=lambda n: (
                            mine[n.id],
                            _utilisation(n, self.used[n.id] + request),
                            n.name,
                            str(n.id),
                        ),
                    )
            if best is None:
                reason = explain(self.nodes, request, self.used, excluded, ports, self.held)
                return ScheduleResult(tuple(placements), reason)
            self.add(best.id, request, ports=ports)
            mine[best.id] = mine.get(best.id, 0) + 1
            placements.append(Placement(replica_id, best.id))
        return ScheduleResult(tuple(placements))
