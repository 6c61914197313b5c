"""DockerRuntime's listing on a real engine, narrowed to one deployment.

A reconcile lists every reachable node for its own deployment only (`Runtime.list(node,
deployment_id)`): the engine's label filters must all match (ours and the deployment's), or
the reconciler would see another deployment's containers as its own, or none of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from controller.model import NodeRecord, NodeStatus
from controller.runtime import ContainerSpec
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from tests.harness.engines import TEST_IMAGE, Cluster
from tests.harness.fleet import remove_managed_containers

pytestmark = pytest.mark.docker


@pytest.fixture
async def runtime(cluster: Cluster) -> AsyncIterator[DockerRuntime]:
    created = DockerRuntime(Settings(database_url="sqlite+aiosqlite:///unused.db"))
    try:
        yield created
    finally:
        await created.close()
        remove_managed_containers(cluster.urls)


async def test_a_listing_narrowed_to_a_deployment_shows_only_its_containers(
    cluster: Cluster, runtime: DockerRuntime
) -> None:
    engine = cluster.engines[0]
    node = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    mine, other = uuid.uuid4(), uuid.uuid4()
    made = {
        deployment: await runtime.ensure(
            node, ContainerSpec(uuid.uuid4(), deployment, TEST_IMAGE, None)
        )
        for deployment in (mine, other)
    }

    narrowed = await runtime.list(node, mine)
    everything = await runtime.list(node)

    assert narrowed.complete
    assert [(c.id, c.deployment_id) for c in narrowed.containers] == [(made[mine], mine)]
    assert {c.id for c in everything.containers} >= set(made.values())
