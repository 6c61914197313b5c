"""Volume purge on real engines (issue 14): named volumes outlive a deletion unless the
operator asked for their removal; then the resync pass removes them from every node and
clears the request."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import docker
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.model import LABEL_DEPLOYMENT
from controller.readmodel import SPECS, VOLUMES
from tests.harness.engines import API_VERSION, Cluster
from tests.harness.fleet import (
    converged,
    eventually,
    running_controller,
    settings_for_tests,
)
from tests.integration.fleets import Fleet, fleet_on

pytestmark = pytest.mark.docker


@pytest.fixture
async def fleet(db_url: str, engine: AsyncEngine, cluster: Cluster) -> AsyncIterator[Fleet]:
    async with fleet_on(db_url, engine, cluster) as f:
        yield f


def _volumes(urls: list[str], d: uuid.UUID) -> dict[str, list[str]]:
    """Each engine's volumes labelled for deployment `d`."""
    found = {}
    for url in urls:
        with contextlib.closing(docker.APIClient(base_url=url, version=API_VERSION)) as client:
            listed = client.volumes(filters={"label": f"{LABEL_DEPLOYMENT}={d}"})
        found[url] = sorted(v["Name"] for v in listed.get("Volumes") or ())
    return found


async def _with_volume(f: Fleet, name: str, replicas: int) -> uuid.UUID:
    d = await f.op.add_deployment(f.user, name, replicas=replicas)
    async with f.op.engine.begin() as conn:
        await conn.execute(insert(VOLUMES).values(deployment_id=d, name="data", mount_path="/data"))
        await conn.execute(insert(SPECS).values(deployment_id=d))
    return d


async def test_a_purge_removes_the_volumes_from_every_node_and_a_plain_delete_keeps_them(
    fleet: Fleet,
) -> None:
    f = fleet
    async with running_controller(settings_for_tests(f.url)):
        purged = await _with_volume(f, "purged", 3)
        kept = await _with_volume(f, "kept", 3)
        await eventually(lambda: converged(f.op, f.urls, purged, 3))
        await eventually(lambda: converged(f.op, f.urls, kept, 3))
        before = await asyncio.to_thread(_volumes, f.urls, purged)
        assert sum(len(v) for v in before.values()) >= 2, before  # spread over the nodes

        async with f.op.engine.begin() as conn:
            await conn.execute(
                update(SPECS).where(SPECS.c.deployment_id == purged).values(purge_volumes=True)
            )
        await f.op.soft_delete(purged)
        await f.op.soft_delete(kept)

        async def gone() -> bool:
            left = await asyncio.to_thread(_volumes, f.urls, purged)
            assert not any(left.values()), left
            async with f.op.engine.connect() as conn:
                flag = await conn.scalar(
                    select(SPECS.c.purge_volumes).where(SPECS.c.deployment_id == purged)
                )
            assert flag is False
            return True

        await eventually(gone, within=60)
        await eventually(lambda: _status_is(f, kept, "deleted"))
    # Deleted without a purge: its data stays on the nodes (removed here, by the test).
    left = await asyncio.to_thread(_volumes, f.urls, kept)
    assert any(left.values())
    for url, names in left.items():
        with contextlib.closing(docker.APIClient(base_url=url, version=API_VERSION)) as client:
            for name in names:
                client.remove_volume(name)


async def _status_is(f: Fleet, d: uuid.UUID, status: str) -> bool:
    return await f.op.status(d) == status
