"""Drive a fog-controller the way its users do: an operator writing rows, engines observed
through the Docker API, and the controller running in-process against both.

Plain module (no pytest import): benchmarks reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
from sqlalchemy import RowMapping, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.loop import Controller
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_SPEC,
    MANAGED_BY_VALUE,
)
from controller.readmodel import DEPLOYMENTS, HISTORY, NODES, REPLICAS, RESOURCES
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from controller.store import Store
from schema.engine import create_engine
from schema.models import User
from tests.harness.engines import API_VERSION, TEST_IMAGE

T = TypeVar("T")

# Fast timings for tests; each test may override.
TEST_SETTINGS: dict[str, Any] = {
    "resync_seconds": 0.5,
    "stop_timeout_seconds": 2,
    "node_heartbeat_seconds": 0.5,
    "node_grace_seconds": 5.0,
    "crash_backoff_initial_seconds": 0.5,
    "crash_backoff_max_seconds": 4.0,
    "shutdown_grace_seconds": 5.0,
    "register_local_node": False,
    "auto_migrate": False,
    "log_format": "json",
    "docker_timeout_seconds": 20.0,
    "pull_timeout_seconds": 20.0,
}


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 30.0, interval: float = 0.1
) -> T:
    """Poll `check` until it returns a truthy value or raises no AssertionError; return it."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = await check()
            if value:
                return value
            failure: BaseException = AssertionError(f"still falsy: {value!r}")
        except AssertionError as exc:
            failure = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {failure}") from failure
        await asyncio.sleep(interval)


