"""DockerRuntime runs a deployment's full spec on real engines (dockerd and Podman): the
container has the env, entrypoint, command, labels, stop timeout and healthcheck asked for; a
service on the host network answers on 127.0.0.1; a named volume keeps what one replica wrote
for the next replica on the node until `remove_volumes`; host paths mount only where allowed.
Published ports and the ports of containers that are not ours need a bridge: they run on the
engine that owns one (`bridged`), dockerd only (the harness keeps Podman off CNI bridges).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import docker.errors
import pytest

from controller import errors
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    NodeRecord,
    NodeStatus,
)
from controller.runspec import HealthSpec, PortSpec, RunSpec, VolumeSpec
from controller.runtime import ContainerSpec
from controller.runtime.create_request import LABEL_VOLUME, volume_name
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from tests.conftest import KindClusters
from tests.harness.bridge import HostBridge
from tests.harness.engines import (
    API_VERSION,
    DEFAULT_ENGINE_KIND,
    ENGINE_KINDS,
    TEST_IMAGE,
    TEST_LABEL,
    Cluster,
    free_port,
    wait_until,
)
from tests.harness.fleet import remove_managed_containers, remove_managed_volumes

pytestmark = pytest.mark.docker

SECOND = 1_000_000_000
# Runs until SIGTERM, then exits at once (PID 1 ignores signals it has no handler for).
IDLE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'


@dataclass
class On:
    """A runtime and one node of an engine kind, with a client of the harness's own."""

    runtime: DockerRuntime
    node: NodeRecord
    api: docker.APIClient
    kind: str

    def spec(self, run: RunSpec, deployment: uuid.UUID | None = None) -> ContainerSpec:
        return ContainerSpec(uuid.uuid4(), deployment or uuid.uuid4(), TEST_IMAGE, None, run=run)

    def exec(self, container: str, *cmd: str) -> str:
        made = self.api.exec_create(container, list(cmd))
        out: bytes = self.api.exec_start(made["Id"])
        return out.decode()


@contextlib.asynccontextmanager
async def _on(cluster: Cluster, kind: str, **settings: object) -> AsyncIterator[On]:
    network = ENGINE_KINDS[kind].container_network if kind in ENGINE_KINDS else ""
    runtime = DockerRuntime(
        Settings(
            database_url="sqlite+aiosqlite:///unused.db",
            container_network=network,
            docker_timeout_seconds=30,
            **settings,
        )
    )
    engine = cluster.engines[0]
    node = NodeRecord(uuid.uuid4(), engine.name, engine.url, NodeStatus.READY)
    await runtime.info(node)  # as the heartbeat does: the runtime learns which engine it is
    api = docker.APIClient(base_url=engine.url, version=API_VERSION, timeout=60)
    try:
        yield On(runtime, node, api, kind)
    finally:
        await runtime.close()
        api.close()
        remove_managed_containers(cluster.urls)
        remove_managed_volumes(cluster.urls)


KINDS = [pytest.param(DEFAULT_ENGINE_KIND, id="docker"), pytest.param("podman", id="podman")]


@pytest.fixture(params=KINDS)
async def on(request: pytest.FixtureRequest, kind_clusters: KindClusters) -> AsyncIterator[On]:
    cluster = kind_clusters.get(request.param)
    cluster.ensure_running()
    async with _on(cluster, request.param) as made:
        yield made


@pytest.fixture
async def on_bridge(bridged: tuple[Cluster, HostBridge]) -> AsyncIterator[On]:
    async with _on(bridged[0], "bridged") as made:
        yield made


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        body: bytes = answer.read()
        return body.decode()


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        _get(url)
        return True
    return False


def _serve(port: str, page: str) -> tuple[str, ...]:
    """A shell line: write `page` as the index page of its own directory, then run busybox
    httpd on `port` ("PORT" or "127.0.0.1:PORT") in the foreground."""
    home = f"/www/{port.replace(':', '-')}"
    return (
        f"mkdir -p {home} && echo {page} > {home}/index.html && exec httpd -f -p {port} -h {home}",
    )


