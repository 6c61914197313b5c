"""Every Docker call the controller makes, off the event loop, one client per node.

Why it looks the way it does:
- docker-py is blocking, so each call runs in a dedicated thread pool sized for all nodes
  (asyncio's default pool has only cpu+4 threads, which would cap a whole fog at ~6 calls).
  A per-node semaphore bounds calls in flight to `node_concurrency`, and the client's HTTP
  pool is sized to match, so requests never queue inside urllib3.
- A client built without an API version asks the engine for `/version` in its constructor and
  raises when the engine is down; we pin the version and build clients lazily.
- Listing uses the low-level API filtered by our label: `containers.list()` inspects each
  container and races with removals. Only containers that are not running are inspected, for
  their exit code, restart count and OOM flag.
- Library exceptions become `errors.TransientError` / `errors.PermanentError` here, with the
  engine's own message kept as the reason. A TLS failure an operator must fix (a certificate
  the other side does not accept, a key that does not load) is permanent, with a reason that
  says which side refused and which file to check; key material never enters a reason or a
  log line, paths at most.
- `EngineConnector` is the one place a client to an engine is made, for the runtime and the
  event streams alike, as `runtime.tls` decides: TLS with the node's certificates, a local
  socket as it is, plain TCP only when allowed.
- Podman serves the Docker API too (`podman system service`). Where it answers differently,
  the difference is keyed on what the engine says it is (`/version`, asked once per node and
  again after a failed probe), never on error text: see `EngineFlavour`.

`DockerRuntime` here is the port; beside it: `engine_calls` (clients, call and stop slots,
threads, retries), `engine_images` (pulls and their three failures), `engine_volumes` (a
deployment's named volumes), `engine_connect` (`EngineConnector`), `engine_errors` (`translate`),
`podman` (`EngineFlavour` and Podman's differences), `container_status` (listing and inspect
answers as `ObservedContainer` values), `inspect_cache`, `engine_storage` (whether an engine
can cap disk), `create_request` (what a create asks for).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
import structlog

from controller import errors
from controller.metrics import Metrics
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    MANAGED_BY_VALUE,
    EngineInfo,
    NodeRecord,
    NodeView,
    ObservedContainer,
)
from controller.runspec import host_path_refusal
from controller.runtime import ContainerSpec, container_status
from controller.runtime.create_request import container_options, host_options
from controller.runtime.engine_connect import (
    EngineConnector,
    close_socket_on_failed_connect,
)
from controller.runtime.engine_errors import engine_message, translate
from controller.runtime.engine_images import ImageCalls
from controller.runtime.engine_storage import EngineStorage
from controller.runtime.engine_volumes import VolumeCalls
from controller.runtime.inspect_cache import InspectCache
from controller.runtime.podman import (
    PODMAN_HEALTH_STATES,
    EngineFlavour,
    engine_flavour,
    unsupported_request,
)
from controller.settings import Settings
from controller.storage import DiskUse

log = structlog.get_logger(__name__)

T = TypeVar("T")

_MANAGED_FILTER = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}


class DockerRuntime(ImageCalls, VolumeCalls):
    """The runtime port over real Docker engines."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        super().__init__(settings, metrics)
        self._storage = EngineStorage()
        self._inspected = InspectCache()

    # --- the port --------------------------------------------------------------------------

    async def info(self, node: NodeRecord) -> EngineInfo:
        try:
            # Together: on Podman each takes ~0.4 s (both run conmon and runc to report them),
            # and the first probe must fit in its timeout on a busy host.
            raw, flavour = await asyncio.gather(
                self._unlimited(node, self._client(node).info), self._flavour(node)
            )
        except Exception as exc:
            self._flavours.pop((node.name, node.docker_url), None)
            self._storage.unreachable(node.docker_url)
            raise translate(exc, "probe", self._certs(node)) from exc
        driver, version, limits = self._storage.probed(node, raw)
        return EngineInfo(
            cpu_cores=float(raw.get("NCPU") or 0),
            memory_mb=int((raw.get("MemTotal") or 0) // (1024 * 1024)),
            storage_driver=driver,
            server_version=version,
            storage_limits=limits,
            engine=flavour.value,
            # Podman's Docker-compatible /info answers these two as dockerd does.
            arch=str(raw.get("Architecture") or ""),
            os=str(raw.get("OSType") or ""),
        )

    async def host_ports(self, node: NodeRecord) -> frozenset[tuple[int, str]] | None:
        try:
            client = self._client(node)
            raw = await self._raw(node, client.containers, all=False)
        except Exception as exc:
            reason = translate(exc, "list ports", self._certs(node)).reason
            log.warning("host_ports_failed", node=node.name, error=reason)
            return None
        return container_status.foreign_host_ports(raw)

    async def disk_usage(self, node: NodeRecord) -> tuple[DiskUse, ...] | None:
        try:
            client = self._client(node)
            raw = await self._raw(
                node, client.containers, all=False, size=True, filters=_MANAGED_FILTER
            )
        except Exception as exc:
            reason = translate(exc, "list sizes", self._certs(node)).reason
            log.warning("storage_check_failed", node=node.name, error=reason)
            return None
        found = (container_status.disk_use(item) for item in raw)
        return tuple(use for use in found if use is not None)

    async def list(self, node: NodeRecord, deployment_id: uuid.UUID | None = None) -> NodeView:
        observed_at = datetime.now(UTC)
        filters: dict[str, Any] = _MANAGED_FILTER
        if deployment_id is not None:
            # Several label filters must all match: ours, and of this deployment.
            filters = {"label": [_MANAGED_FILTER["label"], f"{LABEL_DEPLOYMENT}={deployment_id}"]}
        try:
            client = self._client(node)  # may refuse (runtime.tls): this never raises
            raw = await self._raw(node, client.containers, all=True, filters=filters)
            listed_by = time.monotonic()
            health: dict[str, str] = {}
            if self._flavours.get((node.name, node.docker_url)) is EngineFlavour.PODMAN:
                health = await self._podman_health(node, filters, raw)
        except Exception as exc:
            reason = translate(exc, "list", self._certs(node)).reason
            log.warning("node_list_failed", node=node.name, error=reason)
            return NodeView(node.id, complete=False, observed_at=observed_at, error=reason)
        try:
            found = await asyncio.gather(*(self._observe(node, item, listed_by) for item in raw))
        except Exception as exc:
            # An engine that lists but cannot inspect is going away or unwell: a half-read
            # node is unknown, not a node whose containers died.
            reason = translate(exc, "inspect", self._certs(node)).reason
            log.warning("node_list_failed", node=node.name, error=reason)
            return NodeView(node.id, complete=False, observed_at=observed_at, error=reason)
        containers = tuple(
            replace(c, health=health[c.id]) if c.id in health else c for c in found if c is not None
        )
        return NodeView(node.id, complete=True, observed_at=observed_at, containers=containers)

    async def _podman_health(
        self, node: NodeRecord, filters: dict[str, Any], listed: Sequence[Mapping[str, Any]]
    ) -> dict[str, str]:
        """Container id -> health for the states that matter, on Podman: its listing writes no
        health into `Status` (4.3: "Up 2 minutes" while unhealthy), but filters on it. A
        healthy container reads as one without HEALTHCHECK; both count as serving."""
        if not any(item.get("State") == "running" for item in listed):
            return {}
        client = self._client(node)
        found: dict[str, str] = {}
        for state in PODMAN_HEALTH_STATES:
            matching = await self._raw(
                node, client.containers, all=True, quiet=True, filters={**filters, "health": state}
            )
            found.update((str(item["Id"]), state) for item in matching)
        return found

    async def _observe(
        self, node: NodeRecord, item: dict[str, Any], listed_by: float
    ) -> ObservedContainer | None:
        container = container_status.listed(node.id, item)
        if not container_status.needs_inspect(container):
            return container
        try:
            detail = await self._recent_inspect(
                node, container.id, container.uptime_seconds, listed_by
            )
        except docker.errors.NotFound:
            return None  # removed between list and inspect
        return container_status.inspected(container, detail)

    async def _recent_inspect(
        self, node: NodeRecord, container_id: str, uptime: float | None, listed_by: float
    ) -> dict[str, Any]:
        """Inspect, or reuse the last answer for a container that is running and has not
        restarted since that inspect was sent: the listing's uptime (rounded down, so never
        more than the truth) is at least the time from then to the listing's return, where a
        restart after the inspect would show less. Without it a scale-down right after a
        scale-up inspects every replica twice before its first stop (the resync pass's
        listing, then the reconcile's), in the node's call slots."""
        held = self._inspected.still(container_id, uptime, listed_by)
        if held is not None:
            return held
        sent = time.monotonic()
        detail: dict[str, Any] = await self._raw(
            node, self._client(node).inspect_container, container_id
        )
        self._inspected.keep(container_id, sent, detail)
        return detail

    async def ensure(self, node: NodeRecord, spec: ContainerSpec) -> str:
        client = self._client(node)
        try:
            flavour = await self._flavour(node)
        except Exception as exc:
            raise translate(exc, "identify engine", self._certs(node)) from exc
        refused = unsupported_request(flavour, spec) or host_path_refusal(
            spec.run, self._settings.allowed_host_paths
        )
        if refused is not None:
            raise errors.PermanentError(refused)
        await self._ensure_volumes(node, spec)
        container_id = await self._create(node, spec)
        try:
            await self._call(node, "start container", client.start, container_id)
        except (errors.ControllerError, docker.errors.NotFound) as exc:
            reason = exc.reason if isinstance(exc, errors.ControllerError) else engine_message(exc)
            # A container that cannot start (bad device request, bad command) is removed now:
            # the replica fails and its replacement gets a fresh name.
            if isinstance(exc, errors.PermanentError | docker.errors.NotFound):
                await self._remove_quietly(node, container_id)
                raise errors.PermanentError(f"container start failed: {reason}") from exc
            raise
        return container_id

    async def _create(self, node: NodeRecord, spec: ContainerSpec) -> str:
        client = self._client(node)
        pulled = False
        sized = spec.resources is not None and spec.resources.storage_gb > 0
        with_storage = sized and self._storage.may_cap(node.docker_url)
        refused: str | None = None  # the engine's words for a create with the limit
        while True:
            try:
                created = await self._call(
                    node,
                    "create container",
                    client.create_container,
                    **self._create_args(client, spec, with_storage=with_storage),
                )
            except docker.errors.NotFound as exc:
                if pulled or "image" not in engine_message(exc).lower():
                    raise errors.PermanentError(f"create container: {engine_message(exc)}") from exc
                await self._pull(node, spec.image, spec.auth)
                pulled = True
                continue
            except errors.ControllerError as exc:
                if "conflict" in exc.reason.lower() or "already in use" in exc.reason:
                    return await self._adopt(node, spec)
                if await self._taken_on_podman(node, spec):
                    return await self._adopt(node, spec)
                answered = isinstance(exc.__cause__, docker.errors.APIError)
                if with_storage and answered and not isinstance(exc, errors.ConflictError):
                    # The engine refused: try once without the limit, which tells whether the
                    # limit was what it refused, whatever words it used.
                    with_storage, refused = False, exc.reason
                    continue
                raise
            if refused is not None:
                # Accepted without the limit: this engine cannot cap disk (xfs without
                # pquota, say, which `docker info` does not show), so it is monitored.
                self._storage.refused(node, refused)
            return str(created["Id"])

    def _create_args(
        self, client: docker.APIClient, spec: ContainerSpec, *, with_storage: bool
    ) -> dict[str, Any]:
        host = host_options(self._settings, spec, with_storage=with_storage)
        return {
            **container_options(self._settings, spec),
            "host_config": client.create_host_config(**host),
        }

    async def _taken_on_podman(self, node: NodeRecord, spec: ContainerSpec) -> bool:
        """After a failed create on Podman, whether our container name is taken: Podman answers
        a taken name with HTTP 500 like any other failure, so the engine is asked, by name."""
        if self._flavours.get((node.name, node.docker_url)) is not EngineFlavour.PODMAN:
            return False
        try:
            await self._call(
                node, "inspect container", self._client(node).inspect_container, spec.name
            )
        except docker.errors.NotFound:
            return False
        return True

    async def _adopt(self, node: NodeRecord, spec: ContainerSpec) -> str:
        """Our name is taken: ours (a create retried after a crash) or a stranger's (conflict)."""
        try:
            detail = await self._call(
                node, "inspect container", self._client(node).inspect_container, spec.name
            )
        except docker.errors.NotFound as exc:
            raise errors.TransientError(f"name {spec.name} taken, then gone: retry") from exc
        labels = (detail.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_REPLICA) != str(spec.replica_id) or labels.get(LABEL_MANAGED_BY) != (
            MANAGED_BY_VALUE
        ):
            raise errors.ConflictError(
                f"a container named {spec.name} exists without our labels; not adopting it"
            )
        log.info("container_adopted", node=node.name, container=spec.name)
        return str(detail["Id"])

    async def stop(self, node: NodeRecord, container: str, timeout_seconds: float) -> None:
        """The engine's own stop (the image's stop signal, the grace, then SIGKILL), then a
        remove; with no grace a force-remove alone, which kills it the same way in one call."""
        if int(timeout_seconds) > 0:
            client = self._client(node)
            try:
                await self._stop_call(node, client.stop, container, timeout=int(timeout_seconds))
            except docker.errors.NotFound:
                return
        await self._remove(node, container)

    async def _remove(self, node: NodeRecord, container: str) -> None:
        try:
            await self._call(
                node,
                "remove container",
                self._client(node).remove_container,
                container,
                force=True,
            )
        except docker.errors.NotFound:
            return
        except errors.PermanentError as exc:
            if "already in progress" in exc.reason:
                return
            raise

    async def _remove_quietly(self, node: NodeRecord, container: str) -> None:
        try:
            await self._remove(node, container)
        except errors.ControllerError as exc:
            log.warning("container_remove_failed", node=node.name, error=exc.reason)


__all__ = [
    "DockerRuntime",
    "EngineConnector",
    "EngineFlavour",
    "close_socket_on_failed_connect",
    "engine_flavour",
    "translate",
    "unsupported_request",
]
