"""PURE: which one replica to move so a settled deployment's spread heals (issue 15).

Fog nodes come and go: while one is away its replicas are replaced on its peers, and when it
returns the scheduler never moves them back, so it stays empty. `next_move` says which replica
to move next, or None: from the fullest eligible node (with `spread_by`, from the fullest
label value first, then within a value from its fullest node) to the emptiest eligible node
that could take one more, and only when their counts differ by more than 1, so a move always
lowers the skew and a spread balanced within 1 is left alone. The reconciler carries a move
out (the replica joins `plan(..., moving=...)`: replaced first, stopped once its replacement
is ready) and keeps the limits: one move per deployment, a fleet-wide cap, a cool-down.

Eligible means the node is ready, schedulable, matches the selector and carries the spread
label; replicas elsewhere (a cordoned node, a node that no longer fits, which `plan` handles
as outgoing) are neither counted nor moved. `fitting` is what the scheduler's cache says can
take one more replica of the deployment's shape (capacity, ports, readiness); the cap
(`max_per_node`) is checked here. It is asked lazily (a callable), since the common case, a
deployment with at most one replica per node, is decided without it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.model import Deployment, Node, NodeStatus, Replica, ReplicaStatus
from controller.placement_rules import PlacementRules, label_value


@dataclass(frozen=True, slots=True)
class Move:
    """Replace `replica_id` (on `from_node`) with a replica meant for `to_node`."""

    replica_id: uuid.UUID
    from_node: uuid.UUID
    to_node: uuid.UUID


def settled(d: Deployment, ready: int) -> bool:
    """Only a whole, quiet deployment is rebalanced: every live replica of the current spec
    running and ready (`ready` counted from the listing), none stopping, not being deleted,
    and its placement allows it. Anything else is the planner's business first."""
    if d.deleting or not d.placement.rebalance or d.target_replicas <= 0:
        return False
    live = 0
    for r in d.replicas:
        if r.status is ReplicaStatus.STOPPING:
            return False
        if not r.live:
            continue
        if r.status is not ReplicaStatus.RUNNING or r.node_id is None or d.outdated(r):
            return False
        live += 1
    return live == d.target_replicas == ready


def eligible(node: Node, rules: PlacementRules) -> bool:
    """The node may hold the deployment's replicas now: ready, schedulable, selected, and
    labelled with the spread key."""
    if node.status is not NodeStatus.READY or node.unschedulable or node.draining:
        return False
    if not rules.matches(node.labels):
        return False
    return rules.spread_by is None or label_value(node.labels, rules.spread_by) is not None


def group_of(node: Node, rules: PlacementRules) -> str:
    """What the spread is counted over: the spread label's value, else the node itself (by
    name first, so ties go the same way as in the operator's listing)."""
    if rules.spread_by is None:
        return f"{node.name} {node.id}"
    return label_value(node.labels, rules.spread_by) or ""


def next_move(
    rules: PlacementRules,
    replicas: Sequence[Replica],
    nodes: Mapping[uuid.UUID, Node] | Iterable[Node],
    fitting: Collection[uuid.UUID] | Callable[[], Collection[uuid.UUID]],
) -> Move | None:
    """The one replica to move now, or None. `replicas`: the deployment's live replicas (the
    caller has checked it is `settled`); `nodes` by id, when the caller has them so, spares
    a pass over every node for the common case."""
    by_id = nodes if isinstance(nodes, Mapping) else {n.id: n for n in nodes}
    if _at_most_one_each(rules, replicas, by_id):
        return None
    open_nodes = {n.id: n for n in by_id.values() if eligible(n, rules)}
    per_node: Counter[uuid.UUID] = Counter(
        r.node_id for r in replicas if r.node_id is not None and r.node_id in open_nodes
    )
    if not per_node:
        return None
    groups: dict[str, list[Node]] = {}
    for n in open_nodes.values():
        groups.setdefault(group_of(n, rules), []).append(n)
    per_group = {g: sum(per_node[n.id] for n in members) for g, members in groups.items()}
    if max(per_group.values()) - min(per_group.values()) <= 1 and (
        rules.spread_by is None or _nodes_balanced(groups, per_node)
    ):
        return None  # the common case: decided without asking the scheduler's cache
    wanted = fitting() if callable(fitting) else fitting
    takers = {
        n
        for n in wanted
        if n in open_nodes and (rules.max_per_node is None or per_node[n] < rules.max_per_node)
    }
    if not takers:
        return None
    pair = _between_groups(groups, per_group, per_node, takers)
    if pair is None and rules.spread_by is not None:
        pair = _within_groups(groups, per_node, takers)
    if pair is None:
        return None
    source, target = pair
    return Move(_newest_on(replicas, source.id), source.id, target.id)