async def test_a_full_spec_is_what_the_engine_runs(on: On) -> None:
    health = HealthSpec(("CMD-SHELL", "test -e /tmp"), 30, 5, 4, 2)
    run = RunSpec(
        entrypoint=("/bin/sh", "-c"),
        command=(f'echo "$SITE" > /tmp/site; {IDLE}',),
        env=(("LOG_LEVEL", "debug"), ("SITE", "north")),
        labels=(("team", "edge"),),
        stop_grace_seconds=7,
        healthcheck=health,
    )
    spec = on.spec(run)

    made = await on.runtime.ensure(on.node, spec)

    config = on.api.inspect_container(made)["Config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == list(run.command or ())
    assert {"LOG_LEVEL=debug", "SITE=north"} <= set(config["Env"])
    assert config["Labels"]["team"] == "edge"
    assert config["Labels"][LABEL_DEPLOYMENT] == str(spec.deployment_id)
    assert config["StopTimeout"] == 7
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test -e /tmp"],
        "Interval": 30 * SECOND,
        "Timeout": 5 * SECOND,
        "Retries": 4,
        "StartPeriod": 2 * SECOND,
    }
    wait_until(lambda: on.exec(made, "cat", "/tmp/site") == "north\n", 30, "the command's file")


async def test_a_service_on_the_host_network_answers_on_loopback(on: On) -> None:
    port = free_port()
    run = RunSpec(
        entrypoint=("/bin/sh", "-c"),
        command=_serve(f"127.0.0.1:{port}", "fog-$SITE"),
        env=(("SITE", "north"),),
        network="host",
        ports=(PortSpec(port),),
    )
    await on.runtime.ensure(on.node, on.spec(run))

    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: _answers(url), 30, f"httpd on {url}")
    assert _get(url) == "fog-north\n"


async def test_a_named_volume_outlives_a_replica_until_removed(on: On) -> None:
    deployment = uuid.uuid4()
    data = (VolumeSpec("/data", name="data"),)
    writer = RunSpec(entrypoint=("/bin/sh", "-c"), command=(f"echo kept > /data/note; {IDLE}",))
    first = await on.runtime.ensure(on.node, on.spec(replace(writer, volumes=data), deployment))
    wait_until(lambda: on.exec(first, "cat", "/data/note") == "kept\n", 30, "the note")
    await on.runtime.stop(on.node, first, 5)

    second = await on.runtime.ensure(on.node, on.spec(RunSpec(volumes=data), deployment))

    assert on.exec(second, "cat", "/data/note") == "kept\n"
    engine_name = volume_name(deployment, "data")
    labels = on.api.inspect_volume(engine_name)["Labels"]
    assert labels[LABEL_MANAGED_BY] == MANAGED_BY_VALUE
    assert labels[LABEL_DEPLOYMENT] == str(deployment)
    assert labels[LABEL_VOLUME] == "data"
    with pytest.raises(errors.PermanentError) as in_use:
        await on.runtime.remove_volumes(on.node, deployment)
    assert "0 of 1 volumes removed" in in_use.value.reason
    assert "in use" in in_use.value.reason or "being used" in in_use.value.reason
    await on.runtime.stop(on.node, second, 5)
    assert await on.runtime.remove_volumes(on.node, deployment) == 1
    with pytest.raises(docker.errors.NotFound):
        on.api.inspect_volume(engine_name)
    assert await on.runtime.remove_volumes(on.node, deployment) == 0


async def test_replicas_created_together_share_one_volume(on: On) -> None:
    """Replicas of a deployment placed on one node are created at once: each asks for the
    volume, the engine makes it once and hands the others the same, and all mount it."""
    deployment = uuid.uuid4()
    run = RunSpec(volumes=(VolumeSpec("/data", name="data"),))
    made = await asyncio.gather(
        *(on.runtime.ensure(on.node, on.spec(run, deployment)) for _ in range(3))
    )
    on.exec(made[0], "touch", "/data/shared")
    for other in made[1:]:
        assert on.exec(other, "ls", "/data") == "shared\n"


