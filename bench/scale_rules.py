"""The placement case of ``python -m bench scale`` (issue 15): the same fog, its nodes labelled
over 20 zones and two tiers, every deployment with a node selector (or none), `spread_by:
zone` and a `max_per_node`.

Why a fog of its own shape: the scheduler's cost with rules depends on how many heaps it keeps
(request shapes x selectors x label values) and on how many label values it visits per
placement, so the case uses the issue's numbers (20 zones) and a few selectors, as an
operator labelling by site and hardware would. Labels and rules follow from a node's and a
deployment's index, so the seeding (rows), the direct measurement (plain values) and the
check of the outcome agree without passing them around.

Two figures: the whole controller placing the labelled fog (the `place-rules` phase of
bench/scale.py, against the plain `place` phase of the same run), and the scheduler alone
(`NodeIndex.schedule` over the full fog, rules against none, in one process): the second
isolates what the rules cost per placement from everything else a reconcile does.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from controller.model import Node, NodeStatus, Resources
from controller.node_index import NodeIndex
from controller.placement_rules import NO_RULES, PlacementRules, label_value

ZONES = 20
# Selectors by deployment index: a quarter unconstrained, half on edge nodes, a quarter on core.
SELECTORS: tuple[dict[str, str], ...] = ({}, {"tier": "edge"}, {"tier": "edge"}, {"tier": "core"})
# The slow-start window's first chunks (controller.starts places 1, then 2, then 2 ... as
# starts succeed): one schedule call per chunk, as the reconciler makes them.
CHUNKS = (1, 2, 2, 4, 8)


def node_labels(i: int) -> dict[str, str]:
    """Node i (1-based, as bench.scale names them): zones round robin, tiers alternating
    within each zone (so each tier has nodes in every zone, and at the smallest size, ten
    nodes, five of each: enough for five replicas at one per node)."""
    zone, rank = i % ZONES, i // ZONES
    return {"zone": f"zone-{zone:02d}", "tier": "core" if (zone + rank) % 2 == 0 else "edge"}


def deployment_rules(i: int) -> PlacementRules:
    """Deployment i (0-based): its selector by i, spread over zones, at most 1 or 2 per node."""
    return PlacementRules.of(SELECTORS[i % len(SELECTORS)], "zone", 1 + i % 2)


def chunks(count: int) -> Iterator[int]:
    done, k = 0, 0
    while done < count:
        step = min(CHUNKS[min(k, len(CHUNKS) - 1)], count - done)
        yield step
        done, k = done + step, k + 1


def broken_rules(
    nodes: Mapping[uuid.UUID, Node],
    placed: Mapping[int, Iterable[uuid.UUID]],
) -> dict[str, int]:
    """Deployments (by index) whose placements break their selector, spread label or cap, or
    whose zone skew is above 1 (every zone has room in this fog): counts per kind."""
    broken: Counter[str] = Counter()
    zones_of: dict[frozenset[tuple[str, str]], set[str]] = {}
    for i, node_ids in placed.items():
        rules = deployment_rules(i)
        on = Counter(node_ids)
        if any(not rules.matches(nodes[n].labels) for n in on):
            broken["selector"] += 1
        if rules.max_per_node is not None and any(c > rules.max_per_node for c in on.values()):
            broken["max_per_node"] += 1
        if rules.spread_by is None:
            continue
        if rules.node_selector not in zones_of:
            zones_of[rules.node_selector] = {
                label_value(n.labels, rules.spread_by) or ""
                for n in nodes.values()
                if rules.matches(n.labels)
            }
        per_zone = Counter(dict.fromkeys(zones_of[rules.node_selector], 0))
        for n, c in on.items():
            per_zone[label_value(nodes[n].labels, rules.spread_by) or ""] += c
        if max(per_zone.values()) - min(per_zone.values()) > 1:
            broken["zone_skew"] += 1
    return dict(broken)


def labelled_node(i: int, node_id: uuid.UUID, cpu_cores: float, memory_mb: int) -> Node:
    """Node i (1-based) as the scheduler sees it once probed, with its labels."""
    return Node(
        id=node_id,
        name=f"node-{i:04d}",
        docker_url=f"hollow://node-{i:04d}",
        status=NodeStatus.READY,
        cpu_cores=cpu_cores,
        memory_mb=memory_mb,
        labels=frozenset(node_labels(i).items()),
    )


def labelled_nodes(count: int, cpu_cores: float, memory_mb: int) -> list[Node]:
    return [labelled_node(i, uuid.uuid4(), cpu_cores, memory_mb) for i in range(1, count + 1)]


def _schedule_all(
    nodes: list[Node], deployments: int, replicas: int, request: Resources, rules: bool
) -> tuple[float, dict[int, list[uuid.UUID]], int]:
    index = NodeIndex(nodes, {})
    placed: dict[int, list[uuid.UUID]] = defaultdict(list)
    unplaced = 0
    t0 = time.perf_counter()
    for i in range(deployments):
        placement = deployment_rules(i) if rules else NO_RULES
        spread: Counter[uuid.UUID] = Counter()
        for step in chunks(replicas):
            result = index.schedule(
                [uuid.uuid4() for _ in range(step)], request, spread, rules=placement
            )
            for p in result.placements:
                spread[p.node_id] += 1
                placed[i].append(p.node_id)
            unplaced += step - len(result.placements)
    return time.perf_counter() - t0, placed, unplaced


def scheduler_alone(
    nodes: int, deployments: int, replicas: int, request: Resources, node: tuple[float, int]
) -> dict[str, Any]:
    """Every replica of the fog placed by one `NodeIndex`, plain and with rules, replicas/s
    each (the plain pass first, then the rules pass, on fresh indexes)."""
    fog = labelled_nodes(nodes, *node)
    by_id = {n.id: n for n in fog}
    out: dict[str, Any] = {}
    for name, rules in (("plain", False), ("rules", True)):
        seconds, placed, unplaced = _schedule_all(fog, deployments, replicas, request, rules)
        total = sum(len(v) for v in placed.values())
        out[name] = {
            "seconds": round(seconds, 3),
            "replicas_placed": total,
            "unplaced": unplaced,
            "replicas_per_second": round(total / seconds, 1) if seconds else None,
            "broken": broken_rules(by_id, placed) if rules else {},
        }
    return out
