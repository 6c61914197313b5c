"""The store's `node_ports` on PostgreSQL and SQLite: the host ports live replicas hold per
node, as `RunSpec.host_ports()` says (published host port on a bridge or the default
network, the container port on the host network, nothing on `none`)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.model import ReplicaStatus
from controller.readmodel import PORTS, REPLICAS, SPECS
from controller.store import Store
from tests.harness.engines import Cluster
from tests.harness.fleet import Operator, eventually, running_controller, settings_for_tests
from tests.integration.fleets import fleet_on


async def _spec(
    op: Operator,
    deployment: uuid.UUID,
    network: str | None,
    ports: list[tuple[int, int | None, str]],
) -> None:
    async with op.engine.begin() as conn:
        if network is not None:
            await conn.execute(insert(SPECS).values(deployment_id=deployment, network=network))
        for container_port, host_port, protocol in ports:
            await conn.execute(
                insert(PORTS).values(
                    deployment_id=deployment,
                    container_port=container_port,
                    host_port=host_port,
                    protocol=protocol,
                )
            )


async def _replicas(
    op: Operator, deployment: uuid.UUID, node: uuid.UUID | None, status: ReplicaStatus, n: int = 1
) -> None:
    async with op.engine.begin() as conn:
        for _ in range(n):
            await conn.execute(
                insert(REPLICAS).values(
                    id=uuid.uuid4(), deployment_id=deployment, node_id=node, status=status.value
                )
            )


async def test_node_ports_are_what_live_replicas_publish_per_node(engine: AsyncEngine) -> None:
    op = Operator(engine)
    user = await op.add_user()
    a = await op.add_node("a", "unix:///a.sock", cpu_cores=8, memory_mb=8192)
    b = await op.add_node("b", "unix:///b.sock", cpu_cores=8, memory_mb=8192)
    bridged = await op.add_deployment(user, "bridged")  # no spec row: the default network
    await _spec(op, bridged, None, [(8080, 18080, "tcp"), (53, 5353, "udp"), (9000, None, "tcp")])
    host = await op.add_deployment(user, "host")
    await _spec(op, host, "host", [(9100, None, "tcp")])
    isolated = await op.add_deployment(user, "isolated")
    await _spec(op, isolated, "none", [(7000, 17000, "tcp")])

    await _replicas(op, bridged, a, ReplicaStatus.RUNNING, 2)  # a hand-made twin: both count
    await _replicas(op, bridged, b, ReplicaStatus.STARTING)
    await _replicas(op, bridged, b, ReplicaStatus.STOPPED)  # holds nothing any more
    await _replicas(op, bridged, None, ReplicaStatus.PENDING)  # on no node yet
    await _replicas(op, host, b, ReplicaStatus.RUNNING)
    await _replicas(op, isolated, a, ReplicaStatus.RUNNING)

    held = await Store(engine).node_ports()
    assert held == {
        a: Counter({(18080, "tcp"): 2, (5353, "udp"): 2}),
        b: Counter({(18080, "tcp"): 1, (5353, "udp"): 1, (9100, "tcp"): 1}),
    }


@pytest.mark.docker
async def test_replicas_binding_one_host_port_take_one_node_each_on_real_engines(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    """A deployment on the host network binding 18080: one replica per node, the fourth
    pending with the scheduler's reason; the load, the store's port usage and the scheduler
    together."""
    async with (
        fleet_on(db_url, engine, cluster) as f,
        running_controller(settings_for_tests(db_url)),
    ):
        n = len(f.urls)
        d = await f.op.add_deployment(f.user, "bound", replicas=0)
        await _spec(f.op, d, "host", [(18080, None, "tcp")])
        await f.op.scale(d, n + 1)

        async def spread() -> str:
            running = await f.op.replicas(d, "running")
            assert len(running) == n
            assert len({r["node_id"] for r in running}) == n
            reason = str((await f.op.history(d))[-1]["reason"])
            assert reason.endswith(f"0/{n} nodes fit: {n} host port 18080/tcp in use")
            return reason

        reason = await eventually(spread, within=60)
        await asyncio.sleep(1)  # more passes: still one per node, the same reason
        assert await spread() == reason
