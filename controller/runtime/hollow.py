"""Hollow nodes: the runtime port in memory, for benchmarks and scale tests ONLY.

We cannot start a thousand Docker engines on one machine, so, as Kubernetes does with kubemark,
a scale benchmark gives the real controller (real store, planner, scheduler, work queue) a
runtime whose nodes exist only in this process: `info` reports the capacity a node was given,
`ensure` makes a container that is "running" at once, `list` returns it as an
`ObservedContainer`, `stop` removes it, `disk_usage` reports what `set_written` wrote, `pull`
succeeds unless the image is refused (`refuse`), `host_ports` reports what `set_foreign_ports`
set, and the named volumes `ensure` made are counted away by `remove_volumes`. Engine cost is
therefore zero, so what a benchmark measures is the controller's own cost.

Nothing in the daemon selects this class: `controller.cli` builds `DockerRuntime` and only
`DockerRuntime`, whatever a node's URL says. Hollow nodes are addressed as `hollow://<name>`
(see `hollow_url`), a scheme no Docker client accepts, so a hollow node row reaching a real
controller fails loudly instead of pretending to work.

It keeps the contract the reconciler relies on: `ensure` is idempotent by container name (the
name derives from the replica id), a name held by another replica is a conflict, `stop` of a
container already gone is success, and a node marked down (`set_down`) raises
`TransientError` from `info`/`ensure`/`stop` and lists as `complete=False`.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from controller import errors
from controller.model import (
    ContainerState,
    EngineInfo,
    NodeRecord,
    NodeView,
    ObservedContainer,
)
from controller.runspec import RegistryAuth
from controller.runtime import ContainerSpec
from controller.storage import DiskUse, storage_limits

HOLLOW_SCHEME = "hollow://"


def hollow_url(name: str) -> str:
    """The engine URL of hollow node `name` (e.g. `hollow://node-0001`)."""
    return f"{HOLLOW_SCHEME}{name}"


@dataclass(frozen=True, slots=True)
class HollowNode:
    """What a hollow engine says about itself in `info()`."""

    cpu_cores: float = 8.0
    memory_mb: int = 32768
    storage_driver: str = "hollow"
    server_version: str = "hollow"
    # As `docker info` says them (Architecture, OSType): the node's fog.io/arch and fog.io/os.
    arch: str = "x86_64"
    os: str = "linux"


class _Engine:
    """One hollow engine's containers, indexed by name, id and deployment."""

    __slots__ = (
        "by_deployment",
        "by_id",
        "by_name",
        "down",
        "foreign_ports",
        "images",
        "limits",
        "listing",
        "spec",
        "specs",
        "volumes",
        "written",
    )

    def __init__(self, spec: HollowNode) -> None:
        self.spec = spec
        self.down = False
        self.by_name: dict[str, ObservedContainer] = {}
        self.by_id: dict[str, str] = {}  # container id -> name
        self.by_deployment: dict[uuid.UUID | None, dict[str, ObservedContainer]] = {}
        # The last full listing, kept until the next change: a thousand nodes are listed on
        # every pass, and rebuilding an unchanged tuple would charge the engine's cost to us.
        self.listing: tuple[ObservedContainer, ...] | None = None
        # Per container id: its storage_gb label, and the bytes its writable layer holds.
        self.limits: dict[str, int] = {}
        self.written: dict[str, int] = {}
        self.images: set[str] = set()  # pulled
        # What each create was asked for, by container name (tests read its run and auth).
        self.specs: dict[str, ContainerSpec] = {}
        self.volumes: dict[uuid.UUID, set[str]] = {}  # per deployment: its named volumes
        self.foreign_ports: frozenset[tuple[int, str]] = frozenset()  # not our containers'

    def add(self, c: ObservedContainer) -> None:
        self.by_name[c.name] = c
        self.by_id[c.id] = c.name
        self.by_deployment.setdefault(c.deployment_id, {})[c.name] = c
        self.listing = None

    def remove(self, ref: str) -> bool:
        name = self.by_id.get(ref, ref)
        c = self.by_name.pop(name, None)
        if c is None:
            return False
        del self.by_id[c.id]
        self.specs.pop(name, None)
        self.limits.pop(c.id, None)
        self.written.pop(c.id, None)
        mine = self.by_deployment.get(c.deployment_id)
        if mine is not None:
            mine.pop(name, None)
            if not mine:
                del self.by_deployment[c.deployment_id]
        self.listing = None
        return True


