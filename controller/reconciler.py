"""`reconcile(deployment_id)`: load once, observe once, decide once, apply, record status once.

Level-triggered: a key is all it gets; it re-reads the deployment from the store and lists the
engines every time, so a lost wake-up can only delay convergence, never prevent it.

Crash safety is "intent before action": replica rows (pending), their placement and their
`starting` status are committed before any container exists, and the container's name is
derived from the replica id. A controller killed at any point restarts, finds `starting`
replicas, and `ensure`s their containers: a create that already happened is found by name and
adopted instead of making a twin.

The flow: `decide` (pure, controller.decide) over the loaded deployment and the listing; when
it would start something or roll out, whether the spec can be run as written at all
(controller.runnable: host paths, the pull secret, decrypted by controller.credentials) and,
before a rollout stops any old replica, the new image pulled where it is needed
(controller.prepull); the executor (controller.executor) applies the intent writes, removals
and stops; the starter
(controller.starts) places and starts under slow start unless the crash backoff
(controller.progress) holds them; the status is derived from the loaded deployment plus what
the actions changed, and recorded once (the deployment is not read again). After acting the
engines are listed again: only their listing says whether a new container is running and
healthy, or that a container exited while the reconcile ran.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller import rebalance, runnable
from controller.credentials import Credentials
from controller.decide import (
    Decision,
    crashes_counted,
    decide,
    prepull_nodes,
    requeue_after,
    rollout_stops,
    start_gate,
    without_rollout_stops,
)
from controller.executor import Executor
from controller.model import (
    ZERO,
    Deployment,
    DeploymentStatus,
    Node,
    NodeRecord,
    NodeView,
)
from controller.nodes import NodeMonitor
from controller.observe import Observer
from controller.placement import PlacementCache
from controller.plan import Fleet, Observed, Policy, derive_status, history_needed, ready_count
from controller.ports import ReconcileStore
from controller.prepull import PrePuller, PullFailed
from controller.progress import (
    Backoff,
    DeploymentMemory,
    after_start_failure,
    after_status,
    persisted,
    remember,
)
from controller.rebalancer import Rebalancer, history_reason
from controller.resync import Inputs, Triage, group
from controller.runtime import Runtime
from controller.settings import Settings
from controller.starts import Pass, Starter

log = structlog.get_logger(__name__)

# Statuses from which the first placement is recorded as a change (-> scheduled).
_NOT_YET_PLACED = (DeploymentStatus.PENDING, DeploymentStatus.STOPPED)


@dataclass(frozen=True, slots=True)
class Result:
    requeue_after: float | None = None
    actions: int = 0


def policy_of(settings: Settings) -> Policy:
    return Policy(
        burst=settings.replica_burst,
        exit_grace=timedelta(seconds=settings.exit_grace_seconds),
        max_surge=settings.max_surge,
        max_unavailable=settings.max_unavailable,
        min_ready=timedelta(seconds=settings.min_ready_seconds),
        unhealthy_grace=timedelta(seconds=settings.unhealthy_seconds),
    )


class Reconciler:
    def __init__(
        self,
        store: ReconcileStore,
        runtime: Runtime,
        nodes: NodeMonitor,
        settings: Settings,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._clock = clock
        self.policy = policy_of(settings)
        self._backoff = Backoff.of(settings)
        self._deadline = timedelta(seconds=settings.progress_deadline_seconds)
        self._memory: dict[uuid.UUID, DeploymentMemory] = {}
        self._problems: dict[uuid.UUID, str] = {}  # found outside a reconcile (a node lost)
        self.observer = Observer(runtime, lambda: nodes.records, clock)
        self.placement = PlacementCache(store, nodes.snapshot)
        self.executor = Executor(
            store, runtime, lambda: nodes.records, settings.stop_timeout_seconds
        )
        self.prepull = PrePuller(runtime, lambda: nodes.records)
        self.credentials = Credentials(store, settings.secret_key_file)
        self._allowed_host_paths = settings.allowed_host_paths
        self._triage = Triage()
        self._fleet_of: tuple[Node, ...] | None = None
        self._fleet_cache = Fleet.of(())
        # Containers the storage monitor found past their limit, with the reason (replaced
        # by each monitor pass, so it holds only what the last pass saw).
        self._over_storage: dict[str, str] = {}
        self.rebalance = Rebalancer(settings)
        self._by_id_of: tuple[Node, ...] | None = None
        self._by_id: dict[uuid.UUID, Node] = {}

    # --- what others tell us -------------------------------------------------------------

    async def observe(
        self, records: Iterable[NodeRecord], deployment_id: uuid.UUID | None = None
    ) -> dict[uuid.UUID, NodeView]:
        """List nodes (see `Observer.observe`)."""
        return await self.observer.observe(records, deployment_id)

    def note_seen(self, deployment_id: uuid.UUID, node_id: uuid.UUID) -> None:
        self.observer.note_seen(deployment_id, node_id)

    def note_exit(self, container_id: str, code: int) -> None:
        self.observer.note_exit(container_id, code)

    def note_storage(self, over: Mapping[str, tuple[uuid.UUID, str]]) -> None:
        """What the storage monitor's last pass found: container id -> (deployment, reason).
        Their deployments' converged judgements are dropped, so a resync pass sees them."""
        self._over_storage = {container: reason for container, (_, reason) in over.items()}
        for deployment_id, _ in over.values():
            self._triage.forget(deployment_id)

    def note_problem(self, deployment_id: uuid.UUID, reason: str) -> None:
        """A problem found outside a reconcile (a node lost) for the deployment's reason."""
        self._triage.forget(deployment_id)
        if deployment_id in self._memory:
            # Taken up by the next reconcile: one in flight now writes its memory back last.
            self._problems[deployment_id] = reason

    def forget(self, deployment_id: uuid.UUID) -> None:
        self._memory.pop(deployment_id, None)
        self._problems.pop(deployment_id, None)
        self._triage.forget(deployment_id)
        self.observer.forget(deployment_id)
        self.prepull.forget(deployment_id)
        self.rebalance.forget(deployment_id)

    @property
    def replanned(self) -> int:
        """How many deployments the last resync triage planned (the rest it remembered as
        converged and unchanged)."""
        return self._triage.judged

    def new_term(self) -> None:
        """Leadership (re)gained: another leader may have placed replicas, and moved the
        persisted backoff and progress, meanwhile: both are read again."""
        self.placement.new_term()
        self._memory.clear()
        self.rebalance.new_term()

    def memory(self, d: Deployment, *, take_problem: bool = False) -> DeploymentMemory:
        """The deployment's memory, kept; a reconcile also takes up a problem found outside
        (`note_problem`)."""
        mem = self._memory.get(d.id)
        problem = self._problems.pop(d.id, None) if take_problem else None
        if mem is not None and problem is not None:
            mem = replace(mem, error=problem)
        mem = self._memory[d.id] = remember(mem, d, self._clock())
        return mem

    def _fleet(self) -> Fleet:
        """The nodes indexed for the planner, once per node snapshot (not per reconcile)."""
        nodes = self._nodes.snapshot()
        if self._fleet_of is not nodes:
            self._fleet_cache, self._fleet_of = Fleet.of(nodes), nodes
        return self._fleet_cache

    def _inputs(self) -> Inputs:
        return Inputs(
            self.policy,
            self._clock(),
            self._deadline,
            self.observer.unhealthy_since,
            self._over_storage,
            self.rebalance.moving,
            self._rebalance_due,
        )

    def _rebalance_due(self, d: Deployment, observed: Observed) -> bool | None:
        """For the resync triage: whether a reconcile of the converged `d` would start a move
        now (True), may later (False), or has nothing to do for its spread (None). Every
        eligible node is taken to fit here (the scheduler's cache is asked by the reconcile
        itself): a deployment with nowhere to go costs one reconcile, not a wrong move."""
        if self.rebalance.moving(d.id):
            return None  # the move in flight is the reconcile's (it requeues itself)
        move = self._next_move(d, observed, None)
        if move is None:
            return True if self.rebalance.running(d.id) else None
        return self.rebalance.wait(d, self._clock()) is None

    def _next_move(
        self, d: Deployment, observed: Observed, fitting: frozenset[uuid.UUID] | None
    ) -> rebalance.Move | None:
        """The move the spread of a settled `d` asks for (`fitting`: the nodes the scheduler's
        cache says could take one more; None: every eligible node)."""
        if not self.rebalance.allowed(d) or not self.rebalance.owed(d):
            return None
        if not rebalance.settled(d, ready_count(d, observed.views, observed.mine)):
            return None
        nodes = self._nodes_by_id()
        live = [r for r in d.replicas if r.live]
        move = rebalance.next_move(
            d.placement, live, nodes, fitting if fitting is not None else nodes.keys()
        )
        if move is None:
            self.rebalance.looked(d.id, self._clock())
        return move

    def _nodes_by_id(self) -> Mapping[uuid.UUID, Node]:
        """The nodes by id, once per node snapshot (the triage asks for every deployment)."""
        nodes = self._nodes.snapshot()
        if self._by_id_of is not nodes:
            self._by_id, self._by_id_of = {n.id: n for n in nodes}, nodes
        return self._by_id

    def triage(
        self, deployments: Iterable[Deployment], views: Mapping[uuid.UUID, NodeView]
    ) -> list[uuid.UUID]:
        """For the resync pass: the deployments a reconcile would do something for now."""
        grouped = group(views)
        # Where each deployment's containers are now: the pass listed every reachable node.
        self.observer.seen_in(grouped)
        fleet = self._fleet()
        return self._triage.wanted(deployments, views, grouped, fleet, self.memory, self._inputs())

    # --- reconcile -------------------------------------------------------------------------

    async def reconcile(self, deployment_id: uuid.UUID) -> Result:
        started = time.monotonic()
        self._triage.forget(deployment_id)
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
        p = Pass(d, await self.observer.observe_one(d), self.memory(d, take_problem=True))
        now = self._clock()
        self._settle_move(d, now)
        observed = Observed.index(d.id, p.views)
        decision = self._decide(d, observed, now)
        wait: float | None = None
        if decision.empty and not self.rebalance.moving(d.id):
            decision, wait = await self._rebalance(p, observed, decision, now)
        decision = await self._admit(p, decision)
        try:
            gated, transient = await self._act(p, decision, now)
            if p.mem.unschedulable and self.rebalance.moving(d.id):
                # The cache said a node could take the replacement, but none would: the
                # surplus (the replacement still unplaced) goes at the next look.
                self.rebalance.abandon(d.id, p.mem.unschedulable)
            if not decision.empty:
                # The engines are listed again after acting: what a started container shows
                # (running, healthy) and what changed meanwhile (an exit that landed during
                # the reconcile, whose grace sets the next look) is theirs to say.
                p.views = await self.observer.observe_one(p.now_d)
            await self._record_status(p)
        finally:
            self._memory[d.id] = p.mem
        requeue = requeue_after(
            p.d,
            p.views,
            p.mem,
            gated=gated,
            transient=transient,
            unhealthy_since=self.observer.unhealthy_since,
            policy=self.policy,
            now=self._clock(),
            deadline=self._deadline,
        )
        requeue = self._rebalance_requeue(p.d, requeue, wait)
        (log.info if decision.actions else log.debug)(
            "reconcile_done",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            actions=decision.actions,
            created=len(p.out.created),
            started=p.out.started,
            status=p.d.status.value,
        )
        return Result(requeue_after=requeue, actions=decision.actions)

    def _decide(self, d: Deployment, observed: Observed, now: datetime) -> Decision:
        return decide(
            d,
            observed,
            self._fleet(),
            policy=self.policy,
            now=now,
            unhealthy_since=self.observer.unhealthy_since,
            over_limit=self._over_storage,
            moving=self.rebalance.moving(d.id),
        )

    # --- rebalancing (controller.rebalance decides, controller.rebalancer remembers) -------

    def _settle_move(self, d: Deployment, now: datetime) -> None:
        """The deployment's move in flight, as its rows now stand: ended or given up."""
        done = self.rebalance.settle(d, now)
        if done is not None and done.to_node is not None:
            log.info(
                "rebalance_move_done",
                deployment=d.name,
                replica=str(done.move.replica_id),
                **{"from": self._node_name(done.move.from_node)},
                to=self._node_name(done.to_node),
            )

    async def _rebalance(
        self, p: Pass, observed: Observed, decision: Decision, now: datetime
    ) -> tuple[Decision, float | None]:
        """A converged deployment: start a move if its spread asks for one and the limits
        allow (the victim becomes `moving`, so the plan now creates its replacement), or end
        the rebalance that has nothing left to move. Returns the decision and, when a wanted
        move must wait (its cool-down, the fleet-wide cap), how long."""
        d = p.d
        move = self._next_move(d, observed, None)
        if move is not None:
            # Only now the scheduler's cache: capacity, ports and the selector, exactly.
            ports = d.run.host_ports()
            fitting = await self.placement.fitting(d.resources or ZERO, d.placement, ports)
            move = self._next_move(d, observed, fitting)
        if move is None:
            if self.rebalance.running(d.id):
                await self._end_rebalance(p, now)
            return decision, None
        wait = self.rebalance.wait(d, now)
        if wait is not None:
            return decision, wait
        self.rebalance.start(d, move, now)
        log.info(
            "rebalance_move",
            deployment=d.name,
            replica=str(move.replica_id),
            **{"from": self._node_name(move.from_node)},
            to=self._node_name(move.to_node),
            in_flight=self.rebalance.in_flight,
        )
        return self._decide(d, observed, now), None

    async def _end_rebalance(self, p: Pass, now: datetime) -> None:
        """One history row per rebalance, when it ends: `rebalanced: 2 replicas moved to
        node3, node4` (none for a rebalance whose every move was given up)."""
        destinations = self.rebalance.end(p.d.id, now)
        if not destinations:
            return
        reason = history_reason([self._node_name(n) for n in destinations])
        state = p.mem.progress_state()
        if not await self._store.record_status(p.d.id, p.d.status, p.d.status, reason, now, state):
            return
        p.mem = persisted(p.mem, state)
        p.d = replace(p.d, last_reason=reason, updated_at=now, progress=state)
        log.info("rebalance_done", reason=reason, moves=len(destinations))

    def _rebalance_requeue(
        self, d: Deployment, requeue: float | None, wait: float | None
    ) -> float | None:
        """Look again while a move is in flight (its replacement's min ready time passing is
        no event) or when a wanted move may start."""
        if self.rebalance.moving(d.id):
            poll = min(1.0, max(0.2, self.policy.min_ready.total_seconds() / 4))
            wait = poll if wait is None else min(wait, poll)
        if wait is None:
            return requeue
        return wait if requeue is None else min(requeue, wait)

    def _node_name(self, node_id: uuid.UUID) -> str:
        record = self._nodes.records.get(node_id)
        return record.name if record is not None else str(node_id)

    async def _admit(self, p: Pass, decision: Decision) -> Decision:
        """Before anything is placed: can the spec be run as written, and with which pull
        secret? Asked only when the decision starts something or rolls out (a converged
        deployment costs no credential lookup). A refused deployment keeps what runs and
        starts nothing; its status says why (`derive_status`)."""
        if p.d.deleting or not (decision.wants_starts or rollout_stops(p.d, decision)):
            return decision
        secret = await self.credentials.pull_secret(p.d)
        p.auth = secret.auth
        p.refusal = runnable.refusal(p.d.run, self._allowed_host_paths, secret.problem)
        if p.refusal is None:
            return decision
        if p.refusal not in (p.d.last_reason or ""):
            log.warning("deployment_cannot_run", reason=p.refusal)
        return runnable.held_back(decision, p.d, self._fleet())

    async def _prepull(self, p: Pass, decision: Decision, now: datetime) -> PullFailed | None:
        """The rollout's new image, pulled where its old replicas stop, before they stop.
        A failure holds the rollout (no old replica stops, nothing starts) with the reason as
        the deployment's problem; a refused pull backs off like a failed start, an engine
        that did not answer is retried soon."""
        nodes = prepull_nodes(p.d, decision)
        if not nodes or nodes <= self.prepull.pulled(p.d):
            return None
        if start_gate(p.mem, now) is not None:
            # Backing off (a pull or a start failed): no pull now, and no old replica stops.
            return PullFailed(p.mem.error or "backing off", transient=False)
        failed = await self.prepull.pull(p.d, nodes, p.auth)
        if failed is None:
            return None
        reason = f"pull before stopping old replicas failed on {failed.reason}"
        if failed.transient:
            p.mem = replace(p.mem, error=reason)
        else:
            p.mem, delay = after_start_failure(p.mem, reason, now, self._backoff)
            log.warning("rollout_halted", reason=reason, retry_in_seconds=delay)
        return failed

    async def _act(self, p: Pass, decision: Decision, now: datetime) -> tuple[float | None, bool]:
        """Apply the decision; returns (seconds the starts wait for the backoff, whether
        something failed transiently)."""
        if decision.empty:
            return None, False
        halted = await self._prepull(p, decision, now)
        if halted is not None:
            decision = without_rollout_stops(p.d, decision)
            if decision.empty:
                return start_gate(p.mem, now), halted.transient
        # 1. Intent: everything the engines will be asked to do is committed first.
        moved = await self.executor.record_intent(p.d, decision, now, p.out)
        p.mem, delays = crashes_counted(p.mem, decision.failures, moved, now, self._backoff)
        for failures, delay in delays:
            log.warning("deployment_backoff", failures=failures, retry_in_seconds=delay)
        created = []
        if decision.create:
            created = await self.executor.create(p.d, decision.create, now, p.out)
        if created and p.d.status not in _NOT_YET_PLACED:
            # Replicas are missing (failed, evicted, scaled up): record a degradation or a new
            # problem now, before the replacements (maybe quick) make the deployment whole.
            # (From pending or stopped, the first placement records the next status instead.)
            await self._record_status(p)

        # 2. Removals and stops run beside the starts.
        removals = [(a.container, a.why) for a in decision.removals] + [
            (f.container, f.reason)
            for f in decision.failures
            if f.container is not None and f.replica.id in moved
        ]
        background = asyncio.gather(
            *(self.executor.remove(c, why) for c, why in removals),
            *(
                self.executor.stop(a, self._clock, p.out, p.d.run.stop_grace_seconds)
                for a in decision.stops
            ),
        )

        # 3. Starts, in slow-start batches, unless the deployment is backing off.
        gated, transient = None, False
        pending = [*decision.place, *created]
        if (decision.ensure or pending) and halted is None:
            gated = start_gate(p.mem, now)
            if gated is None:
                transient = await self._starter().run(
                    p, decision.ensure, pending, self._first_placed(p)
                )
        stopped = await background
        if halted is not None:
            # Held by a failed pull: look again when the backoff ends (or soon, for an
            # engine that did not answer).
            return start_gate(p.mem, now), halted.transient or not all(stopped)
        return gated, transient or not all(stopped)

    def _starter(self) -> Starter:
        return Starter(
            self.executor,
            self.placement,
            self._nodes.records,
            self._nodes.snapshot(),
            self._clock,
            self._backoff,
        )

    def _first_placed(self, p: Pass) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """The first placement is a status change of its own (-> scheduled), recorded
        beside the first creates, not in front of them."""
        if p.d.status not in _NOT_YET_PLACED:
            return None
        return lambda: self._record_status(p)

    async def _record_status(self, p: Pass) -> None:
        """Derive the status from the deployment as our writes left it and, if it changed,
        record it; `p.d` then carries the status now stored."""
        now = self._clock()
        d = p.now_d
        decision = derive_status(
            d,
            p.views,
            p.mem.progress,
            now=now,
            deadline=self._deadline,
            policy=self.policy,
            refusal=p.refusal,
            moving=self.rebalance.moving(d.id),
        )
        p.mem = after_status(p.mem, decision, now)
        state = p.mem.progress_state()
        if not history_needed(d, decision):
            if state != p.mem.persisted:
                await self._store.save_progress(d.id, state)
                p.mem = persisted(p.mem, state)
            return
        if not await self._store.record_status(
            d.id, d.status, decision.status, decision.reason, now, state
        ):
            return
        p.mem = persisted(p.mem, state)
        p.d = replace(
            p.d,
            status=decision.status,
            last_reason=decision.reason,
            updated_at=now,
            progress=state,
        )
        log.info(
            "deployment_status_changed",
            old_status=d.status.value,
            new_status=decision.status.value,
            reason=decision.reason,
        )
