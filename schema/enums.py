"""Status vocabularies shared by the tables and the controller's pure core.

Kept free of SQLAlchemy so the planner and scheduler can import them without pulling in I/O.
"""

from __future__ import annotations

import enum


class DeploymentStatus(enum.StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


class ReplicaStatus(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class NodeStatus(enum.StrEnum):
    """Controller-owned health of a node; cordon and drain are separate operator flags."""

    UNKNOWN = "unknown"
    READY = "ready"
    NOT_READY = "not_ready"


LIVE_REPLICA_STATUSES = frozenset(
    {ReplicaStatus.PENDING, ReplicaStatus.STARTING, ReplicaStatus.RUNNING}
)
TERMINAL_REPLICA_STATUSES = frozenset({ReplicaStatus.STOPPED, ReplicaStatus.FAILED})
# What a load returns and a stop may still finish: live, or on its way out.
NOT_TERMINAL_REPLICA_STATUSES = frozenset(set(ReplicaStatus) - TERMINAL_REPLICA_STATUSES)
