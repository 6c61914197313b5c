"""Node lifecycle decisions as pure functions: readiness after probes, eviction, and the
full-disruption halt; and the engine's own labels the monitor writes to the node's row."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

from structlog.testing import capture_logs

from controller.model import NodeRecord, NodeStatus
from controller.nodes import NodeMonitor, evictions, next_status
from controller.runtime.hollow import HollowNode, HollowRuntime, hollow_url
from controller.settings import Settings
from tests.unit.factories import T0
from tests.unit.memstore import MemoryStore

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


# --- engine labels (issue 15) --------------------------------------------------------------


async def _monitor(
    labels: tuple[tuple[str, str], ...], spec: HollowNode
) -> tuple[NodeMonitor, MemoryStore, HollowRuntime, uuid.UUID]:
    store, runtime = MemoryStore(), HollowRuntime(clock=lambda: T0)
    runtime.add_node(hollow_url("edge"), spec)
    node_id = uuid.uuid5(uuid.NAMESPACE_DNS, "edge")
    store.node_rows[node_id] = NodeRecord(
        node_id, "edge", hollow_url("edge"), NodeStatus.READY, labels=labels
    )
    settings = Settings(database_url="sqlite+aiosqlite:///unused.db", register_local_node=False)
    return NodeMonitor(store, runtime, settings, lambda: T0), store, runtime, node_id


async def test_a_probe_writes_the_engines_labels_beside_the_operators_once() -> None:
    monitor, store, _, node_id = await _monitor((("zone", "a"),), HollowNode(arch="aarch64"))

    await monitor.refresh()
    await monitor.refresh()

    assert dict(store.node_rows[node_id].labels) == {
        "zone": "a",
        "fog.io/arch": "arm64",  # as Go and image indexes name it
        "fog.io/os": "linux",
    }
    assert store.calls["set_engine_labels"] == 1, "written when they differ, not every probe"
    assert monitor.records[node_id].labels == store.node_rows[node_id].labels
    (node,) = monitor.nodes()
    assert ("fog.io/arch", "arm64") in node.labels


async def test_an_operators_value_under_fog_io_is_replaced_with_a_warning() -> None:
    monitor, store, runtime, node_id = await _monitor((), HollowNode())
    await monitor.refresh()
    row = store.node_rows[node_id]
    store.node_rows[node_id] = replace(
        row, labels=tuple(sorted({**dict(row.labels), "fog.io/arch": "arm64"}.items()))
    )

    with capture_logs() as logs:
        await monitor.refresh()

    assert dict(store.node_rows[node_id].labels)["fog.io/arch"] == "amd64"
    (warning,) = [e for e in logs if e["event"] == "node_label_reserved"]
    assert (warning["node"], warning["label"], warning["value"], warning["engine_value"]) == (
        "edge",
        "fog.io/arch",
        "arm64",
        "amd64",
    )

    # The engine itself changing (another machine behind the same URL) is no one's mistake.
    runtime.add_node(hollow_url("edge"), HollowNode(arch="aarch64"))
    with capture_logs() as logs:
        await monitor.refresh()
    assert dict(store.node_rows[node_id].labels)["fog.io/arch"] == "arm64"
    assert [e["event"] for e in logs if e["event"].startswith("node_label")] == [
        "node_label_changed"
    ]
