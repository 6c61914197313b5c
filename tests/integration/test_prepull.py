"""Pre-pull on real engines and a real registry (issue 14): before a rolling update stops any
old replica, the new image is pulled on the nodes where old replicas stop; a pull the
registry refuses halts the rollout with every old replica serving and the registry's words in
the reason. Containers are sampled every 100 ms throughout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.model import Resources, spec_hash
from tests.harness.engines import Cluster, build_image
from tests.harness.fleet import (
    ContainerSampler,
    Operator,
    container_details,
    converged,
    eventually,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.harness.registry import Registry

pytestmark = pytest.mark.docker

APP_V1 = "fog-test/prepull:1"
TARGET = 6  # over three nodes: surge 2, unavailable 1
DEFAULT_RESOURCES = Resources(cpu_cores=0.5, memory_mb=512, gpu_units=0, storage_gb=1)
SERVE = [
    "/bin/sh",
    "-c",
    'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done',
]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry.start_new() as started:
        yield started


@pytest.fixture(scope="module")
def app_v1(cluster: Cluster) -> None:
    with ThreadPoolExecutor(max_workers=len(cluster.engines)) as pool:
        for future in [pool.submit(build_image, e, APP_V1, SERVE) for e in cluster.engines]:
            future.result()


@dataclass(frozen=True)
class Fleet:
    url: str
    op: Operator
    urls: list[str]
    user: uuid.UUID


@pytest.fixture
async def fleet(
    db_url: str, engine: AsyncEngine, cluster: Cluster, app_v1: None
) -> AsyncIterator[Fleet]:
    cluster.ensure_running()
    urls = list(cluster.urls)
    op = Operator(engine)
    for i, url in enumerate(urls):
        await op.add_node(f"node-{i}", url)
    user = await op.add_user()
    try:
        yield Fleet(db_url, op, urls, user)
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)


async def _serving_v1(f: Fleet, d: uuid.UUID) -> set[str]:
    assert await converged(f.op, f.urls, d, TARGET)
    details = await asyncio.to_thread(container_details, f.urls, d)
    assert {c.image for c in details} == {APP_V1}
    return {c.id for c in details}


async def test_a_pull_the_registry_refuses_halts_the_rollout_with_every_old_replica_serving(
    fleet: Fleet, registry: Registry
) -> None:
    f = fleet
    private = registry.image("team/prepull", "2")  # needs a credential this user lacks
    async with running_controller(settings_for_tests(f.url)):
        d = await f.op.add_deployment(f.user, "halting", image=APP_V1, replicas=TARGET)
        old = await eventually(lambda: _serving_v1(f, d))

        with ContainerSampler(f.urls, d, interval=0.1) as sampler:
            await f.op.update(d, container_image=private)

            async def halted() -> str:
                reasons = [str(r["reason"]) for r in await f.op.history(d)]
                found = [r for r in reasons if "rollout halted: pull before stopping" in r]
                assert found, reasons
                return found[-1]

            reason = await eventually(halted, within=60)
            await asyncio.sleep(2)  # a few more passes: still nothing stopped
            rows = await f.op.replicas(d, "stopping", "stopped")

    assert f"image pull failed: {private}: unauthorized (no credential given)" in reason, reason
    assert rows == []
    # Every sample shows every old container running, and no other container.
    for _, seen in sampler.samples:
        assert {s.id for s in seen if s.state == "running"} == old, seen
    new_spec = spec_hash(private, DEFAULT_RESOURCES)
    assert all(r["spec_hash"] != new_spec for r in await f.op.live_replicas(d))
