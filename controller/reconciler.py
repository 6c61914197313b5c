"""`reconcile(deployment_id)`: read desired and observed state, plan, act, record status once.

Level-triggered: a key is all it gets; it re-reads the deployment from the store and lists the
engines every time, so a lost wake-up can only delay convergence, never prevent it.

Crash safety is "intent before action": replica rows (pending), their placement and their
`starting` status are committed before any container exists, and the container's name is
derived from the replica id. A controller killed at any point restarts, finds `starting`
replicas, and `ensure`s their containers: a create that already happened is found by name and
adopted instead of making a twin.

Starts go in slow-start batches (1, 2, 4, ...), stopping at the first batch with a failure, as
Kubernetes' ReplicaSet controller does, so a broken image fails once, not a hundred times. A
failed start puts the deployment in crash backoff (10 s doubling to 5 min).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from controller import errors, scheduler
from controller.model import (
    ZERO,
    ContainerState,
    Deployment,
    DeploymentStatus,
    Node,
    NodeRecord,
    NodeStatus,
    NodeView,
    ObservedContainer,
    ProgressState,
    Replica,
    ReplicaStatus,
    Resources,
    container_name,
    short_id,
)
from controller.nodes import NodeMonitor
from controller.plan import (
    CreateReplicas,
    EnsureContainer,
    Fleet,
    MarkFailed,
    MarkRunning,
    Observed,
    PlaceReplica,
    Plan,
    Policy,
    Progress,
    RecordCrash,
    RemoveContainer,
    StopReplica,
    derive_status,
    history_needed,
    plan,
)
from controller.runtime import ContainerSpec, Runtime
from controller.settings import Settings
from controller.store import Store, Transition

log = structlog.get_logger(__name__)

_LIVE_OR_STOPPING = (
    ReplicaStatus.PENDING,
    ReplicaStatus.STARTING,
    ReplicaStatus.RUNNING,
    ReplicaStatus.STOPPING,
)
# How soon to look again after a transient failure (engine briefly unreachable, say).
TRANSIENT_RETRY_SECONDS = 1.0
# Exit codes remembered from `die` events (oldest dropped first).
EXITS_REMEMBERED = 10_000
# Statuses from which the first placement is recorded as a change (-> scheduled).
_NOT_YET_PLACED = (DeploymentStatus.PENDING, DeploymentStatus.STOPPED)
# Crash backoff resets after this long converged without a break (as kubelet's does).
STABLE_RESET = timedelta(minutes=10)
# The scheduler's view of node usage is re-read from the store at least this often (seconds).
USAGE_MAX_AGE = 5.0
# Identical start failures of one deployment on one node before that node is passed over for
# it (whether the engine's answer was classified transient or permanent) ...
REFUSALS_BEFORE_EXCLUSION = 5
# ... for this long after the last one, or until the node's engine restarts or the operator
# changes the deployment, whichever comes first.
REFUSAL_TTL = timedelta(minutes=10)
# What differs between two failures that are the same failure: container and image ids.
_VOLATILE = re.compile(
    r"\b[0-9a-f]{12,64}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
)


@dataclass
class Refusal:
    """Identical start failures of one deployment on one node."""

    node_name: str
    words: str  # the engine's answer, verbatim (the latest)
    count: int
    last_at: datetime
    node_up_since: datetime | None  # the engine's uptime mark when it refused


class NodeRefused(errors.PermanentError):
    """A node refused one deployment's replicas `REFUSALS_BEFORE_EXCLUSION` times alike: its
    replica fails and the replacement goes elsewhere, without crash backoff."""


def _steady_key(
    d: Deployment, views: Mapping[uuid.UUID, NodeView], mine: list[ObservedContainer]
) -> tuple[object, ...]:
    """What a converged judgement of `d` rests on besides its rows and nodes: its containers
    as listed (all but their uptime, which grows with every listing) and which of its
    replicas' nodes could be listed completely."""
    containers = tuple(
        (
            c.id,
            c.node_id,
            c.replica_id,
            c.state,
            c.health,
            c.spec_hash,
            c.image,
            c.inspected,
            c.restart_count,
            c.exit_code,
            c.oom_killed,
            c.finished_at,
        )
        for c in mine
    )
    nodes = tuple(
        (r.node_id, r.node_id is not None and r.node_id in views and views[r.node_id].complete)
        for r in d.replicas
    )
    return containers, nodes


