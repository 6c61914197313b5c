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
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import structlog
from docker.types import DeviceRequest
from docker.utils import parse_repository_tag
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller import errors
from controller.metrics import Metrics
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_SPEC,
    LABEL_STORAGE_GB,
    MANAGED_BY_VALUE,
    ContainerState,
    EngineInfo,
    NodeRecord,
    NodeView,
    ObservedContainer,
)
from controller.runtime import ContainerSpec, container_status, tls
from controller.runtime.engine_connect import (
    EngineConnector,
    close_socket_on_failed_connect,
)
from controller.runtime.engine_errors import engine_message, translate
from controller.runtime.podman import (
    PODMAN_HEALTH_STATES,
    EngineFlavour,
    engine_flavour,
    pull_failure,
    unsupported_request,
)
from controller.settings import Settings
from controller.storage import DiskUse, StorageLimits, storage_limits

log = structlog.get_logger(__name__)

T = TypeVar("T")

DOCKER_CALL_ATTEMPTS = 3
# A running container that (re)started this recently is inspected for its restart count.
RECENT_START_SECONDS = 60.0
# Inspect answers kept before the old ones are dropped (only ones under two minutes old stay).
INSPECTED_KEPT = 1024
# Graceful stops in flight per node. A stop spends the container's grace period waiting for it
# to exit, which costs the engine nothing, so stops do not take the node's
# FOG_NODE_CONCURRENCY slots (creates, starts, removes): a scale-down signals its containers
# together, as Swarm's agent does, instead of one slot-full at a time, and a slow-stopping
# container cannot hold up the creates of a rollout beside it.
STOPS_PER_NODE = 64
_MANAGED_FILTER = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}


