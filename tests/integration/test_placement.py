"""Placement on three real engines labelled by zone (node-0 and node-1 in zone a, node-2 in
zone b), with the placement written as an operator writes it: plain SQL naming the
deployment and the node, on PostgreSQL and SQLite.

Selectors are honoured (the operator's labels and the controller's own `fog.io/` ones),
`spread_by` spreads 2/2 over the two zones, `max_per_node` leaves a replica pending with the
scheduler's counted reason while the replica it would replace keeps running, and a changed
selector moves the replicas surge first, never below the target.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.engines import Cluster
from tests.harness.fleet import (
    ContainerSampler,
    Operator,
    converged,
    eventually,
    running_controller,
    settings_for_tests,
)
from tests.integration.fleets import Fleet, fleet_on

pytestmark = pytest.mark.docker

ZONES = {"node-0": "a", "node-1": "a", "node-2": "b"}


async def _sql(op: Operator, statement: str, **params: Any) -> None:
    async with op.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def _label_zones(op: Operator) -> None:
    for name, zone in ZONES.items():
        await _sql(
            op,
            "UPDATE nodes SET labels = :labels WHERE name = :name",
            labels=json.dumps({"zone": zone}),
            name=name,
        )


async def _placement(
    op: Operator,
    deployment: str,
    *,
    selector: dict[str, str] | None = None,
    spread_by: str | None = None,
    max_per_node: int | None = None,
) -> None:
    """The placement as docs/operations.md writes it: rows keyed by the deployment's name."""
    live = "SELECT id FROM deployments WHERE name = :name AND deleted_at IS NULL"
    if spread_by is not None or max_per_node is not None:
        await _sql(
            op,
            "INSERT INTO deployment_specs (deployment_id, spread_by, max_per_node) "
            f"SELECT id, :spread_by, :max_per_node FROM ({live}) AS d",
            name=deployment,
            spread_by=spread_by,
            max_per_node=max_per_node,
        )
    for key, value in (selector or {}).items():
        await _sql(
            op,
            "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
            f"SELECT id, :key, :value FROM ({live}) AS d",
            name=deployment,
            key=key,
            value=value,
        )


async def _per_node(f: Fleet, d: uuid.UUID) -> Counter[str]:
    """Running replicas per node name."""
    names = {}
    async with f.op.engine.connect() as conn:
        for row in await conn.execute(text("SELECT id, name FROM nodes")):
            names[str(row.id)] = row.name
    running = await f.op.replicas(d, "running")
    return Counter(names[str(r["node_id"])] for r in running)


