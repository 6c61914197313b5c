"""The hollow runtime keeps the runtime port's contract, so a scale benchmark measures the real
controller against an engine that behaves like one: idempotent ensure by name, a listing of
our containers per node, stop that removes (and accepts a container already gone), capacity
from info(), and a down node that is unknown rather than empty. In memory only, no I/O."""

from __future__ import annotations

import inspect
import uuid
from dataclasses import dataclass, replace

import pytest

from controller import errors
from controller.model import ContainerState, NodeRecord, NodeStatus, Resources
from controller.runspec import RunSpec, VolumeSpec
from controller.runtime import ContainerSpec, Runtime
from controller.runtime.hollow import HollowNode, HollowRuntime, hollow_url

DEPLOYMENT = uuid.UUID(int=10)
OTHER_DEPLOYMENT = uuid.UUID(int=11)


def record(name: str) -> NodeRecord:
    return NodeRecord(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        docker_url=hollow_url(name),
        status=NodeStatus.READY,
    )


def spec(n: int, deployment: uuid.UUID = DEPLOYMENT) -> ContainerSpec:
    return ContainerSpec(
        replica_id=uuid.UUID(int=100 + n),
        deployment_id=deployment,
        image="fog-test/busybox:latest",
        resources=Resources(0.5, 512, 0, 1),
        spec_hash="abc123",
    )


A, B = record("node-0001"), record("node-0002")


@pytest.fixture
def runtime() -> HollowRuntime:
    return HollowRuntime(
        {A.docker_url: HollowNode(cpu_cores=4, memory_mb=8192), B.docker_url: HollowNode()}
    )


def test_is_a_runtime(runtime: HollowRuntime) -> None:
    """The benchmarks put it where the Docker runtime goes: every operation of the `Runtime`
    port must be there, awaitable, taking the same parameters (mypy does not read tests)."""
    operations = [n for n, v in vars(Runtime).items() if callable(v) and not n.startswith("_")]
    assert {
        "info",
        "list",
        "ensure",
        "stop",
        "pull",
        "host_ports",
        "remove_volumes",
        "disk_usage",
        "close",
    } <= set(operations)
    for name in operations:
        port_fn = getattr(Runtime, name)
        ours = getattr(runtime, name, None)
        assert ours is not None, f"HollowRuntime lacks {name}"
        assert inspect.iscoroutinefunction(ours), f"HollowRuntime.{name} is not async"
        wanted = list(inspect.signature(port_fn).parameters)[1:]  # without self
        assert list(inspect.signature(ours).parameters) == wanted, name


async def test_info_reports_the_configured_capacity(runtime: HollowRuntime) -> None:
    info = await runtime.info(A)
    assert (info.cpu_cores, info.memory_mb) == (4, 8192)
    assert (await runtime.info(B)).cpu_cores == HollowNode().cpu_cores
    # As docker info says them on a common machine: labels fog.io/arch=amd64, fog.io/os=linux.
    assert (info.arch, info.os) == ("x86_64", "linux")


async def test_ensure_is_idempotent_by_container_name(runtime: HollowRuntime) -> None:
    first = await runtime.ensure(A, spec(1))
    again = await runtime.ensure(A, spec(1))
    assert first == again
    assert runtime.count() == 1


@dataclass(frozen=True, slots=True)
class _Forged(ContainerSpec):
    """A spec whose name is not derived from its replica id: the only way two replicas can
    claim one name (a stranger's container, or a bug), which must never be adopted."""

    forged_name: str = ""

    @property
    def name(self) -> str:
        return self.forged_name


async def test_a_name_held_by_another_replica_is_a_conflict(runtime: HollowRuntime) -> None:
    await runtime.ensure(A, spec(1))
    clash = _Forged(uuid.UUID(int=999), DEPLOYMENT, "x", None, forged_name=spec(1).name)
    with pytest.raises(errors.ConflictError):
        await runtime.ensure(A, clash)
    assert runtime.count() == 1


async def test_list_returns_that_nodes_containers_running(runtime: HollowRuntime) -> None:
    ids = {await runtime.ensure(A, spec(1)), await runtime.ensure(A, spec(2))}
    await runtime.ensure(B, spec(3))
    view = await runtime.list(A)
    assert view.complete
    assert view.node_id == A.id
    assert {c.id for c in view.containers} == ids
    c = next(c for c in view.containers if c.replica_id == spec(1).replica_id)
    assert c.state is ContainerState.RUNNING
    assert (c.name, c.deployment_id, c.node_id, c.spec_hash) == (
        spec(1).name,
        DEPLOYMENT,
        A.id,
        "abc123",
    )
    assert len((await runtime.list(B)).containers) == 1


