"""Node lifecycle and placement on three real engines: spread, GPU placement, a lost node's
replicas replaced and its stale containers removed when it returns, no eviction storm when
every node looks lost, and a drain that never drops below target."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.readmodel import NODES, REPLICAS
from tests.harness.engines import Cluster
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    managed_containers,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)

pytestmark = pytest.mark.docker

LIFECYCLE = {
    "node_heartbeat_seconds": 0.3,
    "node_grace_seconds": 1.5,
    "eviction_seconds": 1.5,
    "eviction_interval_seconds": 0.2,
}


@pytest.fixture
async def fleet(db_url: str, engine: AsyncEngine, cluster: Cluster) -> Any:
    cluster.ensure_running()
    urls = list(cluster.urls)
    op = Operator(engine)
    nodes = [await op.add_node(f"node-{i}", url) for i, url in enumerate(urls)]
    user = await op.add_user()
    yield op, urls, user, nodes
    await asyncio.to_thread(cluster.ensure_running)
    await asyncio.to_thread(remove_managed_containers, urls)


async def _node_status(op: Operator, node_id: uuid.UUID) -> str:
    async with op.engine.connect() as conn:
        row = (await conn.execute(NODES.select().where(NODES.c.id == node_id))).one()
    return str(row.status)


async def _per_node(op: Operator, d: uuid.UUID) -> Counter[uuid.UUID]:
    return Counter(r["node_id"] for r in await op.replicas(d, "running"))


async def test_six_replicas_spread_two_per_node(db_url: str, fleet: Any) -> None:
    op, urls, user, nodes = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "spread", replicas=6)
        await eventually(lambda: converged(op, urls, d, 6))
        assert sorted((await _per_node(op, d)).values()) == [2, 2, 2]
        assert set((await _per_node(op, d)).keys()) == set(nodes)


async def test_gpu_replica_lands_only_on_the_gpu_node(db_url: str, fleet: Any) -> None:
    op, _, user, nodes = fleet
    async with op.engine.begin() as conn:
        await conn.execute(NODES.update().where(NODES.c.id == nodes[2]).values(gpu_units=1))
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "gpu", replicas=1, gpu_units=1)

        async def placed() -> bool:
            rows = await op.replicas(d)
            assert rows
            return all(r["node_id"] == nodes[2] for r in rows if r["node_id"] is not None)

        await eventually(placed)

        # No GPU on this machine: the engine refuses, the reason says so, placement was right.
        async def refused() -> bool:
            reasons = " ".join(h["reason"] for h in await op.history(d))
            return "could not select device driver" in reasons

        await eventually(refused)
        async with op.engine.connect() as conn:
            placed_on = {
                row.node_id
                for row in await conn.execute(
                    REPLICAS.select().where(REPLICAS.c.deployment_id == d)
                )
            }
        assert placed_on <= {nodes[2], None}


async def test_lost_node_is_evicted_and_cleaned_when_it_returns(
    db_url: str, fleet: Any, cluster: Cluster
) -> None:
    op, urls, user, nodes = fleet
    async with running_controller(settings_for_tests(db_url, **LIFECYCLE)):
        d = await op.add_deployment(user, "survivor", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))
        victim = cluster.engines[0]
        stale = {s.id for s in managed_containers([victim.url], d)}
        assert stale
        await asyncio.to_thread(victim.stop)

        await eventually(lambda: _equals(_node_status(op, nodes[0]), "not_ready"), within=20)
        others = urls[1:]
        await eventually(lambda: converged(op, others, d, 3), within=30)
        failed = await op.replicas(d, "failed")
        assert {r["node_id"] for r in failed} == {nodes[0]}
        reasons = " ".join(h["reason"] for h in await op.history(d))
        assert "node node-0 lost" in reasons

        # The partition heals: the engine restarts its unless-stopped containers, and the
        # controller removes them, since their replicas were replaced (no twins).
        await asyncio.to_thread(victim.start)
        await eventually(lambda: _equals(_node_status(op, nodes[0]), "ready"), within=20)

        async def stale_gone() -> bool:
            return not ({s.id for s in managed_containers([victim.url])} & stale)

        await eventually(stale_gone, within=20)
        await eventually(lambda: converged(op, urls, d, 3))


async def test_all_nodes_down_is_no_eviction_storm(
    db_url: str, fleet: Any, cluster: Cluster
) -> None:
    op, urls, user, nodes = fleet
    async with running_controller(settings_for_tests(db_url, **LIFECYCLE)) as controller:
        d = await op.add_deployment(user, "calm", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))
        await asyncio.gather(*(asyncio.to_thread(e.stop) for e in cluster.engines))

        async def all_not_ready() -> bool:
            return all([await _node_status(op, n) == "not_ready" for n in nodes])

        await eventually(all_not_ready, within=20)
        # Wait well past grace + eviction (and several heartbeats) and check nothing moved.
        passes = controller.passes
        await eventually(lambda: _past(controller, passes + 6), within=30)
        await asyncio.sleep(0)
        assert len(await op.replicas(d, "running")) == 3
        assert await op.replicas(d, "failed") == []
        await asyncio.gather(*(asyncio.to_thread(e.start) for e in cluster.engines))
        await eventually(lambda: converged(op, urls, d, 3), within=30)
        assert await op.replicas(d, "failed") == []


async def _past(controller: Any, passes: int) -> bool:
    return bool(controller.passes >= passes)


async def _equals(value: Any, expected: Any) -> bool:
    got = await value
    assert got == expected, f"{got!r} != {expected!r}"
    return True


async def test_drain_moves_replicas_without_dropping_below_target(db_url: str, fleet: Any) -> None:
    op, urls, user, nodes = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "moving", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))
        samples: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                seen = await asyncio.to_thread(managed_containers, urls, d)
                samples.append(sum(1 for s in seen if s.state == "running"))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        async with op.engine.begin() as conn:
            await conn.execute(
                NODES.update()
                .where(NODES.c.id == nodes[0])
                .values(draining=True, unschedulable=True)
            )

        async def drained() -> bool:
            on_drained = managed_containers([urls[0]], d)
            live_on_drained = [r for r in await op.live_replicas(d) if r["node_id"] == nodes[0]]
            return not on_drained and not live_on_drained and await converged(op, urls, d, 3)

        await eventually(drained, within=40)
        done.set()
        await sampler
        assert samples
        assert min(samples) >= 3, samples
        assert sorted((await _per_node(op, d)).values()) == [1, 2]
