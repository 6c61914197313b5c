"""The engine's own labels reach the node's row: `fog.io/arch`, `fog.io/os` and `fog.io/engine`
as a real Docker or Podman engine reports them, merged into `nodes.labels` beside the
operator's (issue 15), on both backends; and the store's merge itself, which must never lose
an operator's label to a stale copy of the row.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.nodes import NodeMonitor
from controller.placement_rules import engine_labels
from controller.runtime.docker import DockerRuntime
from controller.store import Store
from schema import engine as engine_mod
from tests.conftest import KindClusters
from tests.harness.engines import DEFAULT_ENGINE_KIND
from tests.harness.fleet import Operator, settings_for_tests


async def _column(engine: AsyncEngine, node: uuid.UUID, column: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(text(f"SELECT {column} FROM nodes WHERE id = :n"), {"n": str(node)})
        ).scalar_one()


async def _labels(engine: AsyncEngine, node: uuid.UUID) -> Any:
    raw = await _column(engine, node, "labels")
    return json.loads(raw) if isinstance(raw, str) else raw


async def _set_labels(engine: AsyncEngine, node: uuid.UUID, labels: str) -> None:
    async with engine_mod.writer(engine).begin() as conn:
        await conn.execute(
            text("UPDATE nodes SET labels = :l WHERE id = :n"), {"l": labels, "n": str(node)}
        )


async def test_the_merge_keeps_the_operators_labels_and_says_what_it_replaced(
    engine: AsyncEngine,
) -> None:
    op, store = Operator(engine), Store(engine)
    node = await op.add_node("edge-1", "unix:///x.sock")
    await _set_labels(engine, node, '{"zone": "a", "fog.io/arch": "arm64"}')
    (stale,) = await store.nodes()
    # An operator's edit after the monitor's read: the merge must be made on the row as it
    # is at write time, not on the copy the monitor holds.
    await _set_labels(engine, node, '{"zone": "b", "rack": "7", "fog.io/arch": "arm64"}')
    assert dict(stale.labels)["zone"] == "a"

    replaced = await store.set_engine_labels(
        node, {"fog.io/arch": "amd64", "fog.io/os": "linux", "fog.io/engine": "docker"}
    )

    assert replaced == {"fog.io/arch": "arm64"}
    assert await _labels(engine, node) == {
        "zone": "b",
        "rack": "7",
        "fog.io/arch": "amd64",
        "fog.io/os": "linux",
        "fog.io/engine": "docker",
    }
    # Nothing to change: nothing replaced, and the row is not rewritten.
    stamp = await _column(engine, node, "updated_at")
    assert await store.set_engine_labels(node, {"fog.io/os": "linux"}) == {}
    assert await _column(engine, node, "updated_at") == stamp
    assert await store.set_engine_labels(uuid.uuid4(), {"fog.io/os": "linux"}) is None


async def test_labels_that_are_no_json_object_are_left_alone(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    node = await op.add_node("edge-1", "unix:///x.sock")
    await _set_labels(engine, node, '["zone=a"]')
    assert await store.set_engine_labels(node, {"fog.io/os": "linux"}) is None
    assert await _labels(engine, node) == ["zone=a"]


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    created = DockerRuntime(settings_for_tests("sqlite+aiosqlite:///unused.db"))
    try:
        yield created
    finally:
        await created.close()


@pytest.mark.docker
@pytest.mark.parametrize(
    ("kind", "flavour"), [(DEFAULT_ENGINE_KIND, "docker"), ("podman", "podman")]
)
async def test_a_probe_writes_what_the_engine_says_of_itself_into_the_nodes_labels(
    db_url: str,
    engine: AsyncEngine,
    kind_clusters: KindClusters,
    runtime: DockerRuntime,
    kind: str,
    flavour: str,
) -> None:
    cluster = kind_clusters.get(kind)
    cluster.ensure_running()
    op, store = Operator(engine), Store(engine)
    node = await op.add_node("edge-1", cluster.urls[0])
    await _set_labels(engine, node, '{"zone": "a", "fog.io/engine": "something-else"}')
    monitor = NodeMonitor(store, runtime, settings_for_tests(db_url), lambda: datetime.now(UTC))

    with capture_logs() as logs:
        await monitor.refresh()
        await monitor.refresh()

    # This machine's architecture as Go names it (x86_64 -> amd64), the OS the engine runs.
    expected = engine_labels(platform.machine(), "linux", flavour)
    assert await _labels(engine, node) == {"zone": "a", **expected}
    assert expected["fog.io/engine"] == flavour
    reserved = [e for e in logs if e["event"] == "node_label_reserved"]
    assert [(e["label"], e["value"]) for e in reserved] == [("fog.io/engine", "something-else")]
    (resolved,) = monitor.nodes()
    assert set(expected.items()) | {("zone", "a")} == set(resolved.labels)
