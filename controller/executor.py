"""Carry out decided actions against the store and the engines, and say what changed.

The one place that moves replica rows and touches containers for the reconciler and for the
resync pass's stray removal. Each operation returns its outcome (the replica as now recorded,
or whether the engine did it), so the reconciler derives the status after acting from the
deployment it loaded plus these outcomes instead of reading the deployment again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from controller import errors
from controller.decide import Decision
from controller.model import (
    Deployment,
    NodeRecord,
    ObservedContainer,
    Replica,
    ReplicaStatus,
    container_name,
    short_id,
)
from controller.plan import StopReplica
from controller.ports import CrashCounts, ReconcileStore, ReplicaChange, Transition
from controller.runspec import RegistryAuth
from controller.runtime import ContainerSpec, Runtime
from schema.enums import (
    LIVE_REPLICA_STATUSES,
    NOT_TERMINAL_REPLICA_STATUSES,
    TERMINAL_REPLICA_STATUSES,
)

log = structlog.get_logger(__name__)

_LIVE = tuple(LIVE_REPLICA_STATUSES)
_LIVE_OR_STOPPING = tuple(NOT_TERMINAL_REPLICA_STATUSES)


@dataclass
class Outcomes:
    """What one reconcile's actions changed: each replica as now recorded, and new rows."""

    changed: dict[uuid.UUID, Replica] = field(default_factory=dict)
    created: list[Replica] = field(default_factory=list)
    started: int = 0  # containers the engines started (their listing says how they are)

    def note(self, r: Replica) -> None:
        self.changed[r.id] = r

    def applied_to(self, d: Deployment) -> Deployment:
        """`d` as a load would return it now, as far as our own writes go (terminal rows,
        stopped or failed, are not loaded)."""
        if not self.changed and not self.created:
            return d
        known = {r.id for r in d.replicas}
        rows = [*d.replicas, *(r for r in self.created if r.id not in known)]
        now = (self.changed.get(r.id, r) for r in rows)
        loaded = tuple(r for r in now if r.status not in TERMINAL_REPLICA_STATUSES)
        return replace(d, replicas=loaded)


_Move = tuple[Replica, tuple[ReplicaStatus, ...], ReplicaStatus, ReplicaChange]


def intent(d: Deployment, decision: Decision, now: datetime) -> list[_Move]:
    """The transitions that record a decision's intent: (replica, expected, status, change)."""
    starting, running = ReplicaStatus.STARTING, ReplicaStatus.RUNNING
    moves: list[_Move] = []
    for a in decision.adopt:
        change = ReplicaChange(container_id=a.container_id, started_at=now, spec_hash=d.spec_hash)
        moves.append((a.replica, (starting,), running, change))
    for c in decision.crashes:
        crash = CrashCounts(c.restart_count, c.exit_code, c.oom_killed)
        moves.append((c.replica, (running,), running, ReplicaChange(crash=crash)))
    for f in decision.failures:
        moves.append(
            (f.replica, (starting, running), ReplicaStatus.FAILED, ReplicaChange(stopped_at=now))
        )
    for s in decision.stops:
        if s.replica.status is not ReplicaStatus.STOPPING:
            moves.append((s.replica, _LIVE, ReplicaStatus.STOPPING, ReplicaChange()))
    return moves


