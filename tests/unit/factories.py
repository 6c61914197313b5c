"""Plain-value builders for the pure-core tests: nodes, deployments, replicas, listings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from controller.model import (
    LABEL_DEPLOYMENT,
    ContainerState,
    Deployment,
    DeploymentStatus,
    Node,
    NodeStatus,
    NodeView,
    ObservedContainer,
    Replica,
    ReplicaStatus,
    Resources,
    container_name,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEPLOYMENT_ID = uuid.UUID(int=1)
SMALL = Resources(cpu_cores=0.5, memory_mb=512, gpu_units=0, storage_gb=1)

__all__ = ["LABEL_DEPLOYMENT", "SMALL", "T0"]


def node(name: str = "n1", *, cpu: float = 4, mem: int = 8192, gpu: int = 0, **kw: object) -> Node:
    return Node(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        docker_url=f"unix:///tmp/{name}.sock",
        status=kw.pop("status", NodeStatus.READY),  # type: ignore[arg-type]
        cpu_cores=cpu,
        memory_mb=mem,
        gpu_units=gpu,
        **kw,  # type: ignore[arg-type]
    )


def deployment(target: int = 3, *replicas: Replica, **kw: object) -> Deployment:
    values: dict[str, object] = {
        "id": uuid.UUID(int=1),
        "name": "web",
        "user_id": uuid.UUID(int=2),
        "image": "fog-test/busybox:latest",
        "target_replicas": target,
        "resources": SMALL,
        "status": DeploymentStatus.PENDING,
        "updated_at": T0,
        "replicas": tuple(replicas),
    }
    values.update(kw)
    return Deployment(**values)  # type: ignore[arg-type]


def replica(
    status: ReplicaStatus,
    on: Node | None = None,
    *,
    n: int = 0,
    started: datetime | None = None,
    created: datetime | None = None,
) -> Replica:
    return Replica(
        id=uuid.UUID(int=1000 + n),
        deployment_id=uuid.UUID(int=1),
        status=status,
        node_id=on.id if on else None,
        created_at=created or T0 + timedelta(seconds=n),
        started_at=started,
    )


def container(
    r: Replica | None,
    on: Node,
    state: ContainerState = ContainerState.RUNNING,
    *,
    deployment_id: uuid.UUID | None = DEPLOYMENT_ID,
    replica_id: uuid.UUID | None = None,
    **kw: object,
) -> ObservedContainer:
    rid = r.id if r is not None else replica_id
    return ObservedContainer(
        id=f"c-{rid}-{on.name}",
        name=container_name(rid) if rid else "stranger",
        node_id=on.id,
        state=state,
        deployment_id=deployment_id,
        replica_id=rid,
        **kw,  # type: ignore[arg-type]
    )


def views(
    *nodes_and_containers: tuple[Node, list[ObservedContainer]], at: datetime | None = None
) -> dict[uuid.UUID, NodeView]:
    at = at or T0 + timedelta(hours=1)
    return {
        n.id: NodeView(n.id, complete=True, observed_at=at, containers=tuple(cs))
        for n, cs in nodes_and_containers
    }
