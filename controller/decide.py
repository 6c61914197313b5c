"""PURE: the whole decision of one reconcile, over values.

`decide` runs the planner and sorts its actions by kind (what each apply step takes), and
says whether starts wait for the crash backoff; `crashes_counted` is the backoff after the
failures the store recorded; `next_look` is when to look again even if nothing wakes us
(the backoff ends, an unhealthy container's grace or a fresh exit's grace passes, the
progress deadline could pass). Placement itself needs the scheduler's cache of node usage,
so the decision says which replicas to place and the executor asks `placement` for nodes.
`prepull_nodes` says where a rollout's new image must be pulled before its old replicas
stop, and `without_rollout_stops` is the decision when that pull failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.model import (
    ContainerState,
    Deployment,
    DeploymentStatus,
    NodeView,
    Replica,
    ReplicaStatus,
    short_id,
)
from controller.plan import (
    CreateReplicas,
    EnsureContainer,
    Fleet,
    MarkFailed,
    MarkRunning,
    Observed,
    PlaceReplica,
    Policy,
    RecordCrash,
    RemoveContainer,
    StopReplica,
    plan,
)
from controller.progress import (
    Backoff,
    DeploymentMemory,
    after_crash,
    backoff_left,
    progress_wait,
)

# How soon to look again after a transient failure (engine briefly unreachable, say).
TRANSIENT_RETRY_SECONDS = 1.0
# A time-based look comes this long after the moment it waits for (seconds).
_LATE = 0.05


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan's actions by kind, in the order they are applied."""

    adopt: tuple[MarkRunning, ...] = ()
    crashes: tuple[RecordCrash, ...] = ()
    failures: tuple[MarkFailed, ...] = ()
    stops: tuple[StopReplica, ...] = ()
    removals: tuple[RemoveContainer, ...] = ()
    create: int = 0
    place: tuple[Replica, ...] = ()
    ensure: tuple[Replica, ...] = ()
    actions: int = 0

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def wants_starts(self) -> bool:
        return bool(self.ensure or self.place or self.create)


def decide(
    d: Deployment,
    observed: Observed,
    fleet: Fleet,
    *,
    policy: Policy,
    now: datetime,
    unhealthy_since: Mapping[str, datetime],
    over_limit: Mapping[str, str],
    moving: Collection[uuid.UUID] = (),
) -> Decision:
    """What to do for `d` now, grouped by kind (`moving`: a rebalance's replica in flight)."""
    p = plan(
        d,
        observed.views,
        fleet,
        policy=policy,
        mine=observed,
        now=now,
        unhealthy_since=unhealthy_since,
        over_limit=over_limit,
        moving=moving,
    )
    adopt, crashes, failures, stops, removals = [], [], [], [], []
    create, place, ensure = 0, [], []
    for a in p.actions:
        match a:
            case MarkRunning():
                adopt.append(a)
            case RecordCrash():
                crashes.append(a)
            case MarkFailed():
                failures.append(a)
            case StopReplica():
                stops.append(a)
            case RemoveContainer():
                removals.append(a)
            case CreateReplicas(count=count):
                create += count
            case PlaceReplica(replica=r):
                place.append(r)
            case EnsureContainer(replica=r):
                ensure.append(r)
    return Decision(
        adopt=tuple(adopt),
        crashes=tuple(crashes),
        failures=tuple(failures),
        stops=tuple(stops),
        removals=tuple(removals),
        create=create,
        place=tuple(place),
        ensure=tuple(r for r in ensure if r.node_id is not None),
        actions=len(p.actions),
    )


def rollout_stops(d: Deployment, decision: Decision) -> tuple[StopReplica, ...]:
    """The stops that replace an outdated replica and have not begun: a rollout's."""
    if d.deleting:
        return ()
    return tuple(
        s
        for s in decision.stops
        if s.replica.status is not ReplicaStatus.STOPPING and d.outdated(s.replica)
    )


def prepull_nodes(d: Deployment, decision: Decision) -> frozenset[uuid.UUID]:
    """Where the new image must be on the node before this decision's rollout stops run:
    the nodes of the old replicas it stops (their replacements land where they free room,
    and on the one node a host port allows) and of the new replicas placed but not started.
    Any other node a replacement lands on pulls at its create, before an old replica needs
    it. Empty when the decision stops no old replica."""
    stops = rollout_stops(d, decision)
    if not stops:
        return frozenset()
    nodes = {s.replica.node_id for s in stops}
    nodes |= {r.node_id for r in decision.ensure if not d.outdated(r)}
    return frozenset(n for n in nodes if n is not None)


def without_rollout_stops(d: Deployment, decision: Decision) -> Decision:
    """The decision with its rollout stops held back (the new image could not be pulled):
    every old replica keeps serving."""
    held = rollout_stops(d, decision)
    if not held:
        return decision
    kept = tuple(s for s in decision.stops if s not in held)
    return replace(decision, stops=kept, actions=decision.actions - len(held))


def crashes_counted(
    mem: DeploymentMemory,
    failures: Iterable[MarkFailed],
    moved: set[uuid.UUID],
    now: datetime,
    backoff: Backoff,
) -> tuple[DeploymentMemory, list[tuple[int, float]]]:
    """The memory after the failures the store recorded (each a crash toward the backoff),
    and the backoffs they started: (failures so far, delay in seconds)."""
    delays = []
    for f in failures:
        if f.replica.id not in moved:
            continue
        mem, delay = after_crash(
            mem, f"replica {short_id(f.replica.id)} failed: {f.reason}", now, backoff
        )
        if delay is not None:
            delays.append((mem.failures, delay))
    return mem, delays


def start_gate(mem: DeploymentMemory, now: datetime) -> float | None:
    """Seconds the starts wait for the crash backoff to end; None: start now."""
    return backoff_left(mem, now)


def next_look(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    mem: DeploymentMemory,
    unhealthy_since: Mapping[str, datetime],
    policy: Policy,
    now: datetime,
) -> float | None:
    """Seconds until the earliest time-based decision for `d` changes, if any."""
    moments: list[datetime] = []
    if mem.retry_at is not None and mem.retry_at > now:
        moments.append(mem.retry_at)
    for view in views.values():
        for c in view.containers:
            if c.deployment_id != d.id:
                continue
            sick = unhealthy_since.get(c.id) if c.health == "unhealthy" else None
            if sick is not None:
                moments.append(sick + policy.unhealthy_grace)
            if c.finished_at is not None and c.state not in (
                ContainerState.RUNNING,
                ContainerState.RESTARTING,
            ):
                moments.append(c.finished_at + policy.exit_grace)
    future = [m for m in moments if m > now]
    if not future:
        return None
    return (min(future) - now).total_seconds() + _LATE


def requeue_after(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    mem: DeploymentMemory,
    *,
    gated: float | None,
    transient: bool,
    unhealthy_since: Mapping[str, datetime],
    policy: Policy,
    now: datetime,
    deadline: timedelta,
) -> float | None:
    """When to reconcile `d` again though nothing wakes us: the soonest of the backoff gate,
    a time-based threshold, a quick retry after a transient failure, or (not running and
    nothing else due) the progress deadline."""
    requeue = gated
    wake = next_look(d, views, mem, unhealthy_since, policy, now)
    if wake is not None:
        requeue = wake if requeue is None else min(requeue, wake)
    if transient:
        return min(requeue or TRANSIENT_RETRY_SECONDS, TRANSIENT_RETRY_SECONDS)
    if d.status is not DeploymentStatus.RUNNING and requeue is None:
        return progress_wait(mem, now, deadline)
    return requeue
