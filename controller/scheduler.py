"""PURE: where replicas go. Filter nodes that can hold a replica, score the survivors, explain
the refusals in the shape kube-scheduler users know ("0/5 nodes fit: 3 insufficient memory").

No I/O, no clock: the reconciler passes in the nodes and what live replicas already hold on
them (`usage`, and the host ports in `held`), and persists the placements it gets back.

Host ports are a node resource as in kube-scheduler's NodePorts filter: a replica that
publishes port P/proto fits only a node where neither another of our replicas (`held`) nor a
container that is not ours (`Node.foreign_ports`) holds it.

A deployment's placement rules (controller.placement_rules) filter before resources do, as
kube-scheduler's NodeAffinity and topology-spread filters run before NodeResourcesFit: a node
outside the selector, without the `spread_by` label, or already holding `max_per_node` of the
deployment's replicas is refused for that one reason alone (its memory does not matter then).
With `spread_by` the score starts with the deployment's replicas in the node's label value,
so replicas go to the emptiest value first (skew at most 1 while every value has room; when
one is full the others take the rest rather than leave replicas pending).
`controller.node_index` gives the same placements in O(log n) each.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.model import ZERO, Node, NodeStatus, Resources
from controller.placement_rules import NO_RULES, PlacementRules, label_value

# Refusal reasons, in the words operators read in a deployment's reason.
NOT_READY = "not ready"
UNSCHEDULABLE = "unschedulable"
INSUFFICIENT = "insufficient {}"
# A node whose engine kept refusing this deployment's replicas (the reconciler's memory).
REFUSED = "refused this deployment"
HOST_PORT_IN_USE = "host port {}/{} in use"
SELECTOR_NOT_MATCHED = "node selector {} not matched"
MISSING_LABEL = "missing label {}"
OVER_CAP = "max {} per node"
_RULE_REASONS = tuple(r.partition("{")[0] for r in (SELECTOR_NOT_MATCHED, MISSING_LABEL, OVER_CAP))
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


def rule_refusal(node: Node, rules: PlacementRules, mine: int) -> str | None:
    """Why the deployment's placement rules keep it off `node` (None: they allow it);
    `mine`: the deployment's replicas already on the node."""
    if not rules.matches(node.labels):
        return SELECTOR_NOT_MATCHED.format(rules.selector)
    if rules.spread_by is not None and label_value(node.labels, rules.spread_by) is None:
        return MISSING_LABEL.format(rules.spread_by)
    if rules.max_per_node is not None and mine >= rules.max_per_node:
        return OVER_CAP.format(rules.max_per_node)
    return None


def refusals(
    node: Node,
    request: Resources,
    used: Resources,
    excluded: Collection[uuid.UUID] = (),
    ports: Collection[Port] = NO_PORTS,
    held: Mapping[Port, int] = _NONE_HELD,
    rules: PlacementRules = NO_RULES,
    mine: int = 0,
) -> list[str]:
    """Every reason `node` cannot take one more replica needing `request` and host `ports`;
    empty means it fits. `excluded`: nodes that refused this deployment too often to be tried
    again for now; `held`: the host ports our live replicas hold on the node; `rules` the
    deployment's placement and `mine` its replicas on the node."""
    if node.id in excluded:
        return [REFUSED]
    if node.status is not NodeStatus.READY:
        return [NOT_READY]
    if node.unschedulable or node.draining:
        return [UNSCHEDULABLE]
    if rules is not NO_RULES:
        ruled_out = rule_refusal(node, rules, mine)
        if ruled_out is not None:
            return [ruled_out]
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
    rules: PlacementRules = NO_RULES,
    spread: Mapping[uuid.UUID, int] | None = None,
) -> str:
    """`0/N nodes fit: ...`, each reason counted once per node it applies to (as kube does):
    `0/5 nodes fit: 3 node selector zone=a not matched, 1 max 1 per node, 1 insufficient
    memory`. `spread`: the deployment's replicas per node (for `max_per_node`)."""
    counts: Counter[str] = Counter()
    fitting = 0
    held = held or {}
    spread = spread or {}
    for node in nodes:
        why = refusals(
            node,
            request,
            usage.get(node.id, ZERO),
            excluded,
            ports,
            held.get(node.id, _NONE_HELD),
            rules,
            spread.get(node.id, 0),
        )
        if why:
            counts.update(why)
        else:
            fitting += 1
    if not nodes:
        return "0/0 nodes fit: no nodes registered"
    # Most nodes first; among equal counts the placement rules first (what the operator
    # asked for explains more than what the nodes lack), then alphabetically.
    parts = ", ".join(
        f"{n} {text}"
        for text, n in sorted(
            counts.items(), key=lambda i: (-i[1], not i[0].startswith(_RULE_REASONS), i[0])
        )
    )
    return (
        f"{fitting}/{len(nodes)} nodes fit: {parts}"
        if parts
        else f"{fitting}/{len(nodes)} nodes fit"
    )