async def test_a_volume_with_our_name_but_not_our_labels_is_not_mounted(on: On) -> None:
    deployment = uuid.uuid4()
    stranger = volume_name(deployment, "data")
    on.api.create_volume(stranger, labels={TEST_LABEL: "1"})
    try:
        with pytest.raises(errors.ConflictError, match="exists without our labels"):
            await on.runtime.ensure(
                on.node, on.spec(RunSpec(volumes=(VolumeSpec("/data", name="data"),)), deployment)
            )
        assert await on.runtime.remove_volumes(on.node, deployment) == 0
        assert on.api.inspect_volume(stranger)["Name"] == stranger
    finally:
        on.api.remove_volume(stranger, force=True)


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "site").write_text("north\n")
    return tmp_path


async def test_host_paths_mount_read_only_where_allowed_and_are_refused_elsewhere(
    kind_clusters: KindClusters, allowed: Path
) -> None:
    cluster = kind_clusters.get(DEFAULT_ENGINE_KIND)
    async with _on(cluster, DEFAULT_ENGINE_KIND, allowed_host_paths=(str(allowed),)) as on:
        cfg = RunSpec(volumes=(VolumeSpec("/cfg", host_path=str(allowed / "cfg"), read_only=True),))
        made = await on.runtime.ensure(on.node, on.spec(cfg))
        assert on.exec(made, "cat", "/cfg/site") == "north\n"
        assert "Read-only file system" in on.exec(made, "touch", "/cfg/new")

        root = RunSpec(volumes=(VolumeSpec("/host", host_path="/"),))
        with pytest.raises(errors.PermanentError) as refused:
            await on.runtime.ensure(on.node, on.spec(root))
        assert refused.value.reason == (
            f"host path / is not under FOG_ALLOWED_HOST_PATHS ({allowed})"
        )


async def test_a_published_port_answers_on_loopback_and_an_engine_chosen_one_too(
    on_bridge: On,
) -> None:
    host_port = free_port()
    run = RunSpec(
        entrypoint=("/bin/sh", "-c"),
        command=(f"{_serve('8080', 'fixed')[0]} & {_serve('8081', 'chosen')[0]}",),
        ports=(PortSpec(8080, host_port), PortSpec(8081, None)),
    )
    made = await on_bridge.runtime.ensure(on_bridge.node, on_bridge.spec(run))

    fixed = f"http://127.0.0.1:{host_port}/"
    wait_until(lambda: _answers(fixed), 30, f"the published port {fixed}")
    assert _get(fixed) == "fixed\n"
    bound = on_bridge.api.inspect_container(made)["NetworkSettings"]["Ports"]["8081/tcp"]
    chosen = f"http://127.0.0.1:{bound[0]['HostPort']}/"
    assert bound[0]["HostIp"] == "127.0.0.1"
    wait_until(lambda: _answers(chosen), 30, f"the engine-chosen port {chosen}")
    assert _get(chosen) == "chosen\n"


async def test_host_ports_are_the_ones_containers_not_ours_publish(on_bridge: On) -> None:
    ours, theirs = free_port(), free_port()
    await on_bridge.runtime.ensure(
        on_bridge.node, on_bridge.spec(RunSpec(ports=(PortSpec(8080, ours),)))
    )
    api = on_bridge.api
    foreign = api.create_container(
        TEST_IMAGE,
        ports=[(53, "udp")],
        labels={TEST_LABEL: "foreign"},
        host_config=api.create_host_config(port_bindings={"53/udp": theirs}),
    )["Id"]
    try:
        api.start(foreign)
        held = await on_bridge.runtime.host_ports(on_bridge.node)
    finally:
        api.remove_container(foreign, force=True)

    assert held is not None
    assert (theirs, "udp") in held
    assert (ours, "tcp") not in held
    assert await on_bridge.runtime.host_ports(on_bridge.node) == held - {(theirs, "udp")}


async def test_host_ports_of_a_node_that_cannot_be_listed_are_unknown(tmp_path: Path) -> None:
    runtime = DockerRuntime(Settings(database_url="sqlite+aiosqlite:///unused.db"))
    node = NodeRecord(uuid.uuid4(), "gone", f"unix://{tmp_path}/none.sock", NodeStatus.READY)
    try:
        assert await runtime.host_ports(node) is None
    finally:
        await runtime.close()
