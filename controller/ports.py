"""The store as the reconciler sees it: a `Protocol` of typed operations, and their values.

The reconciler, the executor and the placement cache depend on these, never on `Store`, so
they are unit-tested against an in-memory implementation (tests/unit/memstore.py) while the
real store stays tested against real databases. A replica change names what it sets with typed
fields; the column names live in the store alone.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from controller.model import (
    Deployment,
    DeploymentStatus,
    EngineInfo,
    NodeRecord,
    ProgressState,
    Replica,
    ReplicaStatus,
    Resources,
)


@dataclass(frozen=True, slots=True)
class CrashCounts:
    """What the engine says of a container restarted in place (all three are written)."""

    restart_count: int
    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class ReplicaChange:
    """What a transition sets besides the status; a field left None is left alone."""

    node_id: uuid.UUID | None = None
    spec_hash: str | None = None
    container_id: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    crash: CrashCounts | None = None

    def applied(self, r: Replica, status: ReplicaStatus) -> Replica:
        """`r` as its row reads after a transition to `status` with this change."""
        crash = self.crash
        return replace(
            r,
            status=status,
            node_id=self.node_id or r.node_id,
            spec_hash=self.spec_hash or r.spec_hash,
            container_id=self.container_id or r.container_id,
            started_at=self.started_at or r.started_at,
            stopped_at=self.stopped_at or r.stopped_at,
            restart_count=crash.restart_count if crash else r.restart_count,
            last_exit_code=crash.exit_code if crash else r.last_exit_code,
            oom_killed=crash.oom_killed if crash else r.oom_killed,
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """Move one replica from one of `expected` statuses to `status`, applying `change`."""

    replica_id: uuid.UUID
    expected: tuple[ReplicaStatus, ...]
    status: ReplicaStatus
    change: ReplicaChange = ReplicaChange()


class ReconcileStore(Protocol):
    """What one reconcile reads and writes."""

    @property
    def epoch(self) -> int | None:
        """The leader's fencing epoch, stamped on the containers it creates."""

    def load_deployment(self, deployment_id: uuid.UUID) -> Awaitable[Deployment | None]: ...

    def node_usage(self) -> Awaitable[dict[uuid.UUID, Resources]]:
        """What live replicas hold on each node (the scheduler's usage)."""

    def node_ports(self) -> Awaitable[dict[uuid.UUID, Counter[tuple[int, str]]]]:
        """The host ports (port, protocol) live replicas hold on each node, each counted per
        replica holding it: their deployment's `RunSpec.host_ports()`."""

    def create_replicas(
        self, deployment_id: uuid.UUID, count: int, now: datetime
    ) -> Awaitable[list[Replica]]: ...

    def transition(self, changes: Iterable[Transition]) -> Awaitable[set[uuid.UUID]]:
        """Apply guarded transitions; returns the ids that moved."""

    def record_status(
        self,
        deployment_id: uuid.UUID,
        old: DeploymentStatus,
        new: DeploymentStatus,
        reason: str,
        now: datetime,
        state: ProgressState | None = None,
    ) -> Awaitable[bool]:
        """Write the status and its history row, only if the status is still `old`; with
        `state`, the controller's persisted progress in the same transaction."""

    def save_progress(self, deployment_id: uuid.UUID, state: ProgressState) -> Awaitable[None]:
        """The persisted progress alone (backoff moved, status unchanged)."""

    def registry_credential(
        self, user_id: uuid.UUID, name: str
    ) -> Awaitable[tuple[str, str, str] | None]:
        """A user's registry login by name: (registry_host, username, password_encrypted)."""


class PurgeStore(Protocol):
    """What the volume purge (controller.purge) reads and writes."""

    def deployments_to_purge(self) -> Awaitable[list[uuid.UUID]]:
        """Deleted deployments whose named volumes an operator asked to remove."""

    def volumes_purged(self, deployment_id: uuid.UUID) -> Awaitable[None]:
        """Every node's volumes of the deployment are gone: no longer to purge."""


class NodeStore(Protocol):
    """What the node monitor reads and writes."""

    def nodes(self) -> Awaitable[list[NodeRecord]]: ...

    def register_node_if_none(
        self, name: str, docker_url: str, info: EngineInfo | None
    ) -> Awaitable[bool]:
        """Add the embedded default node, only to an empty table."""

    def update_nodes(
        self, changes: Sequence[tuple[uuid.UUID, dict[str, Any]]]
    ) -> Awaitable[None]: ...

    def set_engine_labels(
        self, node_id: uuid.UUID, labels: Mapping[str, str]
    ) -> Awaitable[dict[str, str] | None]:
        """Merge the engine's own `fog.io/` labels into the node's `labels`, the operator's
        kept: the values it replaced (key -> old), or None when the row's labels are no JSON
        object (left as they are) or the node is gone."""

    def fail_replicas_on_node(
        self, node_id: uuid.UUID, now: datetime
    ) -> Awaitable[dict[uuid.UUID, int]]: ...
