"""Node lifecycle decisions as pure functions: readiness after probes, eviction, and the
full-disruption halt."""

from __future__ import annotations

import uuid
from datetime import timedelta

from controller.model import NodeRecord, NodeStatus
from controller.nodes import evictions, next_status
from tests.unit.factories import T0

GRACE, EVICTION = timedelta(seconds=40), timedelta(seconds=300)


def record(name: str, status: NodeStatus, silent_for: float | None) -> NodeRecord:
    return NodeRecord(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        docker_url=f"unix:///{name}.sock",
        status=status,
        last_heartbeat_at=None if silent_for is None else T0 - timedelta(seconds=silent_for),
    )


def test_readiness_follows_probes_and_grace() -> None:
    fresh = record("a", NodeStatus.UNKNOWN, None)
    assert next_status(fresh, True, now=T0, grace=GRACE) is NodeStatus.READY
    assert next_status(fresh, False, now=T0, grace=GRACE) is NodeStatus.UNKNOWN
    recent = record("b", NodeStatus.READY, 10)
    assert next_status(recent, False, now=T0, grace=GRACE) is NodeStatus.READY
    stale = record("c", NodeStatus.READY, 41)
    assert next_status(stale, False, now=T0, grace=GRACE) is NodeStatus.NOT_READY


def test_a_node_silent_past_grace_and_eviction_is_lost() -> None:
    nodes = [
        record("up1", NodeStatus.READY, 1),
        record("up2", NodeStatus.READY, 1),
        record("down-long", NodeStatus.NOT_READY, 341),
        record("down-short", NodeStatus.NOT_READY, 100),
    ]
    decision = evictions(nodes, now=T0, grace=GRACE, eviction=EVICTION, threshold=0.55)
    assert not decision.halted
    assert [n.name for n in decision.lost] == ["down-long"]


def test_most_nodes_down_halts_eviction() -> None:
    nodes = [record(f"n{i}", NodeStatus.NOT_READY, 1000) for i in range(2)]
    nodes.append(record("up", NodeStatus.READY, 1))
    decision = evictions(nodes, now=T0, grace=GRACE, eviction=EVICTION, threshold=0.55)
    assert decision.halted
    assert decision.reason == "2/3 nodes not ready (> 55%)"


def test_eviction_clocks_restart_when_a_disruption_ends() -> None:
    """Nodes still coming back after a full disruption get a fresh grace, not an eviction."""
    nodes = [
        record("up1", NodeStatus.READY, 1),
        record("up2", NodeStatus.READY, 1),
        record("slow", NodeStatus.NOT_READY, 1000),
    ]
    reset = T0 - timedelta(seconds=5)
    decision = evictions(
        nodes, now=T0, grace=GRACE, eviction=EVICTION, threshold=0.55, clock_reset_at=reset
    )
    assert decision.lost == ()
    later = T0 + GRACE + EVICTION
    decision = evictions(
        nodes, now=later, grace=GRACE, eviction=EVICTION, threshold=0.55, clock_reset_at=reset
    )
    assert [n.name for n in decision.lost] == ["slow"]