class DockerRuntime:
    """The runtime port over real Docker engines."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        close_socket_on_failed_connect()
        self._settings = settings
        self._metrics = metrics
        self._connector = EngineConnector.from_settings(settings)
        # Per (node name, URL): the access a client was made for, and the client. The name is
        # part of the key because the certificates are the node's, not the URL's.
        self._clients: dict[tuple[str, str], tuple[tls.EngineAccess, docker.APIClient]] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._stop_slots: dict[str, asyncio.Semaphore] = {}
        # Per (node name, URL): which engine answers there, asked once (and after a failed
        # probe: the engine behind a URL may be replaced while it is down).
        self._flavours: dict[tuple[str, str], EngineFlavour] = {}
        # Per engine URL: what `docker info` said of its storage (driver, driver status, ID,
        # version) and what we concluded (controller.storage). `_size_refused`: engines that
        # refused a size limit their driver should take (xfs without pquota) and accepted the
        # same create without it; forgotten when the engine restarts or changes, so a node
        # remounted with pquota is tried again.
        self._engine_facts: dict[str, tuple[object, ...]] = {}
        self._limits: dict[str, StorageLimits] = {}
        self._size_refused: dict[str, str] = {}
        self._unreachable: set[str] = set()
        # Per container id: when an inspect of it (running) was sent, and what it said. A
        # later listing whose uptime is at least the time since then shows that the container
        # has not restarted meanwhile, so the answer still holds (see `_recent_inspect`).
        self._inspected: dict[str, tuple[float, dict[str, Any]]] = {}
        self._inspected_limit = INSPECTED_KEPT
        self._executor = ThreadPoolExecutor(
            max_workers=max(8, settings.node_concurrency * 8), thread_name_prefix="docker"
        )
        # Stops wait out grace periods in their own threads, so they never starve other calls.
        self._stopper = ThreadPoolExecutor(
            max_workers=STOPS_PER_NODE, thread_name_prefix="docker-stop"
        )

    # --- plumbing --------------------------------------------------------------------------

    def _client(self, node: NodeRecord) -> docker.APIClient:
        """The node's client, made anew when how to reach it changed (certificates added or
        removed); `errors.PermanentError` when it must not be reached (runtime.tls)."""
        access = self._connector.access(node.name, node.docker_url)
        key = (node.name, node.docker_url)
        held = self._clients.get(key)
        if held is not None and held[0] == access:
            return held[1]
        try:
            client = self._connector.client(
                access,
                timeout=self._settings.docker_timeout_seconds,
                max_pool_size=self._settings.node_concurrency + 1 + STOPS_PER_NODE,
            )
        except Exception as exc:
            raise translate(exc, "connect", access.certs) from exc
        if held is not None:
            held[1].close()  # calls still in flight on it fail and are retried as usual
        self._clients[key] = (access, client)
        if access.transport is tls.Transport.TLS:
            log.info("engine_tls", node=node.name, certs_dir=str(access.certs))
        return client

    def _certs(self, node: NodeRecord) -> PurePath | None:
        """The node's certificate directory, for the reason of a TLS failure."""
        held = self._clients.get((node.name, node.docker_url))
        return held[0].certs if held is not None else None

    def _semaphore(self, node: NodeRecord) -> asyncio.Semaphore:
        sem = self._semaphores.get(node.docker_url)
        if sem is None:
            sem = self._semaphores[node.docker_url] = asyncio.Semaphore(
                self._settings.node_concurrency
            )
        return sem

    async def _raw(self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._semaphore(node):
            return await self._unlimited(node, fn, *args, **kwargs)

    async def _unlimited(
        self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """A call outside the per-node limit: heartbeat probes must not queue behind a
        rollout's creates, or a busy node would look dead (its pool has one spare slot)."""
        return await self._in(self._executor, node, fn, *args, **kwargs)

    async def _in(
        self,
        executor: ThreadPoolExecutor,
        node: NodeRecord,
        fn: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))
        except docker.errors.NotFound:
            raise  # an answer (gone, no such image), not a failing engine
        except Exception:
            # Every Docker call passes here, so this counts each failed attempt once; the
            # operation label is docker-py's method name (a small, fixed set).
            if self._metrics is not None:
                self._metrics.docker_error(node.name, getattr(fn, "__name__", "call"))
            raise

    async def _call(
        self, node: NodeRecord, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """One Docker call, retried on transient failure (3 tries, jittered backoff)."""
        return await self._retried(node, what, lambda: self._raw(node, fn, *args, **kwargs))

    async def _retried(self, node: NodeRecord, what: str, once: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(errors.TransientError),
            stop=stop_after_attempt(DOCKER_CALL_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                try:
                    return await once()
                except docker.errors.NotFound:
                    raise
                except Exception as exc:
                    raise translate(exc, what, self._certs(node)) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def close(self) -> None:
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopper.shutdown(wait=False, cancel_futures=True)

    # --- the port --------------------------------------------------------------------------

    async def info(self, node: NodeRecord) -> EngineInfo:
        url = node.docker_url
        try:
            # Together: on Podman each takes ~0.4 s (both run conmon and runc to report them),
            # and the first probe must fit in its timeout on a busy host.
            raw, flavour = await asyncio.gather(
                self._unlimited(node, self._client(node).info), self._flavour(node)
            )
        except Exception as exc:
            self._flavours.pop((node.name, node.docker_url), None)
            self._unreachable.add(url)
            raise translate(exc, "probe", self._certs(node)) from exc
        driver = str(raw.get("Driver") or "")
        status = tuple(tuple(str(x) for x in row) for row in raw.get("DriverStatus") or ())
        version = str(raw.get("ServerVersion") or "")
        facts = (raw.get("ID"), driver, status, version)
        # An engine that went away and came back has restarted (or was restarted): what it
        # refused before is tried again, as is everything after a change of its facts.
        if url in self._unreachable or self._engine_facts.get(url, facts) != facts:
            self._unreachable.discard(url)
            if self._size_refused.pop(url, None) is not None:
                log.info("storage_limit_recheck", node=node.name, storage_driver=driver)
        self._engine_facts[url] = facts
        limits = storage_limits(driver, status, size_refused=url in self._size_refused)
        self._limits[url] = limits
        return EngineInfo(
            cpu_cores=float(raw.get("NCPU") or 0),
            memory_mb=int((raw.get("MemTotal") or 0) // (1024 * 1024)),
            storage_driver=driver,
            server_version=version,
            storage_limits=limits,
            engine=flavour.value,
        )

    async def _flavour(self, node: NodeRecord) -> EngineFlavour:
        """Which engine answers at the node's URL (`/version`, asked once per node)."""
        key = (node.name, node.docker_url)
        known = self._flavours.get(key)
        if known is None:
            version = await self._unlimited(node, self._client(node).version)
            known = self._flavours[key] = engine_flavour(version)
            log.info("engine_identified", node=node.name, engine=known.value)
        return known

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
        found = []
        for item in raw:
            labels = item.get("Labels") or {}
            replica_id = container_status.label_uuid(labels.get(LABEL_REPLICA))
            deployment_id = container_status.label_uuid(labels.get(LABEL_DEPLOYMENT))
            if replica_id is None or deployment_id is None:
                continue
            limit = labels.get(LABEL_STORAGE_GB)
            found.append(
                DiskUse(
                    container_id=str(item["Id"]),
                    replica_id=replica_id,
                    deployment_id=deployment_id,
                    written_bytes=int(item.get("SizeRw") or 0),
                    limit_gb=int(limit) if limit and limit.isdigit() else None,
                )
            )
        return tuple(found)

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
        labels = item.get("Labels") or {}
        state = ContainerState.parse(str(item.get("State", "")))
        names = item.get("Names") or ["/"]
        status = str(item.get("Status", ""))
        uptime = container_status.uptime(status) if state is ContainerState.RUNNING else None
        container = ObservedContainer(
            id=str(item["Id"]),
            name=str(names[0]).lstrip("/"),
            node_id=node.id,
            state=state,
            deployment_id=container_status.label_uuid(labels.get(LABEL_DEPLOYMENT)),
            replica_id=container_status.label_uuid(labels.get(LABEL_REPLICA)),
            image=str(item.get("Image", "")),
            health=container_status.health(status),
            spec_hash=labels.get(LABEL_SPEC),
            uptime_seconds=uptime,
            exit_code=container_status.status_exit_code(status),
        )
        # Inspect what the listing cannot tell: restart counts and OOM kills of containers
        # that are not running, or that (re)started within the last minute (a restart the
        # engine made between two of our looks). Long-running containers cost no inspect.
        if state is ContainerState.RUNNING and (uptime is None or uptime >= RECENT_START_SECONDS):
            return container
        try:
            detail = await self._recent_inspect(node, container.id, uptime, listed_by)
        except docker.errors.NotFound:
            return None  # removed between list and inspect
        st = detail.get("State") or {}
        # The listing's "Exited (137)" is the exit that matters; inspect's ExitCode is read
        # later and is back to 0 once the engine has restarted the container.
        exit_code = container.exit_code
        if exit_code is None and not st.get("Running"):
            exit_code = st.get("ExitCode")
        return replace(
            container,
            inspected=True,
            exit_code=exit_code,
            restart_count=int(detail.get("RestartCount") or 0),
            oom_killed=bool(st.get("OOMKilled")),
            finished_at=container_status.timestamp(st.get("FinishedAt")),
        )

    async def _recent_inspect(
        self, node: NodeRecord, container_id: str, uptime: float | None, listed_by: float
    ) -> dict[str, Any]:
        """Inspect, or reuse the last answer for a container that is running and has not
        restarted since that inspect was sent: the listing's uptime (rounded down, so never
        more than the truth) is at least the time from then to the listing's return, where a
        restart after the inspect would show less. Without it a scale-down right after a
        scale-up inspects every replica twice before its first stop (the resync pass's
        listing, then the reconcile's), in the node's call slots."""
        held = self._inspected.get(container_id)
        if held is not None and uptime is not None and uptime >= listed_by - held[0]:
            return held[1]
        sent = time.monotonic()
        detail: dict[str, Any] = await self._raw(
            node, self._client(node).inspect_container, container_id
        )
        if (detail.get("State") or {}).get("Running"):
            self._inspected[container_id] = (sent, detail)
            if len(self._inspected) > self._inspected_limit:
                old = sent - 2 * RECENT_START_SECONDS
                self._inspected = {k: v for k, v in self._inspected.items() if v[0] >= old}
                self._inspected_limit = max(INSPECTED_KEPT, 2 * len(self._inspected))
        else:
            self._inspected.pop(container_id, None)
        return detail

    async def ensure(self, node: NodeRecord, spec: ContainerSpec) -> str:
        client = self._client(node)
        try:
            flavour = await self._flavour(node)
        except Exception as exc:
            raise translate(exc, "identify engine", self._certs(node)) from exc
        refused = unsupported_request(flavour, spec)
        if refused is not None:
            raise errors.PermanentError(refused)
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
        url = node.docker_url
        sized = spec.resources is not None and spec.resources.storage_gb > 0
        # Not yet probed: try the limit, as an engine that can cap is the safe guess.
        with_storage = sized and self._limits.get(url) is not StorageLimits.MONITORED
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
                await self._pull(node, spec.image)
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
                self._size_refused[url] = refused
                self._limits[url] = StorageLimits.MONITORED
                log.warning(
                    "storage_limit_unenforced",
                    node=node.name,
                    error=refused,
                    detail="the engine refused a disk size limit its driver should take; "
                    "storage_gb is monitored on this node instead",
                )
            return str(created["Id"])

    def _create_args(
        self, client: docker.APIClient, spec: ContainerSpec, *, with_storage: bool
    ) -> dict[str, Any]:
        settings = self._settings
        host: dict[str, Any] = {
            "restart_policy": {"Name": "unless-stopped"},
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "pids_limit": settings.pids_limit,
        }
        if settings.container_network:
            host["network_mode"] = settings.container_network
        res = spec.resources
        if res is not None:
            host["nano_cpus"] = int(res.cpu_cores * 1e9)
            host["mem_limit"] = f"{res.memory_mb}m"
            if res.gpu_units > 0:
                host["device_requests"] = [
                    DeviceRequest(count=res.gpu_units, capabilities=[["gpu"]])
                ]
            if with_storage and res.storage_gb > 0:
                host["storage_opt"] = {"size": f"{res.storage_gb}G"}
        return {
            "image": spec.image,
            "name": spec.name,
            "labels": spec.labels,
            "detach": True,
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

    async def _pull(self, node: NodeRecord, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        log.info("image_pull", node=node.name, image=image)
        try:
            output = await asyncio.wait_for(
                self._raw(node, self._client(node).pull, repository, tag=tag or "latest"),
                timeout=self._settings.pull_timeout_seconds,
            )
        except TimeoutError as exc:
            raise errors.PermanentError(
                f"image pull failed: {image}: timed out after "
                f"{self._settings.pull_timeout_seconds:g}s"
            ) from exc
        except Exception as exc:
            raise errors.PermanentError(
                f"image pull failed: {image}: {engine_message(exc)}"
            ) from exc
        failure = pull_failure(output)
        if failure is not None:
            raise errors.PermanentError(f"image pull failed: {image}: {failure}")

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

    async def _stop_call(self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A stop, retried as `_call` does, in the node's stop slots and the stop threads."""
        slots = self._stop_slots.get(node.docker_url)
        if slots is None:
            slots = self._stop_slots[node.docker_url] = asyncio.Semaphore(STOPS_PER_NODE)

        async def once() -> T:
            async with slots:
                return await self._in(self._stopper, node, fn, *args, **kw)

        return await self._retried(node, "stop container", once)

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