async def test_selector_on_operator_and_engine_labels(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    async with fleet_on(db_url, engine, cluster) as f:
        await _label_zones(f.op)
        d = await f.op.add_deployment(f.user, "sel", replicas=0)
        await _placement(f.op, "sel", selector={"zone": "a", "fog.io/engine": "docker"})
        await f.op.scale(d, 4)
        async with running_controller(settings_for_tests(db_url)):

            async def placed() -> Counter[str]:
                assert await converged(f.op, f.urls, d, 4)
                return await _per_node(f, d)

            assert await eventually(placed, within=60) == Counter({"node-0": 2, "node-1": 2})
            async with f.op.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT name, labels FROM nodes"))).all()
            for row in rows:
                labels = row.labels if isinstance(row.labels, dict) else json.loads(row.labels)
                assert labels["zone"] == ZONES[row.name]
                assert labels["fog.io/engine"] == "docker"
                assert labels["fog.io/os"] == "linux"
                assert labels["fog.io/arch"] in ("amd64", "arm64")
            # Moments later, still only zone a.
            await asyncio.sleep(1)
            assert await _per_node(f, d) == Counter({"node-0": 2, "node-1": 2})


async def test_spread_over_zones_then_a_cap_that_cannot_be_met(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    """4 replicas spread by zone: 2 in a (one per node), 2 in b (both on node-2). Then a cap
    of 1 per node: node-2's second replica must go, but no node can take its replacement,
    so it keeps running and the deployment says why."""
    async with fleet_on(db_url, engine, cluster) as f:
        await _label_zones(f.op)
        d = await f.op.add_deployment(f.user, "spread", replicas=0)
        await _placement(f.op, "spread", spread_by="zone")
        await f.op.scale(d, 4)
        async with running_controller(settings_for_tests(db_url, min_ready_seconds=0.5)):

            async def spread() -> Counter[str]:
                assert await converged(f.op, f.urls, d, 4)
                return await _per_node(f, d)

            assert await eventually(spread, within=60) == Counter(
                {"node-0": 1, "node-1": 1, "node-2": 2}
            )
            with ContainerSampler(f.urls, d) as sampler:
                await _sql(
                    f.op,
                    "UPDATE deployment_specs SET max_per_node = 1 WHERE deployment_id = "
                    "(SELECT id FROM deployments WHERE name = 'spread')",
                )

                async def refused() -> str:
                    reason = str((await f.op.history(d))[-1]["reason"])
                    assert reason.endswith("0/3 nodes fit: 3 max 1 per node"), reason
                    return reason

                await eventually(refused, within=30)
                await asyncio.sleep(1.5)
            assert min(sampler.running()) >= 4
            assert await _per_node(f, d) == Counter({"node-0": 1, "node-1": 1, "node-2": 2})
            pending = await f.op.replicas(d, "pending")
            assert len(pending) == 1
            assert pending[0]["node_id"] is None


async def test_a_changed_selector_moves_replicas_surge_first(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    async with fleet_on(db_url, engine, cluster) as f:
        await _label_zones(f.op)
        d = await f.op.add_deployment(f.user, "mover", replicas=0)
        await _placement(f.op, "mover", selector={"zone": "a"})
        await f.op.scale(d, 2)
        settings = settings_for_tests(db_url, min_ready_seconds=0.5)
        async with running_controller(settings):

            async def in_zone(zone_nodes: Counter[str]) -> bool:
                return await converged(f.op, f.urls, d, 2) and await _per_node(f, d) == zone_nodes

            await eventually(lambda: in_zone(Counter({"node-0": 1, "node-1": 1})), within=60)
            with ContainerSampler(f.urls, d) as sampler:
                await _sql(
                    f.op,
                    "UPDATE deployment_node_selectors SET value = 'b' WHERE key = 'zone' AND "
                    "deployment_id = (SELECT id FROM deployments WHERE name = 'mover')",
                )
                await eventually(lambda: in_zone(Counter({"node-2": 2})), within=60)
            running = sampler.running()
            assert min(running) >= 2, running
            assert max(running) > 2  # the replacements ran beside the old replicas


async def test_an_uncordoned_zone_gets_its_share_back(
    db_url: str, engine: AsyncEngine, cluster: Cluster
) -> None:
    """`spread_by: zone` with zone b (node-2) cordoned: all 4 replicas in zone a. Uncordoned
    (plain SQL, as `fogctl node uncordon` does), zone b gets 2 of them back by rebalancing,
    one move at a time, never below 4 running, with one history row saying so."""
    async with fleet_on(db_url, engine, cluster) as f:
        await _label_zones(f.op)
        await _sql(f.op, "UPDATE nodes SET unschedulable = true WHERE name = 'node-2'")
        d = await f.op.add_deployment(f.user, "zoned", replicas=0)
        await _placement(f.op, "zoned", spread_by="zone")
        await f.op.scale(d, 4)
        settings = settings_for_tests(db_url, min_ready_seconds=0.5)
        async with running_controller(settings):

            async def spread(wanted: Counter[str]) -> bool:
                return await converged(f.op, f.urls, d, 4) and await _per_node(f, d) == wanted

            await eventually(lambda: spread(Counter({"node-0": 2, "node-1": 2})), within=60)
            with ContainerSampler(f.urls, d) as sampler:
                await _sql(f.op, "UPDATE nodes SET unschedulable = false WHERE name = 'node-2'")

                async def zones_even() -> bool:
                    per_node = await _per_node(f, d)
                    return await converged(f.op, f.urls, d, 4) and per_node["node-2"] == 2

                await eventually(zones_even, within=90)
            assert min(sampler.running()) >= 4
            assert sorted((await _per_node(f, d)).values()) == [1, 1, 2]

            async def one_row() -> bool:
                # Written by the reconcile after the last move's, when nothing is left to move.
                reasons = [str(h["reason"]) for h in await f.op.history(d)]
                assert [r for r in reasons if r.startswith("rebalanced")] == [
                    "rebalanced: 2 replicas moved to node-2"
                ]
                return True

            await eventually(one_row, within=10)
