"""An in-memory store implementing the reconciler's ports (controller.ports), for unit tests
of the reconciler only; the real store is tested against real databases in
tests/integration. Keeps the contract the reconciler relies on: transitions guarded by the
expected status, a status write only from the expected old status with a history row, loads
of non-terminal replicas only, usage summed over live replicas."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller.model import (
    ZERO,
    Deployment,
    DeploymentStatus,
    EngineInfo,
    NodeRecord,
    NodeStatus,
    ProgressState,
    Replica,
    ReplicaStatus,
    Resources,
)
from controller.ports import Transition
from schema.enums import TERMINAL_REPLICA_STATUSES

_LIVE = (ReplicaStatus.PENDING, ReplicaStatus.STARTING, ReplicaStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    deployment_id: uuid.UUID
    old: DeploymentStatus
    new: DeploymentStatus
    reason: str
    at: datetime


@dataclass
class MemoryStore:
    """Deployments (without their replicas), replica rows, history and nodes, in dicts."""

    deployments: dict[uuid.UUID, Deployment] = field(default_factory=dict)
    replicas: dict[uuid.UUID, Replica] = field(default_factory=dict)
    history: list[HistoryRow] = field(default_factory=list)
    node_rows: dict[uuid.UUID, NodeRecord] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)  # operation -> calls
    # The controller's persisted progress per deployment (the state table).
    progress: dict[uuid.UUID, ProgressState] = field(default_factory=dict)
    # Registry logins: (user, name) -> (registry_host, username, password_encrypted).
    credentials: dict[tuple[uuid.UUID, str], tuple[str, str, str]] = field(default_factory=dict)
    # Deleted deployments whose volumes an operator asked to purge.
    to_purge: set[uuid.UUID] = field(default_factory=set)

    @property
    def epoch(self) -> int | None:
        return None

    # --- what a test (the operator) does -------------------------------------------------

    def put(self, d: Deployment) -> None:
        """Add or edit a deployment, as an operator's SQL would (its rows are kept)."""
        self.deployments[d.id] = replace(d, replicas=())

    def rows(self, deployment_id: uuid.UUID, *statuses: ReplicaStatus) -> list[Replica]:
        return [
            r
            for r in self.replicas.values()
            if r.deployment_id == deployment_id and (not statuses or r.status in statuses)
        ]

    # --- ReconcileStore ------------------------------------------------------------------

    async def load_deployment(self, deployment_id: uuid.UUID) -> Deployment | None:
        self.calls["load_deployment"] += 1
        d = self.deployments.get(deployment_id)
        if d is None:
            return None
        mine = [r for r in self.rows(deployment_id) if r.status not in TERMINAL_REPLICA_STATUSES]
        mine.sort(key=lambda r: (r.created_at or datetime.min, r.id))
        last = [h for h in self.history if h.deployment_id == deployment_id]
        return replace(
            d,
            replicas=tuple(mine),
            last_reason=last[-1].reason if last else None,
            progress=self.progress.get(deployment_id, d.progress),
        )

    async def node_usage(self) -> dict[uuid.UUID, Resources]:
        self.calls["node_usage"] += 1
        usage: dict[uuid.UUID, Resources] = {}
        for r in self.replicas.values():
            d = self.deployments.get(r.deployment_id)
            if r.node_id is None or r.status not in _LIVE or d is None or d.resources is None:
                continue
            usage[r.node_id] = usage.get(r.node_id, ZERO) + d.resources
        return usage

    async def node_ports(self) -> dict[uuid.UUID, Counter[tuple[int, str]]]:
        self.calls["node_ports"] += 1
        held: dict[uuid.UUID, Counter[tuple[int, str]]] = {}
        for r in self.replicas.values():
            d = self.deployments.get(r.deployment_id)
            if r.node_id is None or r.status not in _LIVE or d is None:
                continue
            held.setdefault(r.node_id, Counter()).update(d.run.host_ports())
        return held

    async def create_replicas(
        self, deployment_id: uuid.UUID, count: int, now: datetime
    ) -> list[Replica]:
        self.calls["create_replicas"] += 1
        new = [
            Replica(uuid.uuid4(), deployment_id, ReplicaStatus.PENDING, created_at=now)
            for _ in range(count)
        ]
        self.replicas.update((r.id, r) for r in new)
        return new

    async def transition(self, changes: Iterable[Transition]) -> set[uuid.UUID]:
        self.calls["transition"] += 1
        moved = set()
        for t in changes:
            r = self.replicas.get(t.replica_id)
            if r is None or r.status not in t.expected:
                continue
            self.replicas[r.id] = t.change.applied(r, t.status)
            moved.add(r.id)
        return moved

    async def record_status(
        self,
        deployment_id: uuid.UUID,
        old: DeploymentStatus,
        new: DeploymentStatus,
        reason: str,
        now: datetime,
        state: ProgressState | None = None,
    ) -> bool:
        self.calls["record_status"] += 1
        d = self.deployments.get(deployment_id)
        if d is None or d.status is not old:
            return False
        self.deployments[deployment_id] = replace(d, status=new, updated_at=now)
        self.history.append(HistoryRow(deployment_id, old, new, reason, now))
        if state is not None:
            self.progress[deployment_id] = state
        return True

    async def save_progress(self, deployment_id: uuid.UUID, state: ProgressState) -> None:
        self.calls["save_progress"] += 1
        if deployment_id in self.deployments:
            self.progress[deployment_id] = state

    async def registry_credential(
        self, user_id: uuid.UUID, name: str
    ) -> tuple[str, str, str] | None:
        self.calls["registry_credential"] += 1
        return self.credentials.get((user_id, name))

    async def deployments_to_purge(self) -> list[uuid.UUID]:
        return sorted(self.to_purge)

    async def volumes_purged(self, deployment_id: uuid.UUID) -> None:
        self.calls["volumes_purged"] += 1
        self.to_purge.discard(deployment_id)

    # --- NodeStore -------------------------------------------------------------------------

    async def nodes(self) -> list[NodeRecord]:
        return sorted(self.node_rows.values(), key=lambda n: n.name)

    async def register_node_if_none(
        self, name: str, docker_url: str, info: EngineInfo | None
    ) -> bool:
        return False  # tests add their nodes themselves

    async def update_nodes(self, changes: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        for node_id, values in changes:
            row = self.node_rows[node_id]
            if "status" in values:
                row = replace(row, status=NodeStatus(values["status"]))
            if "last_heartbeat_at" in values:
                row = replace(row, last_heartbeat_at=values["last_heartbeat_at"])
            self.node_rows[node_id] = row

    async def fail_replicas_on_node(
        self, node_id: uuid.UUID, now: datetime
    ) -> dict[uuid.UUID, int]:
        return {}

    async def set_engine_labels(
        self, node_id: uuid.UUID, labels: Mapping[str, str]
    ) -> dict[str, str] | None:
        self.calls["set_engine_labels"] += 1
        row = self.node_rows.get(node_id)
        if row is None:
            return None
        current = dict(row.labels)
        replaced = {k: current[k] for k, v in labels.items() if k in current and current[k] != v}
        merged = tuple(sorted({**current, **labels}.items()))
        self.node_rows[node_id] = replace(row, labels=merged)
        return replaced