class HollowRuntime:
    """The runtime port over in-memory nodes (benchmarks and scale tests only).

    `latency_seconds` adds a sleep to every call, to model an engine's round trip; with the
    default (0) a call completes without yielding, so a benchmark charges the engine nothing.
    `clock` stamps listings (a unit test drives the reconciler and the engine on one clock).
    """

    def __init__(
        self,
        nodes: Mapping[str, HollowNode] | None = None,
        *,
        latency_seconds: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._engines: dict[str, _Engine] = {}
        self._latency = latency_seconds
        self._clock = clock or (lambda: datetime.now(UTC))
        # Images whose creates the engines refuse, with the engine's words.
        self._refused: dict[str, str] = {}
        self.calls: Counter[str] = Counter()  # port method name -> calls, for reports
        # Every pull asked for, in order: (node name, image, credential).
        self.pulls: list[tuple[str, str, RegistryAuth | None]] = []
        self.stop_timeouts: Counter[float] = Counter()  # the graces stops were given
        for url, spec in (nodes or {}).items():
            self.add_node(url, spec)

    # --- the simulated fog ---------------------------------------------------------------

    def add_node(self, docker_url: str, spec: HollowNode | None = None) -> None:
        if not docker_url.startswith(HOLLOW_SCHEME):
            raise ValueError(f"hollow nodes are addressed {HOLLOW_SCHEME}<name>: {docker_url!r}")
        self._engines[docker_url] = _Engine(spec or HollowNode())

    def set_down(self, docker_url: str, down: bool = True) -> None:
        """Make a node unreachable (or reachable again); its containers are kept."""
        self._engine_of(docker_url).down = down

    def set_written(self, docker_url: str, container_id: str, n_bytes: int) -> None:
        """What a container's writable layer holds now (its SizeRw)."""
        engine = self._engine_of(docker_url)
        if container_id not in engine.by_id:
            raise KeyError(f"no container {container_id} on {docker_url}")
        engine.written[container_id] = n_bytes

    def set_foreign_ports(self, docker_url: str, ports: frozenset[tuple[int, str]]) -> None:
        """The node ports (port, protocol) containers that are not ours publish on a node."""
        self._engine_of(docker_url).foreign_ports = ports

    def images(self, docker_url: str) -> frozenset[str]:
        """The images `pull` fetched on a node."""
        return frozenset(self._engine_of(docker_url).images)

    def spec_of(self, docker_url: str, name: str) -> ContainerSpec:
        """What the create of container `name` on a node was asked for."""
        return self._engine_of(docker_url).specs[name]

    def refuse(self, image: str, words: str) -> None:
        """Every engine refuses to pull `image` or create containers of it, saying `words` (as
        an engine answers a create of an image it cannot pull)."""
        self._refused[image] = words

    def allow(self, image: str) -> None:
        """`image` is no longer refused."""
        self._refused.pop(image, None)

    def exit(self, container_id: str, code: int, at: datetime) -> None:
        """The container exits with `code` at `at` (its process died; nothing restarts it)."""
        for engine in self._engines.values():
            name = engine.by_id.get(container_id)
            if name is not None:
                c = engine.by_name[name]
                engine.add(
                    replace(
                        c,
                        state=ContainerState.EXITED,
                        exit_code=code,
                        finished_at=at,
                        inspected=True,
                    )
                )
                return
        raise KeyError(f"no container {container_id}")

    def containers(self, docker_url: str | None = None) -> list[ObservedContainer]:
        """Every container on one node, or on all of them."""
        engines = [self._engine_of(docker_url)] if docker_url else self._engines.values()
        return [c for e in engines for c in e.by_name.values()]

    def count(self) -> int:
        return sum(len(e.by_name) for e in self._engines.values())

    def _engine_of(self, docker_url: str) -> _Engine:
        engine = self._engines.get(docker_url)
        if engine is None:
            raise KeyError(f"no hollow node at {docker_url!r}")
        return engine

    async def _reach(self, node: NodeRecord, what: str) -> _Engine:
        self.calls[what] += 1
        if self._latency > 0:
            await asyncio.sleep(self._latency)
        engine = self._engines.get(node.docker_url)
        if engine is None or engine.down:
            raise errors.TransientError(f"{what}: engine unreachable: hollow node {node.name}")
        return engine

    # --- the port --------------------------------------------------------------------------

    async def info(self, node: NodeRecord) -> EngineInfo:
        spec = (await self._reach(node, "info")).spec
        return EngineInfo(
            cpu_cores=spec.cpu_cores,
            memory_mb=spec.memory_mb,
            storage_driver=spec.storage_driver,
            server_version=spec.server_version,
            storage_limits=storage_limits(spec.storage_driver),
            arch=spec.arch,
            os=spec.os,
        )

    async def list(self, node: NodeRecord, deployment_id: uuid.UUID | None = None) -> NodeView:
        observed_at = self._clock()
        try:
            engine = await self._reach(node, "list")
        except errors.TransientError as exc:
            return NodeView(node.id, complete=False, observed_at=observed_at, error=exc.reason)
        if deployment_id is not None:
            mine = engine.by_deployment.get(deployment_id)
            found = tuple(mine.values()) if mine else ()
        else:
            if engine.listing is None:
                engine.listing = tuple(engine.by_name.values())
            found = engine.listing
        return NodeView(node.id, complete=True, observed_at=observed_at, containers=found)

    async def ensure(self, node: NodeRecord, spec: ContainerSpec) -> str:
        engine = await self._reach(node, "ensure")
        refused = self._refused.get(spec.image)
        if refused is not None:
            raise errors.PermanentError(refused)
        existing = engine.by_name.get(spec.name)
        if existing is not None:
            if existing.replica_id != spec.replica_id:
                raise errors.ConflictError(
                    f"a container named {spec.name} exists without our labels; not adopting it"
                )
            return existing.id
        container = ObservedContainer(
            id=secrets.token_hex(32),
            name=spec.name,
            node_id=node.id,
            state=ContainerState.RUNNING,
            deployment_id=spec.deployment_id,
            replica_id=spec.replica_id,
            image=spec.image,
            spec_hash=spec.spec_hash or None,
        )
        engine.add(container)
        engine.specs[spec.name] = spec
        named = spec.run.named_volumes()
        if named:
            engine.volumes.setdefault(spec.deployment_id, set()).update(named)
        if spec.resources is not None and spec.resources.storage_gb > 0:
            engine.limits[container.id] = spec.resources.storage_gb
        return container.id

    async def stop(self, node: NodeRecord, container: str, timeout_seconds: float) -> None:
        engine = await self._reach(node, "stop")
        self.stop_timeouts[timeout_seconds] += 1
        engine.remove(container)

    async def pull(self, node: NodeRecord, image: str, auth: RegistryAuth | None) -> None:
        engine = await self._reach(node, "pull")
        self.pulls.append((node.name, image, auth))
        refused = self._refused.get(image)
        if refused is not None:
            raise errors.PermanentError(f"image pull failed: {image}: {refused}")
        engine.images.add(image)

    async def host_ports(self, node: NodeRecord) -> frozenset[tuple[int, str]] | None:
        try:
            engine = await self._reach(node, "host_ports")
        except errors.TransientError:
            return None
        return engine.foreign_ports

    async def remove_volumes(self, node: NodeRecord, deployment_id: uuid.UUID) -> int:
        engine = await self._reach(node, "remove_volumes")
        if engine.by_deployment.get(deployment_id):
            # As an engine refuses to remove a volume a container still mounts.
            raise errors.PermanentError(
                f"remove volumes of {deployment_id}: volume is in use by its containers"
            )
        return len(engine.volumes.pop(deployment_id, ()))

    async def disk_usage(self, node: NodeRecord) -> tuple[DiskUse, ...] | None:
        try:
            engine = await self._reach(node, "disk_usage")
        except errors.TransientError:
            return None
        return tuple(
            DiskUse(
                container_id=c.id,
                replica_id=c.replica_id,
                deployment_id=c.deployment_id,
                written_bytes=engine.written.get(c.id, 0),
                limit_gb=engine.limits.get(c.id),
            )
            for c in engine.by_name.values()
            if c.replica_id is not None and c.deployment_id is not None
        )

    async def close(self) -> None:
        """Nothing to release; the fog stays readable for the benchmark's checks."""
