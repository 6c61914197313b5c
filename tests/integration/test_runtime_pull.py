"""Pulls from a real private registry (distribution 2.8, htpasswd auth, on 127.0.0.1) on
dockerd and Podman: the right credential pulls; a wrong one and none are `unauthorized`, an
image that is not there is `not found`, a registry that is down is `unreachable`: three
different reasons, each with the engine's own words, and never the password.

The words each engine gave (dockerd 20.10.24 / Podman 4.3.1) are in `WORDS`; the unit tests
(tests/unit/test_pull_errors.py) hold the same answers in full.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import docker
import docker.errors
import pytest

from controller import errors
from controller.model import NodeRecord, NodeStatus
from controller.runspec import RegistryAuth
from controller.runtime import ContainerSpec
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from tests.conftest import KindClusters
from tests.harness.engines import API_VERSION, DEFAULT_ENGINE_KIND, ENGINE_KINDS, Cluster, free_port
from tests.harness.fleet import remove_managed_containers
from tests.harness.registry import Registry

pytestmark = pytest.mark.docker

# What each engine says, per answer (a part of its words that names the registry's answer).
WORDS = {
    DEFAULT_ENGINE_KIND: {
        "wrong": "unauthorized: authentication required",
        "none": "no basic auth credentials",
        "missing": "manifest unknown",
        "down": "connect: connection refused",
    },
    "podman": {
        "wrong": "unauthorized: authentication required",
        "none": "unauthorized: authentication required",
        "missing": "manifest unknown",
        "down": "connect: connection refused",
    },
}


@dataclass
class Puller:
    runtime: DockerRuntime
    node: NodeRecord
    api: docker.APIClient
    kind: str
    pusher: Cluster  # a dockerd that pushes the images (the session's first engine)
    pulled: list[str]

    def has(self, image: str) -> bool:
        try:
            self.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def pull(self, image: str, auth: RegistryAuth | None) -> None:
        self.pulled.append(image)
        await self.runtime.pull(self.node, image, auth)

    async def reason(self, image: str, auth: RegistryAuth | None) -> str:
        with pytest.raises(errors.PermanentError) as failed:
            await self.pull(image, auth)
        assert not self.has(image)
        return failed.value.reason


KINDS = [pytest.param(DEFAULT_ENGINE_KIND, id="docker"), pytest.param("podman", id="podman")]


@pytest.fixture(params=KINDS)
async def puller(
    request: pytest.FixtureRequest, kind_clusters: KindClusters, cluster: Cluster
) -> AsyncIterator[Puller]:
    kind = request.param
    nodes = kind_clusters.get(kind)
    nodes.ensure_running()
    # Pulled on the second engine; the first pushes (its copy of a pushed tag is removed).
    engine = nodes.engines[1]
    runtime = DockerRuntime(
        Settings(
            database_url="sqlite+aiosqlite:///unused.db",
            container_network=ENGINE_KINDS[kind].container_network,
            pull_timeout_seconds=60,
        )
    )
    node = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    await runtime.info(node)
    api = docker.APIClient(base_url=engine.url, version=API_VERSION, timeout=60)
    made = Puller(runtime, node, api, kind, cluster, [])
    try:
        yield made
    finally:
        await runtime.close()
        remove_managed_containers(nodes.urls)
        for image in made.pulled:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_image(image, force=True)
        api.close()


def _auth(registry: Registry, password: str | None = None) -> RegistryAuth:
    return RegistryAuth(registry.host, registry.username, password or registry.password)


def _push(registry: Registry, puller: Puller, tag: str = "1") -> str:
    return registry.push_test_image(
        puller.pusher.engines[0], f"team/web-{uuid.uuid4().hex[:8]}", tag
    )


async def test_the_right_credential_pulls(registry: Registry, puller: Puller) -> None:
    image = _push(registry, puller)
    assert not puller.has(image)
    await puller.pull(image, _auth(registry))
    assert puller.has(image)


async def test_the_three_answers_are_three_reasons_in_the_engines_words(
    registry: Registry, puller: Puller
) -> None:
    image = _push(registry, puller)
    words = WORDS[puller.kind]

    wrong = await puller.reason(image, _auth(registry, "not-the-password"))
    unsent = await puller.reason(image, None)
    missing_image = registry.image("team/not-pushed", "1")
    missing = await puller.reason(missing_image, _auth(registry))

    prefix = f"image pull failed: {image}: "
    assert wrong.startswith(prefix + "unauthorized (credential refused): "), wrong
    assert words["wrong"] in wrong
    assert unsent.startswith(prefix + "unauthorized (no credential given): "), unsent
    assert words["none"] in unsent
    assert missing.startswith(f"image pull failed: {missing_image}: not found: "), missing
    assert words["missing"] in missing
    for reason in (wrong, unsent, missing):
        assert registry.password not in reason


async def test_a_registry_that_is_down_is_unreachable(puller: Puller) -> None:
    with contextlib.closing(Registry.start_new()) as down:
        image = down.push_test_image(puller.pusher.engines[0], "team/web")
        down.stop()
        stopped = await puller.reason(image, _auth(down))
    closed_image = f"127.0.0.1:{free_port()}/team/web:1"
    closed = await puller.reason(closed_image, None)

    assert stopped.startswith(f"image pull failed: {image}: unreachable: "), stopped
    assert closed.startswith(f"image pull failed: {closed_image}: unreachable: "), closed
    for reason in (stopped, closed):
        assert WORDS[puller.kind]["down"] in reason


async def test_a_pinned_tag_present_is_not_pulled_again_but_latest_is(
    registry: Registry, puller: Puller
) -> None:
    pinned, latest = _push(registry, puller), _push(registry, puller, "latest")
    for image in (pinned, latest):
        await puller.pull(image, _auth(registry))
    wrong = _auth(registry, "not-the-password")

    await puller.pull(pinned, wrong)  # present: the registry is not asked
    with pytest.raises(errors.PermanentError, match="unauthorized"):
        await puller.pull(latest, wrong)  # expected to move: always asked


async def test_a_create_pulls_a_missing_image_with_the_deployments_credential(
    registry: Registry, puller: Puller
) -> None:
    image = _push(registry, puller)
    puller.pulled.append(image)
    spec = ContainerSpec(uuid.uuid4(), uuid.uuid4(), image, None, auth=_auth(registry))

    made = await puller.runtime.ensure(puller.node, spec)

    assert puller.api.inspect_container(made)["State"]["Running"]
    refused = ContainerSpec(uuid.uuid4(), uuid.uuid4(), _push(registry, puller), None)
    puller.pulled.append(refused.image)
    with pytest.raises(errors.PermanentError, match=r"unauthorized \(no credential given\)"):
        await puller.runtime.ensure(puller.node, refused)
