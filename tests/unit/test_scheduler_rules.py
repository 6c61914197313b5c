"""Placement rules in the scheduler: the selector, spread label and per-node cap as filters
with their counted reasons, spreading over a label's values, and the nodes `fitting` offers
the rebalance decision; hypothesis for never breaking a rule and for zone skew."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import Node, NodeStatus, Resources
from controller.node_index import NodeIndex
from controller.placement import PlacementCache
from controller.placement_rules import PlacementRules, label_value
from controller.scheduler import explain, schedule
from tests.unit.factories import node
from tests.unit.memstore import MemoryStore

IDS = [uuid.UUID(int=i) for i in range(200)]
SMALL = Resources(0.5, 512)


def zoned(name: str, zone: str | None, **kw: object) -> Node:
    labels = {"fog.io/arch": "amd64"} | ({"zone": zone} if zone is not None else {})
    return node(name, labels=frozenset(labels.items()), **kw)


def per_zone(nodes: list[Node], placements: object) -> Counter[str | None]:
    by_id = {n.id: n for n in nodes}
    return Counter(
        label_value(by_id[p.node_id].labels, "zone")
        for p in placements  # type: ignore[attr-defined]
    )


def test_the_issue_reason_counts_each_node_once_for_its_first_rule() -> None:
    a1 = zoned("a1", "a", mem=1024)  # holds one already: at its cap before its memory counts
    a2 = zoned("a2", "a", mem=256)
    others = [zoned("b1", "b"), zoned("b2", "b"), zoned("c1", "c", mem=256)]
    nodes = [a1, a2, *others]
    rules = PlacementRules.of({"zone": "a"}, max_per_node=1)
    result = schedule(IDS[:1], SMALL, nodes, {}, {a1.id: 1}, rules=rules)
    assert result.placements == ()
    assert result.reason == (
        "0/5 nodes fit: 3 node selector zone=a not matched, 1 max 1 per node, 1 insufficient memory"
    )
    index = NodeIndex(nodes, {})
    assert index.schedule(IDS[:1], SMALL, {a1.id: 1}, rules=rules) == result


def test_a_selector_with_two_pairs_needs_both() -> None:
    arm_a = node("arm-a", labels=frozenset({("zone", "a"), ("fog.io/arch", "arm64")}))
    amd_a = node("amd-a", labels=frozenset({("zone", "a"), ("fog.io/arch", "amd64")}))
    rules = PlacementRules.of({"zone": "a", "fog.io/arch": "arm64"})
    result = schedule(IDS[:3], SMALL, [amd_a, arm_a], {}, {}, rules=rules)
    assert {p.node_id for p in result.placements} == {arm_a.id}
    assert not result.unplaced
    assert explain([amd_a], SMALL, {}, rules=rules) == (
        "0/1 nodes fit: 1 node selector fog.io/arch=arm64,zone=a not matched"
    )


def test_nodes_without_the_spread_label_are_not_used() -> None:
    nodes = [zoned("a1", "a"), zoned("bare", None)]
    rules = PlacementRules.of(spread_by="zone", max_per_node=2)
    result = schedule(IDS[:3], SMALL, nodes, {}, {}, rules=rules)
    assert [p.node_id for p in result.placements] == [nodes[0].id] * 2
    assert result.reason == "0/2 nodes fit: 1 max 2 per node, 1 missing label zone"


def test_not_ready_and_cordoned_come_before_the_rules() -> None:
    nodes = [zoned("down", "b", status=NodeStatus.NOT_READY), zoned("cordoned", "b")]
    nodes[1] = node("cordoned", unschedulable=True)
    rules = PlacementRules.of({"zone": "a"})
    assert explain(nodes, SMALL, {}, rules=rules) == "0/2 nodes fit: 1 not ready, 1 unschedulable"


def test_max_per_node_caps_each_node_and_leaves_the_rest_pending() -> None:
    nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("a3", "a")]
    rules = PlacementRules.of(max_per_node=1)
    result = schedule(IDS[:4], SMALL, nodes, {}, {}, rules=rules)
    assert sorted(Counter(p.node_id for p in result.placements).values()) == [1, 1, 1]
    assert result.reason == "0/3 nodes fit: 3 max 1 per node"


def test_replicas_spread_over_zones_before_nodes() -> None:
    """Zone a has three nodes, zone b one: by node alone b would get a quarter."""
    nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("a3", "a"), zoned("b1", "b")]
    rules = PlacementRules.of(spread_by="zone")
    result = schedule(IDS[:4], SMALL, nodes, {}, {}, rules=rules)
    assert per_zone(nodes, result.placements) == {"a": 2, "b": 2}
    # Within zone a, by node: two different nodes.
    assert len({p.node_id for p in result.placements if p.node_id != nodes[3].id}) == 2


def test_replicas_already_in_a_zone_steer_the_next_to_the_others() -> None:
    nodes = [zoned("a1", "a"), zoned("b1", "b"), zoned("c1", "c")]
    rules = PlacementRules.of(spread_by="zone")
    result = schedule(IDS[:3], SMALL, nodes, {}, {nodes[0].id: 2}, rules=rules)
    assert per_zone(nodes, result.placements) == {"b": 2, "c": 1}


def test_replicas_outside_the_selector_do_not_count_for_the_spread() -> None:
    """A replica on a node the selector no longer matches is on its way out (the planner
    replaces it): zone a must not be treated as holding one."""
    old = node("old-a", labels=frozenset({("zone", "a")}))
    nodes = [old, *(zoned(f"{z}1", z) for z in "ab")]
    rules = PlacementRules.of({"fog.io/arch": "amd64"}, spread_by="zone")
    result = schedule(IDS[:2], SMALL, nodes, {}, {old.id: 1}, rules=rules)
    assert per_zone(nodes, result.placements) == {"a": 1, "b": 1}


def test_a_full_zone_leaves_the_rest_to_the_others_rather_than_pending() -> None:
    nodes = [zoned("a1", "a", mem=1024), zoned("b1", "b"), zoned("c1", "c")]
    rules = PlacementRules.of(spread_by="zone")
    result = schedule(IDS[:8], SMALL, nodes, {}, {}, rules=rules)
    assert not result.unplaced
    assert per_zone(nodes, result.placements) == {"a": 2, "b": 3, "c": 3}


def test_fitting_offers_nodes_by_capacity_ports_selector_and_label_not_the_cap() -> None:
    full = zoned("full", "a", mem=512)
    nodes = [zoned("a1", "a"), full, zoned("b1", "b"), zoned("bare", None)]
    index = NodeIndex(nodes, {full.id: SMALL})
    index.schedule(IDS[:1], SMALL, {}, rules=PlacementRules.of(max_per_node=1))  # lands on a1
    rules = PlacementRules.of({"zone": "a"}, max_per_node=1)
    assert index.fitting(SMALL, rules) == {nodes[0].id}
    spread = PlacementRules.of(spread_by="zone")
    assert index.fitting(SMALL, spread) == {nodes[0].id, nodes[2].id}
    web = frozenset({(8080, "tcp")})
    assert index.fitting(SMALL, spread, web, excluded={nodes[2].id}) == {nodes[0].id}


async def test_the_cache_reads_usage_before_saying_what_fits() -> None:
    nodes = (zoned("a1", "a", mem=1024), zoned("b1", "b"))
    cache = PlacementCache(MemoryStore(), lambda: nodes)
    rules = PlacementRules.of(spread_by="zone")
    assert await cache.fitting(SMALL, rules) == {nodes[0].id, nodes[1].id}
    placed = await cache.choose(IDS[:4], SMALL, Counter(), (), rules=rules)
    assert per_zone(list(nodes), placed.placements) == {"a": 2, "b": 2}  # a1 is full now
    assert await cache.fitting(SMALL, rules) == {nodes[1].id}


# --- invariants -----------------------------------------------------------------------------

ZONES = ["a", "b", "c", "d"]


@st.composite
def labelled_fogs(draw: st.DrawFn) -> tuple[list[Node], PlacementRules, dict[uuid.UUID, int]]:
    nodes = []
    for i in range(draw(st.integers(1, 10))):
        labels = {"zone": draw(st.sampled_from(ZONES))} if draw(st.integers(0, 5)) else {}
        if draw(st.booleans()):
            labels["tier"] = draw(st.sampled_from(["edge", "core"]))
        nodes.append(
            node(
                f"n{i}",
                cpu=draw(st.sampled_from([1.0, 2.0, 4.0])),
                mem=draw(st.sampled_from([1024, 2048, 4096])),
                status=draw(st.sampled_from([NodeStatus.READY] * 4 + [NodeStatus.NOT_READY])),
                labels=frozenset(labels.items()),
            )
        )
    rules = PlacementRules.of(
        draw(st.sampled_from([{}, {"tier": "edge"}, {"zone": "a"}])),
        draw(st.sampled_from([None, "zone"])),
        draw(st.sampled_from([None, 1, 2, 3])),
    )
    spread = {n.id: draw(st.integers(0, 2)) for n in nodes if draw(st.integers(0, 3)) == 0}
    return nodes, rules, spread


@settings(max_examples=400, deadline=None)
@given(labelled_fogs(), st.integers(0, 30))
def test_placements_never_break_a_selector_or_a_cap(fog, count: int) -> None:  # type: ignore[no-untyped-def]
    nodes, rules, spread = fog
    result = schedule(IDS[:count], SMALL, nodes, {}, spread, rules=rules)
    after = Counter(spread) + Counter(p.node_id for p in result.placements)
    by_id = {n.id: n for n in nodes}
    for p in result.placements:
        n = by_id[p.node_id]
        assert rules.matches(n.labels)
        assert rules.spread_by is None or label_value(n.labels, rules.spread_by) is not None
        assert rules.max_per_node is None or after[n.id] <= rules.max_per_node
    assert result.unplaced == (len(result.placements) < count)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.integers(0, 40),
    st.sampled_from([None, 1, 3]),
)
def test_zone_skew_is_at_most_one_while_every_zone_has_room(
    nodes_per_zone: list[int], count: int, cap: int | None
) -> None:
    nodes = [
        zoned(f"{zone}{i}", zone, cpu=2, mem=2048)  # four replicas of SMALL each
        for zone, n in zip(ZONES, nodes_per_zone, strict=False)
        for i in range(n)
    ]
    per_node = 4 if cap is None else min(cap, 4)
    room = min(nodes_per_zone) * per_node * len(nodes_per_zone)
    rules = PlacementRules.of(spread_by="zone", max_per_node=cap)
    result = schedule(IDS[:count], SMALL, nodes, {}, {}, rules=rules)
    zones = per_zone(nodes, result.placements)
    counts = [zones[z] for z in ZONES[: len(nodes_per_zone)]]
    if count <= room:  # every zone has room for its even share
        assert not result.unplaced
        assert max(counts) - min(counts) <= 1
    else:  # the fuller zones take the rest, up to what they hold
        assert len(result.placements) == min(count, sum(nodes_per_zone) * per_node)


@pytest.mark.parametrize("selector", [{}, {"zone": "b"}])
def test_the_index_answers_fitting_as_refusals_do(selector: dict[str, str]) -> None:
    nodes = [zoned("a1", "a"), zoned("b1", "b"), zoned("b2", "b", status=NodeStatus.NOT_READY)]
    rules = PlacementRules.of(selector)
    index = NodeIndex(nodes, {})
    expected = {n.id for n in nodes if n.status is NodeStatus.READY and rules.matches(n.labels)}
    assert index.fitting(SMALL, rules) == expected
