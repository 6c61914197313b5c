"""DockerRuntime on a real engine: a listing narrowed to one deployment, and graceful stops.

A reconcile lists every reachable node for its own deployment only (`Runtime.list(node,
deployment_id)`): the engine's label filters must all match (ours and the deployment's), or
the reconciler would see another deployment's containers as its own, or none of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import docker
import docker.errors
import pytest

from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    NodeRecord,
    NodeStatus,
)
from controller.runtime import ContainerSpec
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from tests.harness.engines import API_VERSION, TEST_IMAGE, TEST_LABEL, Cluster, wait_until
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


# A shell as PID 1 that ignores SIGTERM: only the grace period's SIGKILL ends it.
IGNORES_TERM = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]


def _signals(api: docker.APIClient, since: int, containers: set[str]) -> list[tuple[str, str]]:
    """(container id, signal or action) of the engine's kill/die/destroy events, in order."""
    until = int(time.time()) + 1
    found = []
    for e in api.events(since=since, until=until, decode=True, filters={"type": "container"}):
        if e.get("id") in containers and e.get("Action") in ("kill", "die", "destroy"):
            attrs = e.get("Actor", {}).get("Attributes", {})
            found.append((e["id"], attrs.get("signal", e["Action"])))
    return found


async def test_a_stop_signals_first_kills_after_the_grace_and_leaves_nothing(
    cluster: Cluster,
) -> None:
    """Stops of a whole scale-down are signalled together, even with one Docker call slot:
    every container gets SIGTERM before the first grace period ends in SIGKILL, and each is
    removed only after that."""
    engine = cluster.engines[0]
    node = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    runtime = DockerRuntime(
        Settings(database_url="sqlite+aiosqlite:///unused.db", node_concurrency=1)
    )
    api = docker.APIClient(base_url=engine.url, version=API_VERSION)
    since = int(time.time()) - 1
    made = {
        api.create_container(TEST_IMAGE, IGNORES_TERM, labels={TEST_LABEL: "stop"})["Id"]
        for _ in range(4)
    }
    try:
        for container in made:
            api.start(container)
        await asyncio.gather(*(runtime.stop(node, c, 1) for c in made))
        left = api.containers(all=True, filters={"label": f"{TEST_LABEL}=stop"})
        events = _signals(api, since, made)
    finally:
        await runtime.close()
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container, force=True)
        api.close()

    assert left == []
    order = [what for _, what in events]
    first_kill = order.index("9")
    assert order[:first_kill].count("15") == len(made)
    for container in made:
        mine = [what for c, what in events if c == container]
        assert mine == ["15", "9", "die", "destroy"]


async def test_a_restart_between_two_listings_shows_in_the_second(
    cluster: Cluster, runtime: DockerRuntime
) -> None:
    """A listing may reuse an earlier inspect of a recently started container, but a restart
    the engine made after that inspect must show: the second listing has the new count."""
    engine = cluster.engines[0]
    node = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    deployment = uuid.uuid4()
    api = docker.APIClient(base_url=engine.url, version=API_VERSION)
    labels = {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_DEPLOYMENT: str(deployment)}
    made = api.create_container(
        TEST_IMAGE,
        ["/bin/sh", "-c", "sleep 2; exit 3"],
        labels=labels,
        host_config=api.create_host_config(restart_policy={"Name": "always"}),
    )["Id"]

    def listed_up(restarts: int) -> bool:
        status = api.containers(filters={"id": made})[0]["Status"]
        count = api.inspect_container(made)["RestartCount"]
        return count == restarts and status.startswith("Up 1 second")

    try:
        api.start(made)
        wait_until(lambda: listed_up(0), 30, "the container up for a second")
        first = await runtime.list(node, deployment)
        wait_until(lambda: listed_up(1), 30, "its restart, up for a second again")
        second = await runtime.list(node, deployment)
    finally:
        api.remove_container(made, force=True)
        api.close()

    assert [(c.id, c.restart_count) for c in first.containers] == [(made, 0)]
    assert [(c.id, c.restart_count) for c in second.containers] == [(made, 1)]
