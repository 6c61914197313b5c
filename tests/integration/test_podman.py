"""The runtime adapter on a real Podman engine, where Podman answers the Docker API differently
from dockerd (see controller/runtime/docker.py, `EngineFlavour`). The reconciler's core cases
run on Podman too (tests/integration/kinds.py); these are the differences they do not reach.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import docker
import pytest

from controller import errors
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    MANAGED_BY_VALUE,
    NodeRecord,
    NodeStatus,
    Resources,
)
from controller.runtime import ContainerSpec
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from tests.conftest import KindClusters
from tests.harness.engines import API_VERSION, TEST_IMAGE, Cluster, PodmanEngine
from tests.harness.fleet import remove_managed_containers

pytestmark = pytest.mark.docker

NANOSECONDS = 1_000_000_000


@pytest.fixture
def podman(kind_clusters: KindClusters) -> Cluster:
    return kind_clusters.get("podman")


@pytest.fixture
async def runtime(podman: Cluster) -> AsyncIterator[DockerRuntime]:
    created = DockerRuntime(
        Settings(database_url="sqlite+aiosqlite:///unused.db", container_network="none")
    )
    try:
        yield created
    finally:
        await created.close()
        remove_managed_containers(podman.urls)


@pytest.fixture
async def node(podman: Cluster, runtime: DockerRuntime) -> NodeRecord:
    """The first Podman engine as a node, probed (as the heartbeat does) so that the runtime
    knows what answers there."""
    engine = podman.engines[0]
    record = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    info = await runtime.info(record)
    assert (info.engine, info.storage_driver) == ("podman", "overlay")
    assert info.cpu_cores > 0
    assert info.memory_mb > 0
    return record


def _spec(deployment: uuid.UUID, **resources: int) -> ContainerSpec:
    res = Resources(cpu_cores=0.5, memory_mb=512, **resources) if resources else None
    return ContainerSpec(uuid.uuid4(), deployment, TEST_IMAGE, res)


async def test_health_is_read_although_podman_lists_none(
    podman: Cluster, runtime: DockerRuntime, node: NodeRecord
) -> None:
    engine = podman.engines[0]
    assert isinstance(engine, PodmanEngine)
    deployment, replica = uuid.uuid4(), uuid.uuid4()
    api = docker.APIClient(base_url=engine.url, version=API_VERSION, timeout=30)
    try:
        created = api.create_container(
            TEST_IMAGE,
            name=f"fog-{replica}",
            labels={
                LABEL_MANAGED_BY: MANAGED_BY_VALUE,
                LABEL_DEPLOYMENT: str(deployment),
                LABEL_REPLICA: str(replica),
            },
            healthcheck={
                "test": ["CMD", "test", "-e", "/tmp/ready"],
                "interval": 3600 * NANOSECONDS,  # never by itself: the test runs it
                "timeout": 20 * NANOSECONDS,  # an exec on a busy 2-core machine
                "retries": 1,
            },
            host_config=api.create_host_config(network_mode="none"),
        )
        api.start(created["Id"])

        async def health() -> str | None:
            [seen] = (await runtime.list(node, deployment)).containers
            assert seen.id == created["Id"]
            return seen.health

        # What makes this necessary: Podman's listing says nothing of health.
        [listed] = api.containers(filters={"id": created["Id"]})
        assert "(" not in listed["Status"], listed["Status"]
        assert await health() == "starting"
        ran = engine.cli("healthcheck", "run", created["Id"])
        assert (ran.returncode, ran.stdout.strip()) == (1, "unhealthy"), ran
        assert await health() == "unhealthy"
        api.exec_start(api.exec_create(created["Id"], ["touch", "/tmp/ready"]))
        ran = engine.cli("healthcheck", "run", created["Id"])
        assert ran.returncode == 0, ran
        assert await health() is None  # healthy: serving, as without a HEALTHCHECK
    finally:
        api.close()


async def test_a_gpu_request_fails_at_once_with_the_reason(
    podman: Cluster, runtime: DockerRuntime, node: NodeRecord
) -> None:
    deployment = uuid.uuid4()
    with pytest.raises(errors.PermanentError) as failed:
        await runtime.ensure(node, _spec(deployment, gpu_units=1))
    assert "GPU request (1 units) on a Podman node" in failed.value.reason
    assert (await runtime.list(node, deployment)).containers == ()


async def test_a_taken_name_is_adopted_when_ours_and_refused_otherwise(
    podman: Cluster, runtime: DockerRuntime, node: NodeRecord
) -> None:
    deployment = uuid.uuid4()
    spec = _spec(deployment)
    first = await runtime.ensure(node, spec)
    # A create retried after a crash finds its own container under the name.
    assert await runtime.ensure(node, spec) == first

    stranger = _spec(deployment)
    api = docker.APIClient(base_url=node.docker_url, version=API_VERSION, timeout=30)
    try:
        api.create_container(TEST_IMAGE, name=stranger.name)
        with pytest.raises(errors.ConflictError, match="exists without our labels"):
            await runtime.ensure(node, stranger)
    finally:
        api.remove_container(stranger.name, force=True)
        api.close()


async def test_a_failed_pull_says_why(
    podman: Cluster, runtime: DockerRuntime, node: NodeRecord
) -> None:
    spec = ContainerSpec(uuid.uuid4(), uuid.uuid4(), "127.0.0.1:1/fog-test/nowhere:1", None)
    with pytest.raises(errors.PermanentError) as failed:
        await runtime.ensure(node, spec)
    assert failed.value.reason.startswith("image pull failed: 127.0.0.1:1/fog-test/nowhere:1: ")
    assert "connection refused" in failed.value.reason