def utilisation(node: Node, used: Resources) -> float:
    """Mean fraction allocated over the dimensions the node has: lower is emptier."""
    fractions = [used.cpu_cores / node.cpu_cores, used.memory_mb / node.memory_mb]
    if node.gpu_units > 0:
        fractions.append(used.gpu_units / node.gpu_units)
    if node.storage_gb:
        fractions.append(used.storage_gb / node.storage_gb)
    return sum(fractions) / len(fractions)


# A node's score within one label value (or the whole fog without `spread_by`): the
# deployment's replicas on it, its utilisation after one more replica, name, id. Lowest wins.
NodeScore = tuple[int, float, str, str]


def node_score(node: Node, mine: int, used_after: Resources) -> NodeScore:
    return (mine, utilisation(node, used_after), node.name, str(node.id))


def domain_counts(
    nodes: Iterable[Node], rules: PlacementRules, spread: Mapping[uuid.UUID, int]
) -> Counter[str]:
    """The deployment's replicas per value of its `spread_by` label, counted on the nodes its
    selector matches (as Kubernetes counts a spread constraint's pods: nodes outside the
    node affinity do not count); empty without `spread_by`."""
    counts: Counter[str] = Counter()
    key = rules.spread_by
    if key is None:
        return counts
    for n in nodes:
        mine = spread.get(n.id, 0)
        if mine and rules.matches(n.labels):
            value = label_value(n.labels, key)
            if value is not None:
                counts[value] += mine
    return counts


def label_values(nodes: Iterable[Node], key: str | None) -> dict[uuid.UUID, str]:
    """Each node's value of label `key`, for the nodes that have it (none when `key` is None)."""
    if key is None:
        return {}
    found = ((n.id, label_value(n.labels, key)) for n in nodes)
    return {node_id: v for node_id, v in found if v is not None}


def schedule(
    replica_ids: Sequence[uuid.UUID],
    request: Resources,
    nodes: Sequence[Node],
    usage: Mapping[uuid.UUID, Resources],
    spread: Mapping[uuid.UUID, int],
    excluded: Collection[uuid.UUID] = (),
    ports: Collection[Port] = NO_PORTS,
    held: Mapping[uuid.UUID, Mapping[Port, int]] | None = None,
    rules: PlacementRules = NO_RULES,
) -> ScheduleResult:
    """Place `replica_ids` (in order) one by one; stop at the first that fits nowhere.

    `usage` is what live replicas already hold per node; `spread` how many live replicas of
    this deployment each node has; `excluded` the nodes not to try for this deployment;
    `ports` the host ports each replica publishes and `held` those our live replicas hold per
    node; `rules` the deployment's placement. Each placement counts against the next one, so
    a single pass never overcommits a node, puts two holders of one host port on it, or
    passes `max_per_node`. Score: with `spread_by`, fewest replicas of this deployment in the
    node's label value first; then fewest on the node (spread), then the least allocated
    node, then the name for a deterministic tie-break.
    """
    used = {node.id: usage.get(node.id, ZERO) for node in nodes}
    mine = {node.id: spread.get(node.id, 0) for node in nodes}
    taken = {node.id: Counter((held or {}).get(node.id, _NONE_HELD)) for node in nodes}
    key = rules.spread_by
    # Each node's value of the `spread_by` label (nodes without it are never candidates).
    value = label_values(nodes, key)
    in_value = domain_counts(nodes, rules, mine)
    placements: list[Placement] = []
    for replica_id in replica_ids:
        candidates = [
            n
            for n in nodes
            if not refusals(n, request, used[n.id], excluded, ports, taken[n.id], rules, mine[n.id])
        ]
        if not candidates:
            reason = explain(nodes, request, used, excluded, ports, taken, rules, mine)
            return ScheduleResult(tuple(placements), reason)
        best = min(
            candidates,
            key=lambda n: (
                in_value[value[n.id]] if key is not None else 0,
                node_score(n, mine[n.id], used[n.id] + request),
            ),
        )
        used[best.id] = used[best.id] + request
        hold(taken[best.id], ports)
        mine[best.id] += 1
        if key is not None:
            in_value[value[best.id]] += 1
        placements.append(Placement(replica_id, best.id))
    return ScheduleResult(tuple(placements))
