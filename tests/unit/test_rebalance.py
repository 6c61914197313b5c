"""The rebalancing decision (controller.rebalance), over plain values: examples, and
hypothesis for the invariants the issue names: never a move that breaks a selector or a cap,
the skew only decreases, and no move at all when the spread is balanced within 1."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import Node, NodeStatus, Replica, ReplicaStatus
from controller.placement_rules import NO_RULES, PlacementRules
from controller.rebalance import Move, eligible, group_of, next_move, settled
from tests.unit.factories import T0, deployment, node, replica

RUNNING = ReplicaStatus.RUNNING


def spread(counts: Sequence[tuple[Node, int]]) -> list[Replica]:
    """`count` running replicas on each node, numbered in order (later ones are newer)."""
    out: list[Replica] = []
    for n, count in counts:
        for _ in range(count):
            out.append(replica(RUNNING, n, n=len(out)))
    return out


N1, N2, N3 = node("n1"), node("n2"), node("n3")
ALL = frozenset({N1.id, N2.id, N3.id})


def test_returned_node_takes_the_newest_replica_of_the_fullest_node() -> None:
    rs = spread([(N1, 3), (N2, 3), (N3, 0)])
    move = next_move(NO_RULES, rs, [N1, N2, N3], ALL)
    assert move == Move(rs[2].id, N1.id, N3.id)


def test_balanced_within_one_moves_nothing_and_does_not_ask_the_cache() -> None:
    def fitting() -> frozenset[uuid.UUID]:
        raise AssertionError("the cache is not needed for a balanced spread")

    assert next_move(NO_RULES, spread([(N1, 3), (N2, 2), (N3, 2)]), [N1, N2, N3], fitting) is None


def test_no_move_when_the_empty_node_cannot_take_one() -> None:
    rs = spread([(N1, 4), (N2, 4), (N3, 0)])
    assert next_move(NO_RULES, rs, [N1, N2, N3], {N1.id, N2.id}) is None


def test_cordoned_or_not_ready_node_is_not_a_target() -> None:
    cordoned = replace(N3, unschedulable=True)
    rs = spread([(N1, 3), (N2, 3)])
    assert next_move(NO_RULES, rs, [N1, N2, cordoned], ALL) is None
    down = replace(N3, status=NodeStatus.NOT_READY)
    assert next_move(NO_RULES, rs, [N1, N2, down], ALL) is None


def test_selector_and_cap_are_kept() -> None:
    a1 = node("a1", labels=frozenset({("zone", "a")}))
    a2 = node("a2", labels=frozenset({("zone", "a")}))
    b1 = node("b1", labels=frozenset({("zone", "b")}))
    rules = PlacementRules.of({"zone": "a"})
    rs = spread([(a1, 4), (a2, 0)])
    nodes = [a1, a2, b1]
    fits = {a1.id, a2.id, b1.id}
    assert next_move(rules, rs, nodes, fits) == Move(rs[3].id, a1.id, a2.id)
    capped = PlacementRules.of(max_per_node=2)
    # b1 is the emptiest, but with max 2 per node a2 (at 2) cannot take a third.
    rs = spread([(a1, 4), (a2, 2), (b1, 2)])
    assert next_move(capped, rs, nodes, fits) is None


def test_spread_by_moves_between_zones_first_then_within() -> None:
    a1 = node("a1", labels=frozenset({("zone", "a")}))
    a2 = node("a2", labels=frozenset({("zone", "a")}))
    b1 = node("b1", labels=frozenset({("zone", "b")}))
    bare = node("bare")  # no zone label: not used with spread_by
    rules = PlacementRules.of(spread_by="zone")
    nodes = [a1, a2, b1, bare]
    fits = {n.id for n in nodes}
    rs = spread([(a1, 2), (a2, 2), (b1, 0)])
    move = next_move(rules, rs, nodes, fits)
    assert move is not None
    assert move.to_node == b1.id
    assert move.from_node in (a1.id, a2.id)
    # Zones balanced (2/2), but zone a is 2/0 over its nodes.
    rs = spread([(a1, 2), (a2, 0), (b1, 2)])
    assert next_move(rules, rs, nodes, fits) == Move(rs[1].id, a1.id, a2.id)


def test_settled_wants_a_whole_quiet_deployment() -> None:
    rs = spread([(N1, 2), (N2, 1)])
    d = deployment(3, *rs, placement=NO_RULES)
    assert settled(d, ready=3)
    assert not settled(d, ready=2)
    assert not settled(replace(d, target_replicas=4), ready=3)
    assert not settled(replace(d, placement=PlacementRules(rebalance=False)), ready=3)
    starting = replace(rs[0], status=ReplicaStatus.STARTING)
    assert not settled(replace(d, replicas=(starting, *rs[1:])), ready=3)
    stopping = replica(ReplicaStatus.STOPPING, N3, n=9)
    assert not settled(replace(d, replicas=(*rs, stopping)), ready=3)
    assert not settled(replace(d, deleted_at=T0), ready=3)


# --- invariants ------------------------------------------------------------------------------

ZONES = ("a", "b", "c")
STATUSES = (NodeStatus.READY, NodeStatus.READY, NodeStatus.NOT_READY)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[PlacementRules, list[Node], list[Replica], set[uuid.UUID]]:
    count = draw(st.integers(min_value=1, max_value=6))
    nodes: list[Node] = []
    for i in range(count):
        labels: set[tuple[str, str]] = set()
        zone = draw(st.sampled_from((*ZONES, None)))
        if zone is not None:
            labels.add(("zone", zone))
        if draw(st.booleans()):
            labels.add(("tier", "edge"))
        nodes.append(
            node(
                f"n{i}",
                labels=frozenset(labels),
                status=draw(
                    st.sampled_from((NodeStatus.READY, NodeStatus.READY, NodeStatus.NOT_READY))
                ),
                unschedulable=draw(st.booleans()) and draw(st.booleans()),
            )
        )
    rules = PlacementRules.of(
        {"tier": "edge"} if draw(st.booleans()) else None,
        "zone" if draw(st.booleans()) else None,
        draw(st.one_of(st.none(), st.integers(min_value=1, max_value=3))),
    )
    counts = [(n, draw(st.integers(min_value=0, max_value=5))) for n in nodes]
    fits = {n.id for n in nodes if draw(st.booleans()) or draw(st.booleans())}
    return rules, nodes, spread(counts), fits


def _counts(
    rules: PlacementRules, nodes: Sequence[Node], rs: Sequence[Replica]
) -> tuple[dict[str, int], dict[uuid.UUID, int]]:
    open_nodes = [n for n in nodes if eligible(n, rules)]
    per_node = Counter(r.node_id for r in rs)
    groups: dict[str, int] = {}
    nodes_of: dict[uuid.UUID, int] = {}
    for n in open_nodes:
        g = group_of(n, rules)
        groups[g] = groups.get(g, 0) + per_node[n.id]
        nodes_of[n.id] = per_node[n.id]
    return groups, nodes_of


def _apply(rs: Sequence[Replica], move: Move) -> list[Replica]:
    return [replace(r, node_id=move.to_node) if r.id == move.replica_id else r for r in rs]


def _sumsq(values: Sequence[int]) -> int:
    return sum(v * v for v in values)


@settings(max_examples=400, deadline=None)
@given(fleets())
def test_a_move_keeps_the_rules_and_lowers_the_skew(
    world: tuple[PlacementRules, list[Node], list[Replica], set[uuid.UUID]],
) -> None:
    rules, nodes, rs, fits = world
    by_id = {n.id: n for n in nodes}
    move = next_move(rules, rs, nodes, fits)
    assert next_move(rules, rs, by_id, fits) == move  # nodes by id: the same answer
    groups, per_node = _counts(rules, nodes, rs)
    if move is None:
        return
    target = by_id[move.to_node]
    assert eligible(target, rules)
    assert rules.matches(target.labels)
    assert move.to_node in fits
    if rules.max_per_node is not None:
        assert per_node[move.to_node] + 1 <= rules.max_per_node
    moved = next(r for r in rs if r.id == move.replica_id)
    assert moved.node_id == move.from_node
    assert eligible(by_id[move.from_node], rules)
    after_groups, after_nodes = _counts(rules, nodes, _apply(rs, move))
    span = max(groups.values()) - min(groups.values())
    assert max(after_groups.values()) - min(after_groups.values()) <= span
    before = (_sumsq(list(groups.values())), _sumsq(list(per_node.values())))
    after = (_sumsq(list(after_groups.values())), _sumsq(list(after_nodes.values())))
    assert after < before


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_no_move_when_balanced_within_one(
    world: tuple[PlacementRules, list[Node], list[Replica], set[uuid.UUID]],
) -> None:
    rules, nodes, rs, fits = world
    groups, per_node = _counts(rules, nodes, rs)
    if not groups:
        assert next_move(rules, rs, nodes, fits) is None
        return
    by_group: dict[str, list[int]] = {}
    for n in nodes:
        if n.id in per_node:
            by_group.setdefault(group_of(n, rules), []).append(per_node[n.id])
    balanced = max(groups.values()) - min(groups.values()) <= 1 and all(
        max(v) - min(v) <= 1 for v in by_group.values()
    )
    if balanced:
        assert next_move(rules, rs, nodes, fits) is None


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_moves_run_out(
    world: tuple[PlacementRules, list[Node], list[Replica], set[uuid.UUID]],
) -> None:
    """Moving again and again ends (each move lowers a bounded measure): no churn."""
    rules, nodes, rs, fits = world
    for _ in range(len(rs) * len(rs) + 1):
        move = next_move(rules, rs, nodes, fits)
        if move is None:
            return
        rs = _apply(rs, move)
    raise AssertionError("rebalancing did not settle")
