"""Frozen domain values shared by the pure core (plan, scheduler) and the adapters.

The store turns rows into these, the runtime turns Docker listings into these, and the planner
sees nothing else: no ORM objects, no Docker dicts, no clocks.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from controller.generation import NEVER_OBSERVED
from controller.placement_rules import NO_RULES, Label, PlacementRules, engine_labels
from controller.runspec import EMPTY_RUN, RunSpec
from controller.storage import StorageLimits
from schema.enums import (
    LIVE_REPLICA_STATUSES,
    DeploymentStatus,
    NodeStatus,
    ReplicaStatus,
)

__all__ = [
    "LIVE_REPLICA_STATUSES",
    "ContainerState",
    "Deployment",
    "DeploymentStatus",
    "Node",
    "NodeStatus",
    "NodeView",
    "ObservedContainer",
    "ProgressState",
    "Replica",
    "ReplicaStatus",
    "Resources",
]

# Labels that mark a container as ours. A container without them is never touched.
LABEL_MANAGED_BY = "fog.managed-by"
MANAGED_BY_VALUE = "fog-controller"
LABEL_DEPLOYMENT = "fog.deployment-id"
LABEL_REPLICA = "fog.replica-id"
LABEL_SPEC = "fog.spec-hash"
LABEL_EPOCH = "fog.epoch"
# The replica's storage_gb, read by the storage monitor without a database lookup.
LABEL_STORAGE_GB = "fog.storage-gb"
CONTAINER_NAME_PREFIX = "fog-"


def container_name(replica_id: uuid.UUID) -> str:
    """Derived from the replica id, so a create retried after a crash finds its own container."""
    return f"{CONTAINER_NAME_PREFIX}{replica_id}"


def short_id(value: uuid.UUID) -> str:
    return str(value)[:8]


def spec_hash(image: str, resources: Resources | None, run: RunSpec = EMPTY_RUN) -> str:
    """What a replica runs, in 12 hex digits: a change of image, resources or any other part
    of the spec is a rollout. An empty `run` adds nothing, so hashes made before it existed
    stay the same."""
    fields = [image]
    if resources is not None:
        fields += [
            f"{resources.cpu_cores:g}",
            str(resources.memory_mb),
            str(resources.gpu_units),
            str(resources.storage_gb),
        ]
    if run.canonical:
        fields.append(run.canonical)
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_cores: float
    memory_mb: int
    gpu_units: int = 0
    storage_gb: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_cores + other.cpu_cores,
            self.memory_mb + other.memory_mb,
            self.gpu_units + other.gpu_units,
            self.storage_gb + other.storage_gb,
        )


ZERO = Resources(0.0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Node:
    """A node as the scheduler sees it. `storage_gb=None` means storage is not constrained."""

    id: uuid.UUID
    name: str
    docker_url: str
    status: NodeStatus
    cpu_cores: float
    memory_mb: int
    gpu_units: int = 0
    storage_gb: int | None = None
    unschedulable: bool = False
    draining: bool = False
    last_heartbeat_at: datetime | None = None
    # Since when the engine has answered every probe (None: not answering, or not known).
    up_since: datetime | None = None
    # Node ports (port, protocol) held by containers that are not ours, as of the last
    # probe that could list them: a replica publishing one of them cannot land here.
    foreign_ports: frozenset[tuple[int, str]] = frozenset()
    # The node's labels: the operator's (nodes.labels) and the controller's own `fog.io/`
    # ones from the engine (controller.placement_rules), as (key, value) pairs.
    labels: frozenset[Label] = frozenset()


@dataclass(frozen=True, slots=True)
class Replica:
    id: uuid.UUID
    deployment_id: uuid.UUID
    status: ReplicaStatus
    node_id: uuid.UUID | None = None
    container_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    # The spec it was started with (None: from before spec tracking; taken as current).
    spec_hash: str | None = None
    # What the engine reported as it restarted the container in place.
    restart_count: int = 0
    last_exit_code: int | None = None
    oom_killed: bool = False

    @property
    def live(self) -> bool:
        return self.status in LIVE_REPLICA_STATUSES


@dataclass(frozen=True, slots=True)
class ProgressState:
    """What decides a deployment's behaviour beyond its rows, as the controller last persisted
    it with a status (table `deployment_controller_state`): a controller that takes over
    resumes from it instead of starting the backoff and the progress deadline afresh."""

    observed_generation: int  # the generation the recorded status describes
    failures: int = 0  # crash backoff: failures counted so far
    retry_at: datetime | None = None  # crash backoff: no start before this
    progress_since: datetime | None = None  # the progress deadline runs from here
    stable_since: datetime | None = None  # converged without a break since
    error: str | None = None  # the latest start failure, the reason's problem part


@dataclass(frozen=True, slots=True)
class Deployment:
    """Desired state (operator-owned) plus the status the controller last recorded."""

    id: uuid.UUID
    name: str
    user_id: uuid.UUID
    image: str
    target_replicas: int
    resources: Resources | None
    status: DeploymentStatus
    updated_at: datetime
    deleted_at: datetime | None = None
    # Non-terminal replicas (pending, starting, running, stopping).
    replicas: tuple[Replica, ...] = ()
    # The newest history row: its reason is the deployment's current condition.
    last_reason: str | None = None
    # The operator's spec version, counted by the database (see controller.generation), and
    # what the controller persisted about it (None: nothing yet).
    generation: int = 1
    progress: ProgressState | None = None
    # How its containers run: command, env, ports, volumes... (controller.runspec).
    run: RunSpec = EMPTY_RUN
    # Where it may run and how it spreads (node selector, spread_by, max_per_node, rebalance).
    placement: PlacementRules = NO_RULES
    # Computed once: a resync pass compares it with every replica's (a sha256 each time
    # was a fifth of a pass over 50,000 replicas).
    _spec_hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_spec_hash", spec_hash(self.image, self.resources, self.run))

    @property
    def deleting(self) -> bool:
        return self.deleted_at is not None

    @property
    def observed_generation(self) -> int:
        if self.progress is None:
            return NEVER_OBSERVED
        return self.progress.observed_generation

    @property
    def spec_hash(self) -> str:
        return self._spec_hash

    def outdated(self, r: Replica) -> bool:
        return r.spec_hash is not None and r.spec_hash != self.spec_hash


class ContainerState(enum.StrEnum):
    """Docker's container states, as the list API reports them."""

    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    PAUSED = "paused"
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"

    @classmethod
    def parse(cls, raw: str) -> ContainerState:
        try:
            return cls(raw.lower())
        except ValueError:
            return cls.DEAD