@dataclass
class DeploymentMemory:
    """What the reconciler remembers about one deployment between reconciles: failures, the
    current problem, progress time. What decides behaviour (`progress_state`) is persisted
    with the status and resumed from on first sight, so a controller that takes over goes
    on where the old leader stopped; node refusals and readiness counts stay in memory."""

    last_progress_at: datetime
    spec_seen: int  # the generation last acted on (see controller.generation)
    failures: int = 0
    retry_at: datetime | None = None
    error: str | None = None  # the latest start failure
    unschedulable: str | None = None  # the latest "0/N nodes fit: ..."
    last_ready: int = 0
    stable_since: datetime | None = None  # converged without a break since
    # Start failures per (node, failure with ids masked).
    refusals: dict[tuple[uuid.UUID, str], Refusal] = field(default_factory=dict)
    persisted: ProgressState | None = None  # as last read from or written to the store

    @classmethod
    def resume(cls, d: Deployment, now: datetime) -> DeploymentMemory:
        """Memory as the last leader persisted it. The ready count is the rows' running
        replicas: at least what that leader counted ready, so resuming is never progress."""
        p = d.progress
        if p is None:
            return cls(last_progress_at=now, spec_seen=d.observed_generation)
        return cls(
            last_progress_at=p.progress_since or now,
            spec_seen=p.observed_generation,
            failures=p.failures,
            retry_at=p.retry_at,
            error=p.error,
            last_ready=sum(1 for r in d.replicas if r.status is ReplicaStatus.RUNNING),
            stable_since=p.stable_since,
            persisted=p,
        )

    def progress_state(self) -> ProgressState:
        """What to persist. A converged deployment's progress time moves with every look and
        decides nothing, so it is left out (resumed as "now")."""
        return ProgressState(
            observed_generation=self.spec_seen,
            failures=self.failures,
            retry_at=self.retry_at,
            progress_since=None if self.stable_since is not None else self.last_progress_at,
            stable_since=self.stable_since,
            error=self.error,
        )

    @property
    def problem(self) -> str | None:
        return self.error or self.unschedulable

    def reset(self) -> None:
        self.failures, self.retry_at, self.error, self.unschedulable = 0, None, None, None
        self.refusals.clear()

    def excluded(self, nodes: Mapping[uuid.UUID, datetime | None], now: datetime) -> set[uuid.UUID]:
        """Nodes not to try for this deployment now; forgets refusals that lapsed (TTL) or
        whose engine restarted since (`nodes`: each node's up-since mark)."""
        out = set()
        for key, r in list(self.refusals.items()):
            node_id = key[0]
            if now - r.last_at > REFUSAL_TTL or nodes.get(node_id) != r.node_up_since:
                del self.refusals[key]
            elif r.count >= REFUSALS_BEFORE_EXCLUSION:
                out.add(node_id)
        return out

    def last_exclusion(self) -> Refusal | None:
        found = [r for r in self.refusals.values() if r.count >= REFUSALS_BEFORE_EXCLUSION]
        return max(found, key=lambda r: r.last_at) if found else None


