"""The scheduler: filter, score, and the "0/N nodes fit" reason; hypothesis for never
overcommitting and for spreading one deployment evenly when capacity allows."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import ZERO, NodeStatus, Resources
from controller.node_index import NodeIndex
from controller.placement_rules import NO_RULES, PlacementRules
from controller.scheduler import Port, explain, hold, schedule
from tests.unit.factories import node

IDS = [uuid.UUID(int=i) for i in range(100)]
WEB = frozenset({(18080, "tcp")})
PORT_POOL = [(80, "tcp"), (80, "udp"), (443, "tcp"), (18080, "tcp")]
port_sets = st.frozensets(st.sampled_from(PORT_POOL), max_size=2)
# Node labels: a zone (sometimes none), a tier (sometimes none).
label_sets = st.builds(
    lambda zone, tier: frozenset(
        [*([("zone", zone)] if zone else []), *([("tier", tier)] if tier else [])]
    ),
    st.sampled_from([None, "a", "b", "c"]),
    st.sampled_from([None, "edge", "core"]),
)
rule_sets = st.one_of(
    st.just(NO_RULES),
    st.builds(
        PlacementRules.of,
        st.sampled_from([{}, {"tier": "edge"}, {"zone": "a"}, {"zone": "b", "tier": "core"}]),
        st.sampled_from([None, "zone", "tier"]),
        st.sampled_from([None, 1, 2]),
    ),
)


def test_six_replicas_spread_two_per_node() -> None:
    nodes = [node("a"), node("b"), node("c")]
    result = schedule(IDS[:6], Resources(0.5, 512), nodes, {}, {})
    assert not result.unplaced
    assert sorted(Counter(p.node_id for p in result.placements).values()) == [2, 2, 2]


def test_existing_replicas_of_the_deployment_steer_placement() -> None:
    a, b = node("a"), node("b")
    result = schedule(IDS[:1], Resources(0.5, 512), [a, b], {}, {a.id: 3})
    assert result.placements[0].node_id == b.id


def test_least_allocated_breaks_spread_ties() -> None:
    a, b = node("a"), node("b")
    usage = {a.id: Resources(3.0, 6000)}
    result = schedule(IDS[:1], Resources(0.5, 512), [a, b], usage, {})
    assert result.placements[0].node_id == b.id


def test_exhaustion_reports_reasons_like_kube_scheduler() -> None:
    nodes = [
        node("a", mem=1024),
        node("b", mem=1024),
        node("c", mem=1024),
        node("d", status=NodeStatus.NOT_READY),
        node("e", unschedulable=True),
    ]
    result = schedule(IDS[:4], Resources(0.5, 1024), nodes, {}, {})
    assert len(result.placements) == 3
    assert result.reason == "0/5 nodes fit: 3 insufficient memory, 1 not ready, 1 unschedulable"


def test_gpu_request_lands_only_on_gpu_node() -> None:
    nodes = [node("cpu1"), node("gpu1", gpu=2), node("cpu2")]
    result = schedule(IDS[:3], Resources(0.5, 512, gpu_units=1), nodes, {}, {})
    assert [p.node_id for p in result.placements] == [nodes[1].id, nodes[1].id]
    assert result.reason == "0/3 nodes fit: 3 insufficient gpu"


def test_storage_is_unconstrained_when_unknown() -> None:
    unknown, small = node("u"), node("s", storage_gb=1)
    result = schedule(IDS[:3], Resources(0.5, 512, storage_gb=100), [unknown, small], {}, {})
    assert {p.node_id for p in result.placements} == {unknown.id}


def test_a_node_that_refused_the_deployment_is_passed_over_and_counted() -> None:
    a, b = node("a"), node("b")
    result = schedule(IDS[:2], Resources(0.5, 512), [a, b], {}, {}, frozenset({a.id}))
    assert {p.node_id for p in result.placements} == {b.id}
    refused = schedule(IDS[:1], Resources(0.5, 512), [a, b], {}, {}, frozenset({a.id, b.id}))
    assert refused.placements == ()
    assert refused.reason == "0/2 nodes fit: 2 refused this deployment"


def test_a_host_port_is_held_by_one_replica_per_node() -> None:
    nodes = [node("a"), node("b"), node("c")]
    result = schedule(IDS[:4], Resources(0.5, 512), nodes, {}, {}, ports=WEB)
    assert sorted(Counter(p.node_id for p in result.placements).values()) == [1, 1, 1]
    assert result.reason == "0/3 nodes fit: 3 host port 18080/tcp in use"


def test_ports_of_containers_not_ours_and_of_other_deployments_count_like_kube_says() -> None:
    stranger = node("a", foreign_ports=WEB)  # a container we did not start publishes 18080
    ours = node("b")  # another deployment's replica publishes 18080 here
    small = node("c", mem=256)
    nodes = [stranger, ours, small]
    held = {ours.id: Counter(WEB)}
    result = schedule(IDS[:1], Resources(0.5, 512), nodes, {}, {}, ports=WEB, held=held)
    assert result.placements == ()
    assert result.reason == "0/3 nodes fit: 2 host port 18080/tcp in use, 1 insufficient memory"
    index = NodeIndex(nodes, {}, held)
    assert index.schedule(IDS[:1], Resources(0.5, 512), {}, ports=WEB) == result
    # Another protocol or another port is free on both.
    udp = frozenset({(18080, "udp")})
    placed = index.schedule(IDS[:2], Resources(0.5, 512), {}, ports=udp)
    assert {p.node_id for p in placed.placements} == {stranger.id, ours.id}


def test_a_released_port_is_free_again_in_the_index() -> None:
    a = node("a")
    index = NodeIndex([a], {})
    assert len(index.schedule(IDS[:2], Resources(0.5, 512), {}, ports=WEB).placements) == 1
    index.add(a.id, Resources(0.5, 512), sign=-1, ports=WEB)  # its write failed: taken back
    assert index.schedule(IDS[2:3], Resources(0.5, 512), {}, ports=WEB).placements


def test_no_nodes_reason() -> None:
    assert explain([], Resources(1, 512), {}) == "0/0 nodes fit: no nodes registered"


@st.composite
def clusters(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    nodes = [
        node(
            f"n{i}",
            cpu=draw(st.sampled_from([1.0, 2.0, 4.0, 8.0])),
            mem=draw(st.sampled_from([1024, 2048, 8192])),
            gpu=draw(st.integers(0, 2)),
            status=draw(
                st.sampled_from([NodeStatus.READY, NodeStatus.READY, NodeStatus.NOT_READY])
            ),
        )
        for i in range(draw(st.integers(1, 6)))
    ]
    usage = {
        n.id: Resources(draw(st.sampled_from([0.0, 0.5, 1.0])), draw(st.sampled_from([0, 512])))
        for n in nodes
    }
    request = Resources(
        draw(st.sampled_from([0.5, 1.0, 1.5])),
        draw(st.sampled_from([512, 1024])),
        draw(st.integers(0, 1)),
    )
    return nodes, usage, request, draw(st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_never_overcommits(cluster) -> None:  # type: ignore[no-untyped-def]
    nodes, usage, request, count = cluster
    result = schedule(IDS[:count], request, nodes, usage, {})
    per_node = Counter(p.node_id for p in result.placements)
    for n in nodes:
        total = usage.get(n.id, ZERO)
        for _ in range(per_node[n.id]):
            total = total + request
        if per_node[n.id]:
            assert n.status is NodeStatus.READY
            assert total.cpu_cores <= n.cpu_cores + 1e-9
            assert total.memory_mb <= n.memory_mb
            assert total.gpu_units <= n.gpu_units
    assert result.unplaced == (len(result.placements) < count)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(0, 60))
def test_spread_differs_by_at_most_one_when_capacity_allows(n_nodes: int, count: int) -> None:
    nodes = [node(f"n{i}", cpu=64, mem=65536) for i in range(n_nodes)]
    result = schedule(IDS[:count], Resources(0.5, 512), nodes, {}, {})
    per_node = Counter(p.node_id for p in result.placements)
    counts = [per_node[n.id] for n in nodes]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == count


@st.composite
def call_sequences(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    """A fog of mixed nodes (ready, not ready, cordoned, draining, some with GPUs or a
    storage bound, some sharing a name's sort position, labelled by zone and tier or not)
    and a series of schedule calls, each for some deployment with its own spread, placement
    rules and nodes it excludes (refused too often), sometimes with usage freed in
    between."""
    count = draw(st.integers(1, 8))
    nodes = [
        node(
            f"n{draw(st.integers(0, 3))}-{i}",
            cpu=draw(st.sampled_from([1.0, 2.0, 4.0])),
            mem=draw(st.sampled_from([1024, 2048, 4096])),
            gpu=draw(st.integers(0, 2)),
            storage_gb=draw(st.sampled_from([None, 10, 20])),
            status=draw(st.sampled_from([NodeStatus.READY] * 3 + [NodeStatus.NOT_READY])),
            unschedulable=draw(st.booleans()) and draw(st.booleans()),
            draining=draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()),
            foreign_ports=draw(port_sets) if draw(st.integers(0, 3)) == 0 else frozenset(),
            labels=draw(label_sets),
        )
        for i in range(count)
    ]
    usage = {
        n.id: Resources(draw(st.sampled_from([0.0, 0.5])), draw(st.sampled_from([0, 512])))
        for n in nodes
        if draw(st.booleans())
    }
    requests = [
        Resources(0.5, 512),
        Resources(1.0, 256, 1, 0),
        Resources(0.25, 1024, 0, 5),
    ]
    calls = []
    for _ in range(draw(st.integers(1, 12))):
        spread = {n.id: draw(st.integers(0, 3)) for n in nodes if draw(st.integers(0, 3)) == 0}
        freed = draw(st.sampled_from([None, *range(count)]))
        excluded = frozenset(n.id for n in nodes if draw(st.integers(0, 4)) == 0)
        ports = draw(port_sets) if draw(st.booleans()) else frozenset()
        calls.append(
            (
                draw(st.sampled_from(requests)),
                draw(st.integers(0, 6)),
                spread,
                freed,
                excluded,
                ports,
                draw(rule_sets),
            )
        )
    return nodes, usage, calls


@settings(max_examples=400, deadline=None)
@given(call_sequences())
def test_the_node_index_places_exactly_as_schedule_does(case) -> None:  # type: ignore[no-untyped-def]
    """The reconciler's incremental index is an optimisation of `schedule()`, never a
    different policy: call after call, the same placements and the same refusal."""
    nodes, usage, calls = case
    index = NodeIndex(nodes, usage)
    used = {n.id: usage.get(n.id, ZERO) for n in nodes}
    held: dict[uuid.UUID, Counter[Port]] = {n.id: Counter() for n in nodes}
    for request, count, spread, freed, excluded, ports, rules in calls:
        if freed is not None:  # a replica stopped: usage goes down between calls
            gone = nodes[freed].id
            index.add(gone, Resources(0.5, 512), sign=-1)
            u = used[gone]
            used[gone] = Resources(
                max(u.cpu_cores - 0.5, 0.0), max(u.memory_mb - 512, 0), u.gpu_units, u.storage_gb
            )
        assert index.used == used
        expected = schedule(IDS[:count], request, nodes, used, spread, excluded, ports, held, rules)
        got = index.schedule(IDS[:count], request, spread, excluded, ports, rules)
        assert got == expected
        for p in expected.placements:
            used[p.node_id] = used[p.node_id] + request
            hold(held[p.node_id], ports)


@settings(max_examples=400, deadline=None)
@given(call_sequences(), st.randoms(use_true_random=False))
def test_never_two_holders_of_one_host_port_on_a_node_whatever_the_order(case, rnd) -> None:  # type: ignore[no-untyped-def]
    """Deployments publishing overlapping host ports, scheduled in any order (with releases
    between calls): no node ever has two of our replicas on one port, nor one of ours on a
    port a container that is not ours holds."""
    nodes, usage, calls = case
    rnd.shuffle(calls)
    by_id = {n.id: n for n in nodes}
    index = NodeIndex(nodes, usage)
    placed: list[tuple[uuid.UUID, frozenset[Port]]] = []
    for request, count, spread, freed, excluded, ports, rules in calls:
        if freed is not None and placed:  # a replica stopped: its ports are released
            node_id, gone = placed.pop(freed % len(placed))
            index.add(node_id, request, sign=-1, ports=gone)
        result = index.schedule(IDS[:count], request, spread, excluded, ports, rules)
        placed += [(p.node_id, ports) for p in result.placements]
        holders: Counter[tuple[uuid.UUID, Port]] = Counter(
            (node_id, port) for node_id, ports_held in placed for port in ports_held
        )
        assert all(n == 1 for n in holders.values()), holders
        assert not any(port in by_id[node_id].foreign_ports for node_id, port in holders)
        if ports and result.unplaced:
            assert result.reason is not None