def _at_most_one_each(
    rules: PlacementRules, replicas: Sequence[Replica], by_id: Mapping[uuid.UUID, Node]
) -> bool:
    """No node (no label value) holds two of the replicas: balanced within 1 whatever the
    other nodes hold, decided from the replicas' own nodes alone (a fog of a thousand nodes
    and thousands of small deployments is mostly this)."""
    seen: set[str] = set()
    for r in replicas:
        n = by_id.get(r.node_id) if r.node_id is not None else None
        if n is None or not eligible(n, rules):
            continue
        key = group_of(n, rules)
        if key in seen:
            return False
        seen.add(key)
    return True


def _nodes_balanced(groups: Mapping[str, list[Node]], per_node: Mapping[uuid.UUID, int]) -> bool:
    for members in groups.values():
        counts = [per_node.get(n.id, 0) for n in members]
        if max(counts) - min(counts) > 1:
            return False
    return True


def _fullest(members: Iterable[Node], per_node: Mapping[uuid.UUID, int]) -> Node:
    return min(members, key=lambda n: (-per_node.get(n.id, 0), n.name, str(n.id)))


def _emptiest(members: Iterable[Node], per_node: Mapping[uuid.UUID, int]) -> Node:
    return min(members, key=lambda n: (per_node.get(n.id, 0), n.name, str(n.id)))


def _between_groups(
    groups: Mapping[str, list[Node]],
    per_group: Mapping[str, int],
    per_node: Mapping[uuid.UUID, int],
    takers: Collection[uuid.UUID],
) -> tuple[Node, Node] | None:
    """From the fullest group's fullest node to the emptiest taking group's emptiest taker,
    when the groups differ by more than 1 (without `spread_by` a group is one node)."""
    source_group = min(per_group, key=lambda g: (-per_group[g], g))
    open_groups = [g for g, members in groups.items() if any(n.id in takers for n in members)]
    if not open_groups:
        return None
    target_group = min(open_groups, key=lambda g: (per_group[g], g))
    if per_group[source_group] - per_group[target_group] <= 1:
        return None
    source = _fullest(groups[source_group], per_node)
    target = _emptiest((n for n in groups[target_group] if n.id in takers), per_node)
    return source, target


def _within_groups(
    groups: Mapping[str, list[Node]],
    per_node: Mapping[uuid.UUID, int],
    takers: Collection[uuid.UUID],
) -> tuple[Node, Node] | None:
    """With the label values balanced: the widest gap between a value's fullest node and its
    emptiest taker, when it is more than 1 (the value's count does not change)."""
    best: tuple[int, str, Node, Node] | None = None
    for g, members in groups.items():
        open_members = [n for n in members if n.id in takers]
        if not open_members:
            continue
        source = _fullest(members, per_node)
        target = _emptiest(open_members, per_node)
        gap = per_node.get(source.id, 0) - per_node.get(target.id, 0)
        if gap > 1 and (best is None or (-gap, g) < (-best[0], best[1])):
            best = (gap, g, source, target)
    return None if best is None else (best[2], best[3])


def _newest_on(replicas: Sequence[Replica], node_id: uuid.UUID) -> uuid.UUID:
    """The replica to move off `node_id`: the newest, so the longest-serving ones stay."""
    on = [r for r in replicas if r.node_id == node_id]
    newest = max(on, key=lambda r: (r.created_at.timestamp() if r.created_at else 0.0, str(r.id)))
    return newest.id
