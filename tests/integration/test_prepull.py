"""Pre-pull on real engines and a real registry (issue 14): before a rolling update stops any
old replica, the new image is pulled on the nodes where old replicas stop; a pull the
registry refuses halts the rollout with every old replica serving and the registry's words in
the reason. Containers are sampled every 100 ms throughout."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.model import Resources, spec_hash
from controller.plan import DEFAULT_POLICY, rollout_bounds
from controller.readmodel import CREDENTIALS, DEPLOYMENTS, SPECS
from controller.secrets import SecretBox
from tests.harness.engines import Cluster, build_image
from tests.harness.fleet import (
    ContainerSampler,
    container_details,
    converged,
    eventually,
    running_controller,
    settings_for_tests,
)
from tests.harness.registry import Registry
from tests.integration.fleets import Fleet, fleet_on

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
    with contextlib.closing(Registry.start_new()) as started:
        yield started


@pytest.fixture(scope="module")
def app_v1(cluster: Cluster) -> None:
    with ThreadPoolExecutor(max_workers=len(cluster.engines)) as pool:
        for future in [pool.submit(build_image, e, APP_V1, SERVE) for e in cluster.engines]:
            future.result()


@pytest.fixture
async def fleet(
    db_url: str, engine: AsyncEngine, cluster: Cluster, app_v1: None
) -> AsyncIterator[Fleet]:
    async with fleet_on(db_url, engine, cluster) as f:
        yield f


async def _with_secret(
    f: Fleet, box: SecretBox, registry: Registry, d: uuid.UUID, image: str
) -> None:
    """The user's credential for the registry, and one edit: the pull secret and the image."""
    async with f.op.engine.begin() as conn:
        await conn.execute(
            insert(CREDENTIALS).values(
                id=uuid.uuid4(),
                user_id=f.user,
                name="company-registry",
                registry_host=registry.host,
                username=registry.username,
                password_encrypted=box.encrypt(registry.password),
            )
        )
        await conn.execute(
            insert(SPECS).values(deployment_id=d, image_pull_secret="company-registry")
        )
        await conn.execute(
            update(DEPLOYMENTS).where(DEPLOYMENTS.c.id == d).values(container_image=image)
        )


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


async def test_the_new_image_is_pulled_with_the_secret_before_any_old_replica_stops(
    fleet: Fleet, registry: Registry, cluster: Cluster, tmp_path: Path
) -> None:
    f = fleet
    private = await asyncio.to_thread(
        registry.push_test_image, cluster.engines[0], "team/prepull-ok", "2"
    )
    key_file = tmp_path / "secret.key"
    box = SecretBox.from_file(key_file)
    _, unavailable = rollout_bounds(TARGET, DEFAULT_POLICY)
    settings = settings_for_tests(f.url, secret_key_file=str(key_file))
    with capture_logs() as logs:
        async with running_controller(settings):
            d = await f.op.add_deployment(f.user, "rolling", image=APP_V1, replicas=TARGET)
            await eventually(lambda: _serving_v1(f, d))
            with ContainerSampler(f.urls, d, interval=0.1) as sampler:
                await _with_secret(f, box, registry, d, private)

                async def rolled() -> bool:
                    assert await converged(f.op, f.urls, d, TARGET)
                    details = await asyncio.to_thread(container_details, f.urls, d)
                    assert {c.image for c in details} == {private}, details
                    return True

                await eventually(rolled, within=120)

    events = [e["event"] for e in logs]
    assert "prepull_done" in events, events
    assert events.index("prepull_done") < events.index("replica_stopped"), events
    assert registry.password not in repr(logs)
    assert min(sampler.running()) >= TARGET - unavailable
