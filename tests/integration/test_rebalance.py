"""Rebalancing on three real engines: a node that is lost and returns gets its share back,
one replica at a time, without the deployment ever serving fewer than its target (sampled
every 100 ms), with one history row for the rebalance; with rebalancing off nothing moves.
And a placement changed under running replicas moves only those that no longer fit, each
replaced before it stops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import requests
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.readmodel import NODES, SELECTORS, SPECS
from tests.harness.engines import Cluster
from tests.harness.fleet import (
    converged,
    eventually,
    managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.integration.fleets import Fleet, fleet_on
from tests.integration.test_nodes import LIFECYCLE

pytestmark = pytest.mark.docker

# A lost node evicted within seconds (test_nodes' node lifecycle), and a move waits little.
QUICK = {**LIFECYCLE, "min_ready_seconds": 0.5, "rebalance_cooldown_seconds": 30.0}
TARGET = 6


async def _per_node(f: Fleet, d: uuid.UUID) -> Counter[uuid.UUID]:
    return Counter(r["node_id"] for r in await f.op.replicas(d, "running"))


async def _node_ids(f: Fleet) -> list[uuid.UUID]:
    async with f.op.engine.connect() as conn:
        rows = (await conn.execute(NODES.select().order_by(NODES.c.name))).all()
    return [r.id for r in rows]


async def _node_ready(f: Fleet, node_id: uuid.UUID) -> bool:
    async with f.op.engine.connect() as conn:
        row = (await conn.execute(NODES.select().where(NODES.c.id == node_id))).one()
    return str(row.status) == "ready"


async def _serving(f: Fleet, d: uuid.UUID) -> int:
    """Replicas both running as rows and running on their engine (a returning engine's
    stale containers of replaced replicas do not count)."""
    rows = {str(r["id"]) for r in await f.op.replicas(d, "running")}
    serving = 0
    for url in f.urls:
        try:
            seen = await asyncio.to_thread(managed_containers, [url], d)
        except requests.ConnectionError:
            continue  # the returning engine, not answering yet: none of its replicas serve
        serving += sum(1 for s in seen if s.state == "running" and s.replica_id in rows)
    return serving


async def _lose_and_return(f: Fleet, cluster: Cluster, d: uuid.UUID) -> tuple[list[int], float]:
    """Stop node-0's engine until its replicas are replaced on the other two (3/3), then
    start it again; returns the serving counts sampled from the return on, and when the
    engine answered again (monotonic)."""
    nodes = await _node_ids(f)
    await asyncio.to_thread(cluster.engines[0].stop)
    others = f.urls[1:]

    async def replaced() -> bool:
        spread = await _per_node(f, d)
        return await converged(f.op, others, d, TARGET) and sorted(spread.values()) == [3, 3]

    await eventually(replaced, within=40)
    async with sampling(f, d) as samples:
        await asyncio.to_thread(cluster.engines[0].start)
        returned_at = time.monotonic()
        await eventually(lambda: _node_ready(f, nodes[0]), within=20)
        # The stale containers the engine restarts are removed; the spread is what is left.
        await eventually(lambda: converged(f.op, f.urls, d, TARGET), within=20)
        return samples, returned_at


@asynccontextmanager
async def sampling(f: Fleet, d: uuid.UUID) -> AsyncIterator[list[int]]:
    """How many replicas serve, every 100 ms while the block runs."""
    samples: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(await _serving(f, d))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        done.set()
        await sampler


async def test_a_returning_node_gets_its_share_back(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    async with fleet_on(db_url, engine, cluster) as f:
        try:
            async with running_controller(settings_for_tests(db_url, **QUICK)):
                d = await f.op.add_deployment(f.user, "rebalanced", replicas=TARGET)
                await eventually(lambda: converged(f.op, f.urls, d, TARGET))
                assert sorted((await _per_node(f, d)).values()) == [2, 2, 2]
                nodes = await _node_ids(f)
                samples, returned_at = await _lose_and_return(f, cluster, d)

                async def balanced() -> bool:
                    spread = await _per_node(f, d)
                    assert spread == dict.fromkeys(nodes, 2), spread
                    return await converged(f.op, f.urls, d, TARGET)

                await eventually(balanced, within=30)
                took = time.monotonic() - returned_at
                await asyncio.sleep(0.3)
                assert samples
                assert min(samples) >= TARGET, samples
                rows = [h["reason"] for h in await f.op.history(d)]
                assert [r for r in rows if r.startswith("rebalanced")] == [
                    "rebalanced: 2 replicas moved to node-0"
                ], rows
                print(f"balanced {took:.1f}s after the engine returned")
        finally:
            await asyncio.to_thread(cluster.ensure_running)


async def test_rebalance_off_moves_nothing(
    pg_url: str, pg_engine: AsyncEngine, cluster: Cluster
) -> None:
    async with fleet_on(pg_url, pg_engine, cluster) as f:
        try:
            settings = settings_for_tests(pg_url, **QUICK, rebalance=False)
            async with running_controller(settings) as controller:
                d = await f.op.add_deployment(f.user, "pinned", replicas=TARGET)
                await eventually(lambda: converged(f.op, f.urls, d, TARGET))
                await _lose_and_return(f, cluster, d)
                passes = controller.passes

                async def looked_again() -> bool:
                    return bool(controller.passes >= passes + 4)

                await eventually(looked_again, within=20)
                await asyncio.sleep(1.0)  # a move would have begun by now
                spread: Any = await _per_node(f, d)
                assert sorted(spread.values()) == [3, 3]
                rows = [h["reason"] for h in await f.op.history(d)]
                assert not [r for r in rows if r.startswith("rebalanced")]
        finally:
            await asyncio.to_thread(cluster.ensure_running)


async def _label(f: Fleet, node_id: uuid.UUID, **labels: str) -> None:
    async with f.op.engine.begin() as conn:
        await conn.execute(NODES.update().where(NODES.c.id == node_id).values(labels=labels))


async def test_a_placement_change_moves_only_misplaced_replicas_surge_first(
    pg_url: str, pg_engine: AsyncEngine, cluster: Cluster
) -> None:
    """Zones a, a, b: a selector `zone=a` added later moves node-2's replicas to the a nodes,
    each replaced before it stops; `max_per_node: 1` then leaves the replicas over the cap
    running, since no node can take their replacements, and the reason says why."""
    async with fleet_on(pg_url, pg_engine, cluster) as f:
        nodes = await _node_ids(f)
        for node_id, zone in zip(nodes, ("a", "a", "b"), strict=True):
            await _label(f, node_id, zone=zone)
        async with running_controller(settings_for_tests(pg_url, min_ready_seconds=0.5)):
            d = await f.op.add_deployment(f.user, "zoned", replicas=4)
            await eventually(lambda: converged(f.op, f.urls, d, 4))
            assert (await _per_node(f, d))[nodes[2]] >= 1
            async with sampling(f, d) as samples:
                async with f.op.engine.begin() as conn:
                    await conn.execute(insert(SPECS).values(deployment_id=d))
                    await conn.execute(
                        insert(SELECTORS).values(deployment_id=d, key="zone", value="a")
                    )

                async def only_zone_a() -> bool:
                    spread = await _per_node(f, d)
                    assert nodes[2] not in spread, spread
                    return await converged(f.op, f.urls, d, 4)

                await eventually(only_zone_a, within=30)
            assert min(samples) >= 4, samples
            assert sorted((await _per_node(f, d)).values()) == [2, 2]

            async with f.op.engine.begin() as conn:
                await conn.execute(
                    SPECS.update().where(SPECS.c.deployment_id == d).values(max_per_node=1)
                )

            async def held_with_reason() -> bool:
                reasons = " ".join(h["reason"] for h in await f.op.history(d))
                assert "max 1 per node" in reasons, reasons
                return True

            await eventually(held_with_reason, within=20)
            await asyncio.sleep(1.0)
            assert sorted((await _per_node(f, d)).values()) == [2, 2]
            assert await _serving(f, d) == 4