class Operator:
    """Writes desired state and reads what the controller recorded, as an operator would."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add_user(self, username: str = "alice") -> uuid.UUID:
        uid = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(insert(User.__table__).values(id=uid, username=username))
        return uid

    async def add_node(self, name: str, docker_url: str, **capacity: Any) -> uuid.UUID:
        nid = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(NODES).values(id=nid, name=name, docker_url=docker_url, **capacity)
            )
        return nid

    async def add_deployment(
        self,
        user_id: uuid.UUID,
        name: str,
        *,
        image: str = TEST_IMAGE,
        replicas: int = 1,
        cpu_cores: float = 0.5,
        memory_mb: int = 512,
        gpu_units: int = 0,
        storage_gb: int = 1,
    ) -> uuid.UUID:
        did = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(DEPLOYMENTS).values(
                    id=did,
                    name=name,
                    user_id=user_id,
                    container_image=image,
                    target_replicas=replicas,
                )
            )
            await conn.execute(
                insert(RESOURCES).values(
                    id=uuid.uuid4(),
                    deployment_id=did,
                    cpu_cores=cpu_cores,
                    memory_mb=memory_mb,
                    gpu_units=gpu_units,
                    storage_gb=storage_gb,
                )
            )
        return did

    async def update(self, deployment_id: uuid.UUID, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(DEPLOYMENTS).where(DEPLOYMENTS.c.id == deployment_id).values(**values)
            )

    async def scale(self, deployment_id: uuid.UUID, replicas: int) -> None:
        await self.update(deployment_id, target_replicas=replicas)

    async def soft_delete(self, deployment_id: uuid.UUID) -> None:
        await self.update(deployment_id, deleted_at=datetime.now(UTC))

    async def deployment(self, deployment_id: uuid.UUID) -> RowMapping:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(DEPLOYMENTS).where(DEPLOYMENTS.c.id == deployment_id))
            ).one()
        return row._mapping

    async def status(self, deployment_id: uuid.UUID) -> str:
        return str((await self.deployment(deployment_id))["status"])

    async def history(self, deployment_id: uuid.UUID) -> list[RowMapping]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(HISTORY)
                    .where(HISTORY.c.deployment_id == deployment_id)
                    .order_by(HISTORY.c.changed_at, HISTORY.c.id)
                )
            ).all()
        return [r._mapping for r in rows]

    async def replicas(self, deployment_id: uuid.UUID, *statuses: str) -> list[RowMapping]:
        query = select(REPLICAS).where(REPLICAS.c.deployment_id == deployment_id)
        if statuses:
            query = query.where(REPLICAS.c.status.in_(statuses))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(REPLICAS.c.created_at))).all()
        return [r._mapping for r in rows]

    async def node_statuses(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(NODES.c.status).order_by(NODES.c.name))).all()
        return [str(getattr(r.status, "value", r.status)) for r in rows]

    async def live_replicas(self, deployment_id: uuid.UUID) -> list[RowMapping]:
        return await self.replicas(deployment_id, "pending", "starting", "running")


@dataclass(frozen=True)
class Seen:
    """One managed container as an engine reports it."""

    engine_url: str
    id: str
    name: str
    state: str
    deployment_id: str
    replica_id: str


def managed_containers(urls: list[str], deployment_id: uuid.UUID | None = None) -> list[Seen]:
    """Every container carrying our labels on these engines (low-level list, no inspect)."""
    label = f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
    filters: dict[str, Any] = {"label": [label]}
    if deployment_id is not None:
        filters["label"].append(f"{LABEL_DEPLOYMENT}={deployment_id}")
    out = []
    for url in urls:
        client = docker.APIClient(base_url=url, version=API_VERSION, timeout=30)
        try:
            for c in client.containers(all=True, filters=filters):
                labels = c.get("Labels") or {}
                out.append(
                    Seen(
                        engine_url=url,
                        id=c["Id"],
                        name=c["Names"][0].lstrip("/"),
                        state=c["State"],
                        deployment_id=labels.get(LABEL_DEPLOYMENT, ""),
                        replica_id=labels.get(LABEL_REPLICA, ""),
                    )
                )
        finally:
            client.close()
    return out


def remove_managed_containers(urls: list[str]) -> None:
    for url in urls:
        client = docker.APIClient(base_url=url, version=API_VERSION, timeout=60)
        try:
            for c in client.containers(
                all=True, filters={"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}
            ):
                with contextlib.suppress(docker.errors.NotFound):
                    client.remove_container(c["Id"], force=True)
        finally:
            client.close()


def remove_managed_volumes(urls: list[str]) -> None:
    """Remove the named volumes the controller made (our label) on each engine; call after
    `remove_managed_containers`, since a volume in use is not removed."""
    for url in urls:
        client = docker.APIClient(base_url=url, version=API_VERSION, timeout=60)
        try:
            listed = client.volumes(filters={"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"})
            for volume in (listed or {}).get("Volumes") or ():
                with contextlib.suppress(docker.errors.NotFound):
                    client.remove_volume(volume["Name"], force=True)
        finally:
            client.close()


@asynccontextmanager
async def fleet_of(
    engine: AsyncEngine, urls: list[str], prefix: str = "node"
) -> AsyncIterator[tuple[Operator, list[str], uuid.UUID]]:
    """Each engine at `urls` added as node `<prefix>-<i>`, and one user; the containers the
    test made are removed afterwards (the engines are shared by the session)."""
    op = Operator(engine)
    for i, url in enumerate(urls):
        await op.add_node(f"{prefix}-{i}", url)
    user = await op.add_user()
    try:
        yield op, urls, user
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)


def settings_for_tests(database_url: str, **overrides: Any) -> Settings:
    return replace(Settings(database_url=database_url, **TEST_SETTINGS), **overrides)


@asynccontextmanager
async def running_controller(settings: Settings) -> AsyncIterator[Controller]:
    """The controller in-process, stopped gracefully (as on SIGTERM) on exit."""
    store = Store(create_engine(settings.database_url))
    runtime = DockerRuntime(settings)
    controller = Controller(settings, store, runtime)
    task = asyncio.create_task(controller.run())
    try:
        yield controller
    finally:
        controller.stop()
        try:
            await asyncio.wait_for(task, settings.shutdown_grace_seconds + 10)
        finally:
            await runtime.close()
            await store.close()


async def converged(op: Operator, urls: list[str], deployment_id: uuid.UUID, target: int) -> bool:
    """Exactly `target` live rows, all running, each with one running container, no strays.

    A row still `stopping` is work in flight (its container may already be gone while its
    `stopped` write has not landed), so the deployment is not converged yet.
    """
    rows = await op.replicas(deployment_id, "pending", "starting", "running", "stopping")
    seen = await asyncio.to_thread(managed_containers, urls, deployment_id)
    running = [r for r in rows if r["status"] == "running"]
    return (
        len(rows) == target  # live rows, and no row still stopping
        and len(running) == target
        and sorted(s.replica_id for s in seen if s.state == "running")
        == sorted(str(r["id"]) for r in running)
        and len(seen) == target
    )


# --- rollout and crash helpers (tests/integration/test_rollout.py, test_crashes.py) ---------


@dataclass(frozen=True)
class Detail:
    """One managed container as `inspect` shows it: what it runs and how it last ended."""

    engine_url: str
    id: str
    replica_id: str
    image: str
    spec_hash: str
    running: bool
    status: str
    pid: int
    restart_count: int
    exit_code: int
    oom_killed: bool
    health: str | None  # None: the image has no HEALTHCHECK


def container_details(urls: list[str], deployment_id: uuid.UUID) -> list[Detail]:
    """`managed_containers` plus an inspect of each (containers removed meanwhile are skipped)."""
    out = []
    for seen in managed_containers(urls, deployment_id):
        client = docker.APIClient(base_url=seen.engine_url, version=API_VERSION, timeout=30)
        try:
            info = client.inspect_container(seen.id)
        except docker.errors.NotFound:
            continue
        finally:
            client.close()
        state = info["State"]
        out.append(
            Detail(
                engine_url=seen.engine_url,
                id=seen.id,
                replica_id=seen.replica_id,
                image=str(info["Config"]["Image"]),
                spec_hash=str((info["Config"].get("Labels") or {}).get(LABEL_SPEC, "")),
                running=state["Status"] == "running",  # State.Running is true while restarting
                status=str(state["Status"]),
                pid=int(state.get("Pid") or 0),
                restart_count=int(info.get("RestartCount") or 0),
                exit_code=int(state.get("ExitCode") or 0),
                oom_killed=bool(state.get("OOMKilled")),
                # Podman shows a Health with Status "" when the image has no HEALTHCHECK.
                health=(state.get("Health") or {}).get("Status") or None,
            )
        )
    return out


class ContainerSampler:
    """Lists a deployment's containers every `interval` seconds, in a thread, while the
    controller works (an outage too short for a status row still shows in a sample)."""

    def __init__(self, urls: list[str], deployment_id: uuid.UUID, interval: float = 0.1) -> None:
        self.urls = urls
        self.deployment_id = deployment_id
        self.interval = interval
        self.samples: list[tuple[float, list[Seen]]] = []  # (monotonic time, containers)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="container-sampler", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                seen = managed_containers(self.urls, self.deployment_id)
                self.samples.append((time.monotonic(), seen))
                self._stop.wait(self.interval)
        except BaseException as exc:  # re-raised by stop(), in the test's thread
            self._error = exc

    def __enter__(self) -> ContainerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._error is not None:
            raise self._error

    def running(self, *, excluding: Collection[str] = ()) -> list[int]:
        """Per sample, the containers in state `running`, leaving out those of the replicas
        `excluding` (crash-looping ones, say, which run for an instant between restarts)."""
        return [
            sum(1 for s in seen if s.state == "running" and s.replica_id not in excluding)
            for _, seen in self.samples
        ]