@dataclass(frozen=True, slots=True)
class ObservedContainer:
    """One of our containers as a node's engine reports it."""

    id: str
    name: str
    node_id: uuid.UUID
    state: ContainerState
    deployment_id: uuid.UUID | None
    replica_id: uuid.UUID | None
    image: str = ""
    exit_code: int | None = None
    restart_count: int = 0
    oom_killed: bool = False
    finished_at: datetime | None = None  # when it last exited (not running only)
    health: str | None = None  # healthy | unhealthy | starting; None: no HEALTHCHECK
    spec_hash: str | None = None  # from the container's label
    uptime_seconds: float | None = None  # since its last (re)start, when running
    inspected: bool = False  # restart_count, exit_code, oom_killed, finished_at are known


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one listing of one node showed. `complete=False`: the node could not be listed,
    so its replicas are unknown, not missing, and nothing on it may be judged gone."""

    node_id: uuid.UUID
    complete: bool
    observed_at: datetime
    containers: tuple[ObservedContainer, ...] = field(default=())
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node row as stored: capacity columns may be NULL (then detected from the engine)."""

    id: uuid.UUID
    name: str
    docker_url: str
    status: NodeStatus
    cpu_cores: float | None = None
    memory_mb: int | None = None
    gpu_units: int | None = None
    storage_gb: int | None = None
    unschedulable: bool = False
    draining: bool = False
    last_heartbeat_at: datetime | None = None
    labels: tuple[tuple[str, str], ...] = ()
    # Controller-owned engine facts (NULL until the first probe): see controller.storage.
    storage_driver: str | None = None
    storage_limits: StorageLimits | None = None
    engine_version: str | None = None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine says about itself (docker info), and what the runtime concluded from it
    (`storage_limits`; None: the runtime does not judge, e.g. a test double)."""

    cpu_cores: float
    memory_mb: int
    storage_driver: str = ""
    server_version: str = ""
    engine: str = ""  # "docker" or "podman" (runtime.docker.EngineFlavour)
    arch: str = ""  # docker info's Architecture, as the engine says it (x86_64, aarch64)
    os: str = ""  # docker info's OSType (linux)
    storage_limits: StorageLimits | None = None


def resolve_node(
    record: NodeRecord,
    info: EngineInfo | None,
    up_since: datetime | None = None,
    foreign_ports: frozenset[tuple[int, str]] = frozenset(),
) -> Node:
    """The schedulable view of a node: row capacity where set, the engine's figures elsewhere.
    A node never probed has no capacity to offer."""
    return Node(
        id=record.id,
        name=record.name,
        docker_url=record.docker_url,
        status=record.status,
        cpu_cores=record.cpu_cores
        if record.cpu_cores is not None
        else (info.cpu_cores if info else 0.0),
        memory_mb=record.memory_mb
        if record.memory_mb is not None
        else (info.memory_mb if info else 0),
        gpu_units=record.gpu_units or 0,
        storage_gb=record.storage_gb,
        unschedulable=record.unschedulable,
        draining=record.draining,
        last_heartbeat_at=record.last_heartbeat_at,
        up_since=up_since,
        foreign_ports=foreign_ports,
        labels=node_labels(record, info),
    )


def node_labels(record: NodeRecord, info: EngineInfo | None) -> frozenset[Label]:
    """The operator's labels with the engine's `fog.io/` ones over them: the controller's
    word wins for its own keys, even before its probe has written them to the row."""
    labels = dict(record.labels)
    if info is not None:
        labels.update(engine_labels(info.arch, info.os, info.engine))
    return frozenset(labels.items())
