"""A small fog for reconciler unit tests of the container spec: the in-memory store, hollow
nodes and one clock, built with the settings a test needs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.model import Deployment, DeploymentStatus, NodeRecord, NodeStatus, ReplicaStatus
from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler, Result
from controller.runtime.hollow import HollowNode, HollowRuntime, hollow_url
from controller.settings import Settings
from tests.unit.factories import T0, deployment
from tests.unit.memstore import MemoryStore


class Clock:
    """The one clock of the store, the engines and the controller."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Fog:
    store: MemoryStore
    runtime: HollowRuntime
    nodes: NodeMonitor
    reconciler: Reconciler
    clock: Clock

    async def reconcile(self, d: Deployment) -> Result:
        return await self.reconciler.reconcile(d.id)

    def new(self, target: int, **kw: Any) -> Deployment:
        d = deployment(target, updated_at=self.clock(), **kw)
        self.store.put(d)
        return d

    def edit(self, d: Deployment, **kw: Any) -> Deployment:
        """An operator's change: a new generation."""
        current = self.store.deployments[d.id]
        values = {"generation": current.generation + 1, "updated_at": self.clock(), **kw}
        changed = Deployment(
            **{
                f: values.get(f, getattr(current, f))
                for f in (
                    "id",
                    "name",
                    "user_id",
                    "image",
                    "target_replicas",
                    "resources",
                    "status",
                    "updated_at",
                    "deleted_at",
                    "generation",
                    "run",
                )
            }
        )
        self.store.put(changed)
        return changed

    def status(self, d: Deployment) -> DeploymentStatus:
        return self.store.deployments[d.id].status

    def statuses(self, d: Deployment) -> list[tuple[DeploymentStatus, DeploymentStatus]]:
        return [(h.old, h.new) for h in self.store.history if h.deployment_id == d.id]

    def reasons(self, d: Deployment) -> list[str]:
        return [h.reason for h in self.store.history if h.deployment_id == d.id]

    def running(self, d: Deployment) -> int:
        return len(self.store.rows(d.id, ReplicaStatus.RUNNING))

    def node_id(self, name: str) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_DNS, name)


async def fog(
    *names: str, runtime: Callable[[Clock], HollowRuntime] | None = None, **settings: Any
) -> Fog:
    """Ready hollow nodes `names` (8 cores, 32 GiB each) under a reconciler with `settings`;
    `runtime` makes the runtime on the fog's clock (a recording subclass, say)."""
    clock = Clock()
    store = MemoryStore()
    engines = runtime(clock) if runtime is not None else HollowRuntime(clock=clock)
    for name in names or ("n1",):
        engines.add_node(hollow_url(name), HollowNode())
        node_id = uuid.uuid5(uuid.NAMESPACE_DNS, name)
        store.node_rows[node_id] = NodeRecord(
            node_id, name, hollow_url(name), NodeStatus.READY, cpu_cores=8, memory_mb=32768
        )
    values: dict[str, Any] = {
        "database_url": "sqlite+aiosqlite:///unused.db",
        "register_local_node": False,
        "min_ready_seconds": 0.0,
    }
    values.update(settings)
    nodes = NodeMonitor(store, engines, Settings(**values), clock)
    await nodes.refresh()
    reconciler = Reconciler(store, engines, nodes, Settings(**values), clock)
    return Fog(store, engines, nodes, reconciler, clock)
