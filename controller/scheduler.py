"""PURE: where replicas go. Filter nodes that can hold a replica, score the survivors, explain
the refusals in the shape kube-scheduler users know ("0/5 nodes fit: 3 insufficient memory").

No I/O, no clock: the reconciler passes in the nodes and what live replicas already hold on
them (`usage`), and persists the placements it gets back.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.model import ZERO, Node, NodeStatus, Resources

# Refusal reasons, in the words operators read in a deployment's reason.
NOT_READY = "not ready"
UNSCHEDULABLE = "unschedulable"
INSUFFICIENT = "insufficient {}"
# Tolerance for float CPU sums (0.1 + 0.2 must fit in 0.3).
_EPSILON = 1e-9


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


def refusals(node: Node, request: Resources, used: Resources) -> list[str]:
    """Every reason `node` cannot take one more replica needing `request`; empty means it fits."""
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
    return reasons


def explain(nodes: Sequence[Node], request: Resources, usage: Mapping[uuid.UUID, Resources]) -> str:
    """`0/N nodes fit: ...`, each reason counted once per node it applies to (as kube does)."""
    counts: Counter[str] = Counter()
    fitting = 0
    for node in nodes:
        why = refusals(node, request, usage.get(node.id, ZERO))
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
) -> ScheduleResult:
    """Place `replica_ids` (in order) one by one; stop at the first that fits nowhere.

    `usage` is what live replicas already hold per node; `spread` how many live replicas of
    this deployment each node has. Each placement counts against the next one, so a single pass
    never overcommits a node. Score: fewest replicas of this deployment first (spread), then the
    least allocated node, then the name for a deterministic tie-break.
    """
    used = {node.id: usage.get(node.id, ZERO) for node in nodes}
    mine = {node.id: spread.get(node.id, 0) for node in nodes}
    placements: list[Placement] = []
    for replica_id in replica_ids:
        candidates = [n for n in nodes if not refusals(n, request, used[n.id])]
        if not candidates:
            return ScheduleResult(tuple(placements), explain(nodes, request, used))
        best = min(
            candidates,
            key=lambda n: (mine[n.id], _utilisation(n, used[n.id] + request), n.name, str(n.id)),
        )
        used[best.id] = used[best.id] + request
        mine[best.id] += 1
        placements.append(Placement(replica_id, best.id))
    return ScheduleResult(tuple(placements))