class Executor:
    """Applies actions; `records` gives the node rows as the node monitor last saw them."""

    def __init__(
        self,
        store: ReconcileStore,
        runtime: Runtime,
        records: Callable[[], Mapping[uuid.UUID, NodeRecord]],
        stop_timeout_seconds: float,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._records = records
        self._stop_timeout = stop_timeout_seconds

    async def _move(
        self,
        out: Outcomes,
        moves: Iterable[_Move],
    ) -> set[uuid.UUID]:
        """Guarded transitions; each replica that moved is noted in `out` as it now is."""
        batch = list(moves)
        moved = await self._store.transition(
            Transition(r.id, expected, status, change) for r, expected, status, change in batch
        )
        for r, _, status, change in batch:
            if r.id in moved:
                out.note(change.applied(r, status))
        return moved

    async def record_intent(
        self, d: Deployment, decision: Decision, now: datetime, out: Outcomes
    ) -> set[uuid.UUID]:
        """Adoptions, crash counts, failures and stop intents, in one write, before any engine
        is asked to do anything; returns the replicas that moved."""
        moved = await self._move(out, intent(d, decision, now))
        for a in decision.adopt:
            if a.replica.id in moved:
                log.info("replica_adopted", replica_id=str(a.replica.id), container=a.container_id)
        for c in decision.crashes:
            if c.replica.id in moved:
                log.warning(
                    "replica_restarted",
                    replica_id=str(c.replica.id),
                    restart_count=c.restart_count,
                    exit_code=c.exit_code,
                    oom_killed=c.oom_killed,
                )
        for f in decision.failures:
            if f.replica.id in moved:
                log.warning("replica_failed", replica_id=str(f.replica.id), reason=f.reason)
        for s in decision.stops:
            if s.replica.id in moved:
                log.info("replica_stopping", replica_id=str(s.replica.id))
        return moved

    async def create(
        self, d: Deployment, count: int, now: datetime, out: Outcomes
    ) -> list[Replica]:
        """Insert `count` pending rows (intent, committed before any container exists)."""
        created = await self._store.create_replicas(d.id, count, now)
        out.created.extend(created)
        log.info("replicas_created", count=len(created), target=d.target_replicas)
        return created

    async def place(
        self,
        d: Deployment,
        placements: Mapping[uuid.UUID, uuid.UUID],
        replicas: Iterable[Replica],
        out: Outcomes,
    ) -> list[Replica]:
        """Record chosen nodes (pending -> starting); returns the replicas placed."""
        chosen = [r for r in replicas if r.id in placements]
        moved = await self._move(
            out,
            (
                (
                    r,
                    (ReplicaStatus.PENDING,),
                    ReplicaStatus.STARTING,
                    ReplicaChange(node_id=placements[r.id], spec_hash=d.spec_hash),
                )
                for r in chosen
            ),
        )
        return [out.changed[r.id] for r in chosen if r.id in moved]

    async def ensure(
        self, d: Deployment, r: Replica, record: NodeRecord, auth: RegistryAuth | None = None
    ) -> str:
        """Create (or find by name) and start the replica's container as the spec says,
        pulling with `auth` (the decrypted pull secret); the engine's errors are raised for
        the caller to judge."""
        spec = ContainerSpec(
            r.id,
            d.id,
            d.image,
            d.resources,
            d.spec_hash,
            self._store.epoch,
            run=d.run,
            auth=auth,
        )
        return await self._runtime.ensure(record, spec)

    async def mark_started(
        self,
        d: Deployment,
        r: Replica,
        record: NodeRecord,
        container_id: str,
        now: datetime,
        out: Outcomes,
    ) -> None:
        await self._move(
            out,
            [
                (
                    r,
                    (ReplicaStatus.STARTING,),
                    ReplicaStatus.RUNNING,
                    ReplicaChange(container_id=container_id, started_at=now, spec_hash=d.spec_hash),
                )
            ],
        )
        out.started += 1
        log.info(
            "replica_started", replica_id=str(r.id), node=record.name, container=container_id[:12]
        )

    async def mark_start_failed(
        self,
        r: Replica,
        record: NodeRecord,
        reason: str,
        now: datetime,
        out: Outcomes,
        *,
        node_excluded: bool,
    ) -> None:
        await self._move(
            out,
            [(r, (ReplicaStatus.STARTING,), ReplicaStatus.FAILED, ReplicaChange(stopped_at=now))],
        )
        log.warning(
            "replica_start_failed",
            replica_id=str(r.id),
            node=record.name,
            reason=reason,
            node_excluded=node_excluded,
        )

    async def stop(
        self,
        a: StopReplica,
        now: Callable[[], datetime],
        out: Outcomes,
        grace_seconds: float | None = None,
    ) -> bool:
        """Stop gracefully (`grace_seconds`, the deployment's stop_grace_seconds, else
        FOG_STOP_TIMEOUT_SECONDS), remove, mark stopped; False when the node could not be
        reached."""
        r = a.replica
        if r.node_id is not None:
            record = self._records().get(r.node_id)
            if record is None:
                return False  # node unknown: try again once it is back (or removed)
            ref = a.container.id if a.container else (r.container_id or container_name(r.id))
            try:
                grace = self._stop_timeout if grace_seconds is None else grace_seconds
                await self._runtime.stop(record, ref, grace)
            except errors.ControllerError as exc:
                log.warning(
                    "replica_stop_failed", replica_id=str(r.id), node=record.name, reason=exc.reason
                )
                return False
        await self._move(
            out, [(r, _LIVE_OR_STOPPING, ReplicaStatus.STOPPED, ReplicaChange(stopped_at=now()))]
        )
        log.info("replica_stopped", replica_id=str(r.id), replica=short_id(r.id))
        return True

    async def remove(self, container: ObservedContainer, why: str) -> bool:
        """Remove a container no live replica owns (at once: nothing is served by it)."""
        record = self._records().get(container.node_id)
        if record is None:
            return False
        try:
            await self._runtime.stop(record, container.id, 0)
        except errors.ControllerError as exc:
            log.warning("container_remove_failed", container=container.name, reason=exc.reason)
            return False
        log.info("container_removed", container=container.name, node=record.name, why=why)
        return True