async def test_list_can_be_narrowed_to_one_deployment(runtime: HollowRuntime) -> None:
    await runtime.ensure(A, spec(1))
    await runtime.ensure(A, spec(2, OTHER_DEPLOYMENT))
    view = await runtime.list(A, OTHER_DEPLOYMENT)
    assert [c.replica_id for c in view.containers] == [spec(2).replica_id]
    assert (await runtime.list(A, uuid.UUID(int=12))).containers == ()


async def test_stop_removes_by_id_or_name_and_gone_is_success(runtime: HollowRuntime) -> None:
    by_id = await runtime.ensure(A, spec(1))
    await runtime.ensure(A, spec(2))
    await runtime.stop(A, by_id, 10)
    await runtime.stop(A, spec(2).name, 10)
    assert (await runtime.list(A)).containers == ()
    await runtime.stop(A, by_id, 10)  # already gone
    assert runtime.count() == 0


async def test_a_down_node_is_unknown_not_empty(runtime: HollowRuntime) -> None:
    await runtime.ensure(A, spec(1))
    runtime.set_down(A.docker_url)
    view = await runtime.list(A)
    assert not view.complete
    assert view.error
    with pytest.raises(errors.TransientError):
        await runtime.info(A)
    with pytest.raises(errors.TransientError):
        await runtime.ensure(A, spec(2))
    with pytest.raises(errors.TransientError):
        await runtime.stop(A, spec(1).name, 0)
    runtime.set_down(A.docker_url, down=False)
    assert len((await runtime.list(A)).containers) == 1


async def test_an_unknown_node_is_unreachable(runtime: HollowRuntime) -> None:
    with pytest.raises(errors.TransientError):
        await runtime.info(record("node-9999"))


def test_only_hollow_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="hollow://"):
        HollowRuntime({"unix:///var/run/docker.sock": HollowNode()})


async def test_disk_usage_reports_written_bytes_and_the_replicas_limit(
    runtime: HollowRuntime,
) -> None:
    first = await runtime.ensure(A, spec(1))
    await runtime.ensure(A, spec(2))
    runtime.set_written(A.docker_url, first, 3 * 1024**3)
    used = {u.container_id: u for u in await runtime.disk_usage(A) or ()}
    assert used[first].written_bytes == 3 * 1024**3
    assert used[first].limit_gb == 1
    assert used[first].replica_id == uuid.UUID(int=101)
    assert sorted(u.written_bytes for u in used.values()) == [0, 3 * 1024**3]
    assert await runtime.disk_usage(B) == ()
    runtime.set_down(A.docker_url)
    assert await runtime.disk_usage(A) is None


async def test_pull_fetches_unless_refused_and_a_down_node_is_unreachable(
    runtime: HollowRuntime,
) -> None:
    await runtime.pull(A, "reg:5000/web:2", None)
    assert runtime.images(A.docker_url) == {"reg:5000/web:2"}
    runtime.refuse("reg:5000/nope:1", "not found: manifest unknown")
    with pytest.raises(errors.PermanentError, match=r"^image pull failed: reg:5000/nope:1: not"):
        await runtime.pull(A, "reg:5000/nope:1", None)
    runtime.set_down(B.docker_url)
    with pytest.raises(errors.TransientError):
        await runtime.pull(B, "reg:5000/web:2", None)


async def test_host_ports_are_the_foreign_ones_set_and_unknown_when_down(
    runtime: HollowRuntime,
) -> None:
    assert await runtime.host_ports(A) == frozenset()
    runtime.set_foreign_ports(A.docker_url, frozenset({(18080, "tcp")}))
    assert await runtime.host_ports(A) == {(18080, "tcp")}
    runtime.set_down(A.docker_url)
    assert await runtime.host_ports(A) is None


async def test_named_volumes_outlive_their_replicas_until_removed(runtime: HollowRuntime) -> None:
    run = RunSpec(volumes=(VolumeSpec("/data", name="data"), VolumeSpec("/logs", name="logs")))
    made = await runtime.ensure(A, replace(spec(1), run=run))
    with pytest.raises(errors.PermanentError, match="in use"):
        await runtime.remove_volumes(A, DEPLOYMENT)
    await runtime.stop(A, made, 0)
    assert await runtime.remove_volumes(A, DEPLOYMENT) == 2
    assert await runtime.remove_volumes(A, DEPLOYMENT) == 0