@dataclass(frozen=True, slots=True)
class Result:
    requeue_after: float | None = None
    actions: int = 0


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        nodes: NodeMonitor,
        settings: Settings,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._nodes = nodes
        self._settings = settings
        self._clock = clock
        self._memory: dict[uuid.UUID, DeploymentMemory] = {}
        # What live replicas hold per node, as the scheduler sees it: read from the store,
        # then kept current by our own placements, assumed the moment they are chosen and
        # before they are written (kube-scheduler's "assume, then bind"), so concurrent
        # reconciles schedule against each other's choices without a lock held across a
        # database write. Capacity freed meanwhile is seen at the next read: the cache can
        # overestimate usage, never underestimate it, and a refusal always re-reads first.
        # The resync pass's converged judgements (see `triage`).
        self._steady: dict[uuid.UUID, tuple[Deployment, Fleet, tuple[object, ...]]] = {}
        self._fleet_of: tuple[Node, ...] | None = None
        self._fleet_cache = Fleet.of(())
        self._index: scheduler.NodeIndex | None = None
        self._usage_read_at = 0.0  # monotonic seconds
        self._usage_lock = asyncio.Lock()  # one read at a time
        # Placements chosen but not yet written, and (during a read) every one chosen meanwhile.
        self._assumed: dict[uuid.UUID, tuple[uuid.UUID, Resources]] = {}
        self._assumed_during_read: dict[uuid.UUID, tuple[uuid.UUID, Resources]] | None = None
        self.policy = Policy(
            burst=settings.replica_burst,
            exit_grace=timedelta(seconds=settings.exit_grace_seconds),
            max_surge=settings.max_surge,
            max_unavailable=settings.max_unavailable,
            min_ready=timedelta(seconds=settings.min_ready_seconds),
            unhealthy_grace=timedelta(seconds=settings.unhealthy_seconds),
        )
        # When each container was first seen unhealthy (in memory, as kubelet's probe state).
        self._unhealthy: dict[str, datetime] = {}
        # Containers the storage monitor found past their limit, with the reason (replaced
        # by each monitor pass, so it holds only what the last pass saw).
        self._over_storage: dict[str, str] = {}
        # Exit codes from `die` events: a container restarted in place no longer shows its.
        self._exits: dict[str, int] = {}
        # Per deployment, the nodes its containers were last seen on (resync passes, events,
        # reconciles). With the nodes of its replica rows, these are the nodes a reconcile
        # lists: listing every node of a large fog per reconcile costs a call per node.
        self._seen: dict[uuid.UUID, frozenset[uuid.UUID]] = {}

    # --- observation -----------------------------------------------------------------------

    async def observe(
        self, records: Iterable[NodeRecord], deployment_id: uuid.UUID | None = None
    ) -> dict[uuid.UUID, NodeView]:
        """List every reachable node at once; the rest are absent from the map (unknown).

        A reconcile passes its `deployment_id`: the planner only ever looks at that
        deployment's containers (`plan.Observed.index`), so listing the others would cost a
        scan of the whole fog per reconcile (and, on Docker, an inspect of every container of
        every other deployment that is not running) for nothing."""
        reachable = list(records)
        views = await asyncio.gather(*(self._runtime.list(r, deployment_id) for r in reachable))
        now = self._clock()
        if self._exits:
            views = [
                replace(
                    v,
                    containers=tuple(
                        replace(c, exit_code=self._exits[c.id])
                        if c.exit_code is None and c.id in self._exits
                        else c
                        for c in v.containers
                    ),
                )
                for v in views
            ]
        for view in views:
            for c in view.containers:
                if c.health == "unhealthy":
                    self._unhealthy.setdefault(c.id, now)
                else:
                    self._unhealthy.pop(c.id, None)
        return {v.node_id: v for v in views}

    def _fleet(self) -> Fleet:
        """The nodes indexed for the planner, once per node snapshot (not per reconcile)."""
        nodes = self._nodes.snapshot()
        if self._fleet_of is not nodes:
            self._fleet_cache, self._fleet_of = Fleet.of(nodes), nodes
        return self._fleet_cache

    def note_seen(self, deployment_id: uuid.UUID, node_id: uuid.UUID) -> None:
        """A container of the deployment showed up on `node_id` (a Docker event)."""
        self._seen[deployment_id] = self._seen.get(deployment_id, frozenset()) | {node_id}

    def _relevant(self, d: Deployment) -> list[NodeRecord]:
        """The reachable nodes that may hold `d`'s containers: its replicas' nodes and the
        nodes its containers were last seen on. A container of `d` anywhere else (started
        by hand, say) is found by the next resync pass, which lists every node, or at once
        by its node's event stream."""
        wanted = {r.node_id for r in d.replicas if r.node_id is not None}
        wanted |= self._seen.get(d.id, frozenset())
        records = self._nodes.records
        found = (records.get(node_id) for node_id in wanted)
        return [r for r in found if r is not None and r.status is NodeStatus.READY]

    async def _observe_one(self, d: Deployment) -> dict[uuid.UUID, NodeView]:
        listed = self._relevant(d)
        views = await self.observe(listed, d.id)
        found = {c.node_id for v in views.values() for c in v.containers}
        was = self._seen.get(d.id, frozenset())
        seen = found | (was - {r.id for r in listed})
        if seen:
            self._seen[d.id] = frozenset(seen)
        else:
            self._seen.pop(d.id, None)
        return views

    def memory(self, d: Deployment) -> DeploymentMemory:
        now = self._clock()
        mem = self._memory.get(d.id)
        if mem is None:
            mem = self._memory[d.id] = DeploymentMemory.resume(d, now)
        if d.generation > mem.spec_seen:
            # The operator changed the deployment: a fresh start, as a new rollout resets
            # Kubernetes' progress deadline and a changed pod resets kubelet's backoff.
            mem.spec_seen = d.generation
            mem.reset()
            mem.last_progress_at = now
        return mem

    def _plan(
        self,
        d: Deployment,
        views: Mapping[uuid.UUID, NodeView],
        nodes: Fleet,
        mine: list[ObservedContainer] | Observed | None = None,
    ) -> Plan:
        return plan(
            d,
            views,
            nodes,
            policy=self.policy,
            mine=mine,
            now=self._clock(),
            unhealthy_since=self._unhealthy,
            over_limit=self._over_storage,
        )

    def note_exit(self, container_id: str, code: int) -> None:
        """A container's last exit code, from its `die` event (bounded memory)."""
        self._exits[container_id] = code
        if len(self._exits) > EXITS_REMEMBERED:
            self._exits.pop(next(iter(self._exits)))

    def note_storage(self, over: Mapping[str, tuple[uuid.UUID, str]]) -> None:
        """What the storage monitor's last pass found: container id -> (deployment, reason).
        Their deployments' converged judgements are dropped, so a resync pass sees them."""
        self._over_storage = {container: reason for container, (_, reason) in over.items()}
        for deployment_id, _ in over.values():
            self._steady.pop(deployment_id, None)

    def note_problem(self, deployment_id: uuid.UUID, reason: str) -> None:
        """A problem found outside a reconcile (a node lost) for the deployment's reason."""
        self._steady.pop(deployment_id, None)
        mem = self._memory.get(deployment_id)
        if mem is not None:
            mem.error = reason

    def forget(self, deployment_id: uuid.UUID) -> None:
        self._memory.pop(deployment_id, None)
        self._steady.pop(deployment_id, None)
        self._seen.pop(deployment_id, None)

    def triage(
        self, deployments: Iterable[Deployment], views: Mapping[uuid.UUID, NodeView]
    ) -> list[uuid.UUID]:
        """For the resync pass: the deployments a reconcile would do something for now.

        Nodes are indexed and containers grouped by deployment once for the whole pass, so a
        pass over many deployments costs one plan each, not one scan of every node each."""
        fleet = self._fleet()
        grouped: dict[uuid.UUID | None, list[ObservedContainer]] = {}
        for view in views.values():
            for c in view.containers:
                grouped.setdefault(c.deployment_id, []).append(c)
        # Where each deployment's containers are now: the pass listed every reachable node.
        self._seen = {
            deployment_id: frozenset(c.node_id for c in found)
            for deployment_id, found in grouped.items()
            if deployment_id is not None
        }
        # A deployment judged converged last pass, whose rows (the same object from the
        # store's snapshot), nodes (the same fleet) and containers are unchanged, is
        # converged still: nothing in a converged judgement depends on the clock (a clock
        # enters only with an unhealthy, exited or missing container, or an outgoing
        # replica, none of which a converged deployment has). Any reconcile of it forgets
        # the judgement. This keeps a no-op pass over a large fog from planning every
        # deployment again.
        steady: dict[uuid.UUID, tuple[Deployment, Fleet, tuple[object, ...]]] = {}
        wanted = []
        for d in deployments:
            mine = grouped.get(d.id, [])
            key = _steady_key(d, views, mine)
            prior = self._steady.get(d.id)
            if prior is not None and prior[0] is d and prior[1] is fleet and prior[2] == key:
                steady[d.id] = prior
                continue
            work, converged = self._judge(d, views, fleet, mine)
            if work:
                wanted.append(d.id)
            elif converged:
                steady[d.id] = (d, fleet, key)
        self._steady = steady
        return wanted

    def _judge(
        self,
        d: Deployment,
        views: Mapping[uuid.UUID, NodeView],
        fleet: Fleet,
        mine: list[ObservedContainer] | None,
    ) -> tuple[bool, bool]:
        """(would a reconcile act, is the deployment converged)."""
        observed = Observed.index(d.id, views, mine)  # once, for the plan and the status
        if not self._plan(d, views, fleet, observed).empty:
            return True, False
        mem = self.memory(d)
        decision = derive_status(
            d,
            views,
            Progress(mem.last_progress_at, mem.problem),
            now=self._clock(),
            deadline=timedelta(seconds=self._settings.progress_deadline_seconds),
            policy=self.policy,
            mine=observed,
        )
        return history_needed(d, decision), decision.converged

    # --- reconcile -------------------------------------------------------------------------

    async def reconcile(self, deployment_id: uuid.UUID) -> Result:
        started = time.monotonic()
        self._steady.pop(deployment_id, None)
        structlog.contextvars.bind_contextvars(
            deployment_id=str(deployment_id), reconcile_id=uuid.uuid4().hex[:12]
        )
        try:
            return await self._reconcile(deployment_id, started)
        finally:
            structlog.contextvars.unbind_contextvars("deployment_id", "reconcile_id", "deployment")

    async def _reconcile(self, deployment_id: uuid.UUID, started: float) -> Result:
        d = await self._store.load_deployment(deployment_id)
        if d is None or d.status is DeploymentStatus.DELETED:
            self.forget(deployment_id)
            return Result()
        structlog.contextvars.bind_contextvars(deployment=d.name)
        records = self._nodes.records
        views = await self._observe_one(d)
        mem = self.memory(d)
        p = self._plan(d, views, self._fleet())
        now = self._clock()
        transient = False

        # 1. Intent: everything the engines will be asked to do is committed first.
        transitions: list[Transition] = []
        for a in p.actions:
            if isinstance(a, MarkRunning):
                transitions.append(
                    Transition(
                        a.replica.id,
                        (ReplicaStatus.STARTING,),
                        ReplicaStatus.RUNNING,
                        (
                            ("container_id", a.container_id),
                            ("started_at", now),
                            ("spec_hash", d.spec_hash),
                        ),
                    )
                )
            elif isinstance(a, RecordCrash):
                transitions.append(
                    Transition(
                        a.replica.id,
                        (ReplicaStatus.RUNNING,),
                        ReplicaStatus.RUNNING,
                        (
                            ("restart_count", a.restart_count),
                            ("last_exit_code", a.exit_code),
                            ("oom_killed", a.oom_killed),
                        ),
                    )
                )
            elif isinstance(a, MarkFailed):
                transitions.append(
                    Transition(
                        a.replica.id,
                        (ReplicaStatus.STARTING, ReplicaStatus.RUNNING),
                        ReplicaStatus.FAILED,
                        (("stopped_at", now),),
                    )
                )
            elif isinstance(a, StopReplica) and a.replica.status is not ReplicaStatus.STOPPING:
                transitions.append(
                    Transition(a.replica.id, _LIVE_OR_STOPPING[:3], ReplicaStatus.STOPPING)
                )
        moved = await self._store.transition(transitions)
        for a in p.actions:
            if isinstance(a, MarkRunning) and a.replica.id in moved:
                log.info("replica_adopted", replica_id=str(a.replica.id), container=a.container_id)
            elif isinstance(a, RecordCrash) and a.replica.id in moved:
                log.warning(
                    "replica_restarted",
                    replica_id=str(a.replica.id),
                    restart_count=a.restart_count,
                    exit_code=a.exit_code,
                    oom_killed=a.oom_killed,
                )
            elif isinstance(a, MarkFailed) and a.replica.id in moved:
                log.warning("replica_failed", replica_id=str(a.replica.id), reason=a.reason)
                mem.error = f"replica {short_id(a.replica.id)} failed: {a.reason}"
                self._count_crash(mem)
            elif isinstance(a, StopReplica) and a.replica.id in moved:
                log.info("replica_stopping", replica_id=str(a.replica.id))
        created: list[Replica] = []
        for a in p.actions:
            if isinstance(a, CreateReplicas):
                created = await self._store.create_replicas(d.id, a.count, now)
                log.info("replicas_created", count=len(created), target=d.target_replicas)
        if created and d.status not in (DeploymentStatus.PENDING, DeploymentStatus.STOPPED):
            # Replicas are missing (failed, evicted, scaled up): record a degradation or a new
            # problem now, before the replacements (maybe quick) make the deployment whole.
            # (From pending or stopped, the first placement records the next status instead.)
            fresh = await self._store.load_deployment(d.id)
            if fresh is not None:
                d = replace(d, status=await self._record_status(fresh, views, mem))

        # 2. Removals and stops run beside the starts.
        removals = [(a.container, a.why) for a in p.actions if isinstance(a, RemoveContainer)] + [
            (a.container, a.reason)
            for a in p.actions
            if isinstance(a, MarkFailed) and a.container is not None and a.replica.id in moved
        ]
        stops = [a for a in p.actions if isinstance(a, StopReplica)]
        background = asyncio.gather(
            *(self._remove(records, c, why) for c, why in removals),
            *(self._stop(records, a) for a in stops),
        )

        # 3. Starts, in slow-start batches, unless the deployment is backing off.
        ensure = [a.replica for a in p.actions if isinstance(a, EnsureContainer)]
        pending = [a.replica for a in p.actions if isinstance(a, PlaceReplica)] + created
        requeue: float | None = None
        if ensure or pending:
            if mem.retry_at is not None and now < mem.retry_at:
                requeue = (mem.retry_at - now).total_seconds()
            else:
                transient = await self._start(d, ensure, pending, mem, records, views)

        stop_results = await background
        transient = transient or not all(stop_results)

        # 4. Status, from a fresh read of what we just changed.
        acted = bool(p.actions)
        if acted:
            fresh = await self._store.load_deployment(d.id)
            if fresh is None:
                return Result()
            d = fresh
            views = await self._observe_one(d)
        await self._record_status(d, views, mem)

        # Look again when a time-based threshold passes even if no event comes: the backoff
        # ends, a container has been unhealthy long enough, a fresh exit has aged.
        wake = self._next_look(d, views, mem)
        if wake is not None:
            requeue = wake if requeue is None else min(requeue, wake)
        if transient:
            requeue = min(requeue or TRANSIENT_RETRY_SECONDS, TRANSIENT_RETRY_SECONDS)
        elif d.status is not DeploymentStatus.RUNNING and requeue is None:
            # Look again when the progress deadline could pass, if nothing wakes us first.
            left = (
                mem.last_progress_at
                + timedelta(seconds=self._settings.progress_deadline_seconds)
                - self._clock()
            ).total_seconds()
            requeue = max(left, 0.0) + 0.05 if left > -1 else None
        log.debug(
            "reconcile_done",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            actions=len(p.actions),
            status=d.status.value,
        )
        return Result(requeue_after=requeue, actions=len(p.actions))

    def _next_look(
        self, d: Deployment, views: Mapping[uuid.UUID, NodeView], mem: DeploymentMemory
    ) -> float | None:
        """Seconds until the earliest time-based decision for `d` changes, if any."""
        now = self._clock()
        moments: list[datetime] = []
        if mem.retry_at is not None and mem.retry_at > now:
            moments.append(mem.retry_at)
        for view in views.values():
            for c in view.containers:
                if c.deployment_id != d.id:
                    continue
                sick = self._unhealthy.get(c.id) if c.health == "unhealthy" else None
                if sick is not None:
                    moments.append(sick + self.policy.unhealthy_grace)
                if c.finished_at is not None and c.state not in (
                    ContainerState.RUNNING,
                    ContainerState.RESTARTING,
                ):
                    moments.append(c.finished_at + self.policy.exit_grace)
        future = [m for m in moments if m > now]
        if not future:
            return None
        return (min(future) - now).total_seconds() + 0.05

    def _count_crash(self, mem: DeploymentMemory) -> None:
        """A replica lost after it ran (container gone, exited, unhealthy): the first
        replacement is immediate, the next ones back off (10 s doubling to 5 min by default),
        until the deployment has run stable for STABLE_RESET (kubelet's CrashLoopBackOff)."""
        mem.failures += 1
        if mem.failures < 2:
            return
        delay = min(
            self._settings.crash_backoff_initial_seconds * 2 ** (mem.failures - 2),
            self._settings.crash_backoff_max_seconds,
        )
        mem.retry_at = self._clock() + timedelta(seconds=delay)
        log.warning("deployment_backoff", failures=mem.failures, retry_in_seconds=delay)

    async def _start(
        self,
        d: Deployment,
        ensure: list[Replica],
        pending: list[Replica],
        mem: DeploymentMemory,
        records: Mapping[uuid.UUID, NodeRecord],
        views: Mapping[uuid.UUID, NodeView],
    ) -> bool:
        """Place and start replicas under slow start; returns True on a transient failure.

        Slow start as a window rather than batches: at most `window` starts in flight, one
        more allowed per success (so the allowance doubles per round trip, 1, 2, 4, 8 ... as
        Kubernetes' ReplicaSet batches), and no new start after the first permanent failure.
        Unlike fixed batches there is no barrier waiting for a batch's slowest start, which
        on a busy engine left it idle between batches. Placement runs ahead of the launches
        in chunks of the current window, so it costs a handful of transactions, not one per
        replica."""
        request = d.resources or ZERO
        spread = Counter(r.node_id for r in d.replicas if r.live and r.node_id is not None)
        placed: deque[Replica] = deque(r for r in ensure if r.node_id is not None)
        unplaced: deque[Replica] = deque(pending)
        in_flight: set[asyncio.Task[errors.ControllerError | None]] = set()
        window = 1
        failed: errors.PermanentError | None = None
        transient = False
        first_status: asyncio.Task[None] | None = None
        while True:
            while failed is None and len(in_flight) < window and (placed or unplaced):
                if not placed:
                    chunk = [unplaced.popleft() for _ in range(min(window, len(unplaced)))]
                    got, refusal = await self._place(d, chunk, request, spread, mem)
                    placed.extend(got)
                    mem.unschedulable = refusal
                    if refusal:
                        unplaced.clear()  # nothing else fits either
                        log.info(
                            "replicas_unschedulable",
                            count=len(chunk) - len(got),
                            reason=refusal,
                        )
                    if got and first_status is None and d.status in _NOT_YET_PLACED:
                        # The first placement is a status change of its own (-> scheduled),
                        # recorded beside the first creates, not in front of them.
                        first_status = asyncio.create_task(self._record_placed(d, views, mem))
                    if not got:
                        break
                r = placed.popleft()
                in_flight.add(asyncio.create_task(self._ensure(d, r, records, mem)))
            if not in_flight:
                break
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                in_flight.discard(task)
                outcome = task.result()
                if outcome is None:
                    window += 1
                    if failed is None:
                        mem.error = None  # backoff itself resets only after stable running
                elif isinstance(outcome, NodeRefused):
                    # The replacement goes to another node at once: no backoff, a quick look.
                    mem.error = outcome.reason
                    failed = failed or outcome
                    transient = True
                elif isinstance(outcome, errors.PermanentError):
                    if failed is None:
                        failed = outcome
                        self._back_off(mem, outcome)
                else:
                    transient = True
        if first_status is not None:
            await first_status
        return transient

    async def _record_placed(
        self, d: Deployment, views: Mapping[uuid.UUID, NodeView], mem: DeploymentMemory
    ) -> None:
        fresh = await self._store.load_deployment(d.id)
        if fresh is not None:
            await self._record_status(fresh, views, mem)

    def _back_off(self, mem: DeploymentMemory, failure: errors.PermanentError) -> None:
        """Crash backoff after a failed start: 10 s doubling to 5 min by default."""
        mem.failures += 1
        delay = min(
            self._settings.crash_backoff_initial_seconds * 2 ** (mem.failures - 1),
            self._settings.crash_backoff_max_seconds,
        )
        mem.retry_at = self._clock() + timedelta(seconds=delay)
        mem.error = failure.reason
        log.warning(
            "deployment_backoff",
            failures=mem.failures,
            retry_in_seconds=delay,
            reason=failure.reason,
        )

    async def _place(
        self,
        d: Deployment,
        replicas: list[Replica],
        request: Resources,
        spread: Counter[uuid.UUID],
        mem: DeploymentMemory,
    ) -> tuple[list[Replica], str | None]:
        called_at = time.monotonic()
        if self._index is None or called_at - self._usage_read_at > USAGE_MAX_AGE:
            await self._read_usage(called_at)
        excluded: set[uuid.UUID] = set()
        if mem.refusals:
            up_since = {n.id: n.up_since for n in self._nodes.snapshot()}
            excluded = mem.excluded(up_since, self._clock())
        result = self._schedule(replicas, request, spread, excluded)
        if result.unplaced and self._usage_read_at < called_at:
            await self._read_usage(called_at)  # capacity may have been freed since
            result = self._schedule(replicas, request, spread, excluded)
        reason = result.reason
        last = mem.last_exclusion() if excluded else None
        if reason is not None and last is not None:
            # "0/3 nodes fit: 3 refused this deployment" alone would hide the engine's words.
            reason = f"{reason}; node {last.node_name} refused {last.count} times: {last.words}"
        # No await between choosing and assuming: the next reconcile sees these placements.
        for p in result.placements:
            self._assume(p.replica_id, p.node_id, request)
        moved: set[uuid.UUID] = set()
        try:
            moved = await self._store.transition(
                Transition(
                    p.replica_id,
                    (ReplicaStatus.PENDING,),
                    ReplicaStatus.STARTING,
                    (("node_id", p.node_id), ("spec_hash", d.spec_hash)),
                )
                for p in result.placements
            )
        finally:
            for p in result.placements:
                self._settle(p.replica_id, written=p.replica_id in moved)
        by_id = {r.id: r for r in replicas}
        placed = []
        for p in result.placements:
            if p.replica_id in moved:
                spread[p.node_id] += 1
                placed.append(
                    replace(by_id[p.replica_id], node_id=p.node_id, status=ReplicaStatus.STARTING)
                )
        return placed, reason

    def _assume(self, replica_id: uuid.UUID, node_id: uuid.UUID, request: Resources) -> None:
        """Remember a placement the index already counts until its write is over."""
        self._assumed[replica_id] = (node_id, request)
        if self._assumed_during_read is not None:
            self._assumed_during_read[replica_id] = (node_id, request)

    def _settle(self, replica_id: uuid.UUID, *, written: bool) -> None:
        """The placement's write is over: kept if it was written, taken back if not."""
        assumed = self._assumed.pop(replica_id, None)
        if assumed is None or written or self._index is None:
            return
        node_id, request = assumed
        self._index.add(node_id, request, sign=-1)

    async def _read_usage(self, wanted_after: float) -> None:
        """Re-read usage from the store, plus every placement that may be missing from that
        read: those being written when it began and those chosen while it ran (a placement
        both written and counted is counted twice, which errs on the safe side)."""
        async with self._usage_lock:
            if self._index is not None and self._usage_read_at >= wanted_after:
                return  # another reconcile re-read meanwhile
            started = time.monotonic()
            pending = self._assumed_during_read = dict(self._assumed)
            try:
                usage = await self._store.node_usage()
            finally:
                self._assumed_during_read = None
            for node_id, request in pending.values():
                usage[node_id] = usage.get(node_id, ZERO) + request
            self._index = scheduler.NodeIndex(self._nodes.snapshot(), usage)
            self._usage_read_at = started

    def _schedule(
        self,
        replicas: list[Replica],
        request: Resources,
        spread: Counter[uuid.UUID],
        excluded: set[uuid.UUID],
    ) -> scheduler.ScheduleResult:
        """`scheduler.schedule` over the cached usage; the placements count as used at once."""
        nodes = self._nodes.snapshot()
        index = self._index
        if index is None:  # a new term began while this reconcile waited
            raise errors.TransientError("scheduler cache not loaded yet")
        if index.nodes is not nodes:
            # Nodes changed (a probe, a cordon): same usage, new node set.
            index = self._index = scheduler.NodeIndex(nodes, index.used)
        return index.schedule([r.id for r in replicas], request, spread, excluded)

    def new_term(self) -> None:
        """Leadership (re)gained: another leader may have placed replicas, and moved the
        persisted backoff and progress, meanwhile: both are read again."""
        self._index = None
        self._memory.clear()

    async def _ensure(
        self,
        d: Deployment,
        r: Replica,
        records: Mapping[uuid.UUID, NodeRecord],
        mem: DeploymentMemory,
    ) -> errors.ControllerError | None:
        """Create/start one replica's container and record the outcome; errors are returned."""
        record = records.get(r.node_id) if r.node_id else None
        if record is None:
            return errors.TransientError("node unknown")
        spec = ContainerSpec(r.id, d.id, d.image, d.resources, d.spec_hash, self._store.epoch)
        try:
            container_id = await self._runtime.ensure(record, spec)
        except errors.ControllerError as exc:
            refused = self._refused(mem, record, exc)
            if isinstance(exc, errors.PermanentError) or isinstance(refused, NodeRefused):
                await self._store.transition(
                    [
                        Transition(
                            r.id,
                            (ReplicaStatus.STARTING,),
                            ReplicaStatus.FAILED,
                            (("stopped_at", self._clock()),),
                        )
                    ]
                )
                log.warning(
                    "replica_start_failed",
                    replica_id=str(r.id),
                    node=record.name,
                    reason=exc.reason,
                    node_excluded=isinstance(refused, NodeRefused),
                )
                return refused or exc
            log.warning(
                "replica_start_deferred", replica_id=str(r.id), node=record.name, reason=exc.reason
            )
            return exc
        await self._store.transition(
            [
                Transition(
                    r.id,
                    (ReplicaStatus.STARTING,),
                    ReplicaStatus.RUNNING,
                    (
                        ("container_id", container_id),
                        ("started_at", self._clock()),
                        ("spec_hash", d.spec_hash),
                    ),
                )
            ]
        )
        log.info(
            "replica_started",
            replica_id=str(r.id),
            node=record.name,
            container=container_id[:12],
        )
        return None

    def _refused(
        self, mem: DeploymentMemory, record: NodeRecord, exc: errors.ControllerError
    ) -> errors.PermanentError | None:
        """Count a start failure on `record`. From the second identical one the engine's words
        are the deployment's reason with the node's name, transient or not (a deferred start
        used to retry in silence; a permanent failure comes back as a `PermanentError` with
        that reason); at `REFUSALS_BEFORE_EXCLUSION` the node is passed over for the
        deployment, and the returned `NodeRefused` says which node refused and with what
        words."""
        if isinstance(exc, errors.ConflictError):
            return None  # a stranger's container holds the name: not the engine refusing
        now = self._clock()
        up_since = next((n.up_since for n in self._nodes.snapshot() if n.id == record.id), None)
        key = (record.id, _VOLATILE.sub("…", exc.reason))
        seen = mem.refusals.get(key)
        if seen is None or seen.node_up_since != up_since:
            seen = mem.refusals[key] = Refusal(record.name, exc.reason, 0, now, up_since)
        seen.count += 1
        seen.words, seen.last_at = exc.reason, now
        if seen.count < 2:
            return None
        text = f"node {record.name} refused {seen.count} times: {exc.reason}"
        if seen.count < REFUSALS_BEFORE_EXCLUSION:
            mem.error = text
            return errors.PermanentError(text) if isinstance(exc, errors.PermanentError) else None
        log.warning(
            "node_refuses_deployment",
            node=record.name,
            count=seen.count,
            reason=exc.reason,
            detail="its replicas go to other nodes",
        )
        return NodeRefused(f"{text}; trying other nodes")

    async def _stop(self, records: Mapping[uuid.UUID, NodeRecord], a: StopReplica) -> bool:
        """Stop gracefully, remove, mark stopped; False when the node could not be reached."""
        r = a.replica
        record = records.get(r.node_id) if r.node_id else None
        if r.node_id is not None:
            if record is None:
                return False  # node unknown: try again once it is back (or removed)
            ref = a.container.id if a.container else (r.container_id or container_name(r.id))
            try:
                await self._runtime.stop(record, ref, self._settings.stop_timeout_seconds)
            except errors.ControllerError as exc:
                log.warning(
                    "replica_stop_failed", replica_id=str(r.id), node=record.name, reason=exc.reason
                )
                return False
        await self._store.transition(
            [
                Transition(
                    r.id,
                    _LIVE_OR_STOPPING,
                    ReplicaStatus.STOPPED,
                    (("stopped_at", self._clock()),),
                )
            ]
        )
        log.info("replica_stopped", replica_id=str(r.id), replica=short_id(r.id))
        return True

    async def _remove(
        self, records: Mapping[uuid.UUID, NodeRecord], container: ObservedContainer, why: str
    ) -> bool:
        record = records.get(container.node_id)
        if record is None:
            return False
        try:
            await self._runtime.stop(record, container.id, 0)
        except errors.ControllerError as exc:
            log.warning("container_remove_failed", container=container.name, reason=exc.reason)
            return False
        log.info("container_removed", container=container.name, node=record.name, why=why)
        return True

    async def _record_status(
        self, d: Deployment, views: Mapping[uuid.UUID, NodeView], mem: DeploymentMemory
    ) -> DeploymentStatus:
        """Derive and, if it changed, record the status; returns the status now stored."""
        now = self._clock()
        decision = derive_status(
            d,
            views,
            Progress(mem.last_progress_at, mem.problem),
            now=now,
            deadline=timedelta(seconds=self._settings.progress_deadline_seconds),
            policy=self.policy,
        )
        if decision.converged or decision.ready > mem.last_ready:
            mem.last_progress_at = now
        if decision.converged:
            mem.error, mem.unschedulable = None, None
            if mem.stable_since is None:
                mem.stable_since = now
            elif now - mem.stable_since >= STABLE_RESET:
                mem.failures, mem.retry_at = 0, None
        else:
            mem.stable_since = None
        mem.last_ready = decision.ready
        state = mem.progress_state()
        if not history_needed(d, decision):
            if state != mem.persisted:
                await self._store.save_progress(d.id, state)
                mem.persisted = state
            return d.status
        if not await self._store.record_status(
            d.id, d.status, decision.status, decision.reason, now, state
        ):
            return d.status
        mem.persisted = state
        log.info(
            "deployment_status_changed",
            old_status=d.status.value,
            new_status=decision.status.value,
            reason=decision.reason,
        )
        return decision.status
