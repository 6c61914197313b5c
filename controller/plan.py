"""PURE: compare one deployment's desired state with what the store and the engines show, and
say what to do. `plan(...) -> Plan` and `derive_status(...)` take plain values and return
plain values; the reconciler carries the actions out.

Rules that matter for safety:
- A node that could not be listed is *unknown*: its replicas are neither missing nor orphaned.
- A running replica is judged gone only by a listing taken after it started (a listing older
  than the replica cannot show it, and acting on it would kill a healthy replica).
- A container is ours only by its labels; one that names a replica that is not live, or sits on
  another node than its replica's, is an orphan or a twin and is removed.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller import generation
from controller.model import (
    ContainerState,
    Deployment,
    DeploymentStatus,
    Node,
    NodeView,
    ObservedContainer,
    Replica,
    ReplicaStatus,
    short_id,
)
from controller.placement_rules import Label, PlacementRules, label_value

# Containers the engine is keeping alive (or will restart): the replica still stands.
_ALIVE = frozenset({ContainerState.RUNNING, ContainerState.RESTARTING, ContainerState.PAUSED})
# Scale-down order, cheapest to lose first (Kubernetes' ActivePods ranking).
_STATUS_RANK = {ReplicaStatus.PENDING: 0, ReplicaStatus.STARTING: 1, ReplicaStatus.RUNNING: 2}


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateReplicas:
    """Insert `count` pending rows (intent, committed before any container exists)."""

    count: int


@dataclass(frozen=True, slots=True)
class MarkRunning:
    """A starting replica whose container the engine runs: adopt it."""

    replica: Replica
    container_id: str


@dataclass(frozen=True, slots=True)
class MarkFailed:
    replica: Replica
    reason: str
    # The container to remove once the failure is recorded (an exited one), if any.
    container: ObservedContainer | None = None


@dataclass(frozen=True, slots=True)
class RecordCrash:
    """The engine restarted a replica's container in place: record count, exit code, OOM."""

    replica: Replica
    restart_count: int
    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class PlaceReplica:
    """A pending replica: the reconciler asks the scheduler for a node."""

    replica: Replica


@dataclass(frozen=True, slots=True)
class EnsureContainer:
    """A placed, starting replica without a running container: create (or find) and start it."""

    replica: Replica
    existing: ObservedContainer | None = None


@dataclass(frozen=True, slots=True)
class StopReplica:
    """Mark stopping, stop gracefully, remove, mark stopped."""

    replica: Replica
    container: ObservedContainer | None = None


@dataclass(frozen=True, slots=True)
class RemoveContainer:
    """A labelled container with no live replica behind it (orphan) or on the wrong node (twin)."""

    container: ObservedContainer
    why: str


Action = (
    CreateReplicas
    | RecordCrash
    | MarkRunning
    | MarkFailed
    | PlaceReplica
    | EnsureContainer
    | StopReplica
    | RemoveContainer
)


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...] = ()

    def of(self, kind: type[Action]) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def empty(self) -> bool:
        return not self.actions


@dataclass(frozen=True, slots=True)
class Policy:
    # Most pending rows a deployment may hold unplaced; bounds a typo like 100,000 replicas.
    burst: int = 500
    # A container the engine has restarted this many times while we watch is a crash loop.
    crash_loop_restarts: int = 3
    # An exited container fails its replica only once its node has kept answering this long
    # after the exit: an engine shutting down (a reboot, a partition) stops its containers
    # moments before it stops answering, and brings them back when it returns.
    exit_grace: timedelta = timedelta(seconds=5)
    # Rolling updates, as a Kubernetes Deployment's defaults: fractions of the target.
    max_surge: float = 0.25
    max_unavailable: float = 0.25
    min_ready: timedelta = timedelta(0)
    # A container its HEALTHCHECK calls unhealthy for this long gets its replica replaced.
    unhealthy_grace: timedelta = timedelta(seconds=30)


DEFAULT_POLICY = Policy()


# --- observation helpers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """The views of all nodes, indexed for one deployment."""

    views: Mapping[uuid.UUID, NodeView]
    # Keyed by (replica, node): a twin on another node must not hide the replica's own.
    placed: Mapping[tuple[uuid.UUID, uuid.UUID], ObservedContainer] = field(default_factory=dict)
    mine: tuple[ObservedContainer, ...] = ()

    @classmethod
    def index(
        cls,
        deployment_id: uuid.UUID,
        views: Mapping[uuid.UUID, NodeView],
        mine: Sequence[ObservedContainer] | Observed | None = None,
    ) -> Observed:
        """`mine`, when given, is this deployment's containers already picked out of `views`
        (a resync pass groups them once instead of scanning every view per deployment), or
        the index itself, built once for both the plan and the status."""
        if isinstance(mine, Observed):
            return mine
        if mine is None:
            mine = [
                c
                for view in views.values()
                for c in view.containers
                if c.deployment_id == deployment_id
            ]
        mine = tuple(mine)
        placed = {(c.replica_id, c.node_id): c for c in mine if c.replica_id is not None}
        return cls(views, placed, mine)

    def of(self, r: Replica) -> ObservedContainer | None:
        """The replica's container on the replica's own node, if listed."""
        return None if r.node_id is None else self.placed.get((r.id, r.node_id))

    def known(self, node_id: uuid.UUID | None) -> NodeView | None:
        """The node's view if it is complete, else None (unknown)."""
        if node_id is None:
            return None
        view = self.views.get(node_id)
        return view if view is not None and view.complete else None


def _exit_reason(c: ObservedContainer) -> str:
    code = "unknown" if c.exit_code is None else str(c.exit_code)
    oom = " (OOMKilled)" if c.oom_killed else ""
    return f"container {c.state.value} with code {code}{oom}"


# --- the planner ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fleet:
    """The nodes, indexed once per pass rather than once per deployment."""

    ids: frozenset[uuid.UUID]
    up_since: Mapping[uuid.UUID, datetime | None]
    draining: frozenset[uuid.UUID]
    # Each node's labels: a replica on a node that no longer fits its placement is outgoing.
    labels: Mapping[uuid.UUID, frozenset[Label]] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Sequence[Node] | Fleet) -> Fleet:
        if isinstance(nodes, Fleet):
            return nodes
        return cls(
            frozenset(n.id for n in nodes),
            {n.id: n.up_since for n in nodes},
            frozenset(n.id for n in nodes if n.draining),
            {n.id: n.labels for n in nodes},
        )


def plan(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    nodes: Sequence[Node] | Fleet,
    *,
    policy: Policy = DEFAULT_POLICY,
    mine: Sequence[ObservedContainer] | Observed | None = None,
    now: datetime | None = None,
    unhealthy_since: Mapping[str, datetime] | None = None,
    over_limit: Mapping[str, str] | None = None,
    moving: Collection[uuid.UUID] = (),
) -> Plan:
    """What to do next for deployment `d`. Repeated planning over the world it leads to converges
    to exactly `target_replicas` live replicas, never with two containers for one replica.
    `over_limit`: containers the storage monitor found past their replica's `storage_gb`, each
    with its reason; their replicas are replaced, as an unhealthy container's are. `moving`:
    replicas a rebalance moves (controller.rebalance); like a drained node's, and like those on
    nodes that no longer fit the placement, they are replaced first and stopped once their
    replacement is ready, never taking the deployment below its target."""
    fleet = Fleet.of(nodes)
    obs = Observed.index(d.id, views, mine)
    seen = _Seen(obs, fleet, policy, now, unhealthy_since or {}, over_limit or {})
    actions, live = _judge_rows(d.replicas, seen)
    actions += _strays(d, obs, actions, live)
    target = 0 if d.deleting else d.target_replicas
    leaving = _misfits(d, live, fleet, obs).union(moving)
    keepers, outgoing, rolling = _split_live(d, live, fleet, leaving)
    surge, unavailable = rollout_bounds(target, policy) if rolling else (0, 0)
    doomed = victims(keepers, max(0, len(keepers) - target))
    doomed += _outgoing_to_stop(keepers, outgoing, doomed, target - unavailable, seen)
    actions += [StopReplica(victim, obs.of(victim)) for victim in doomed]
    doomed_ids = {r.id for r in doomed}
    # Pending rows get a node from the scheduler; one that claims a node already (edited by
    # hand) is placed again, and a container left on its old node becomes a twin.
    actions += [
        PlaceReplica(r)
        for r in live
        if r.status is ReplicaStatus.PENDING and r.id not in doomed_ids
    ]
    count = _to_create(live, keepers, doomed_ids, target, surge if rolling else None, policy)
    if count:
        actions.append(CreateReplicas(count))
    return Plan(tuple(actions))


@dataclass(frozen=True, slots=True)
class _Seen:
    """What judging a row reads besides the row: the listing, the nodes, the policy, the clock
    and the health and storage signals gathered outside the listing."""

    obs: Observed
    fleet: Fleet
    policy: Policy
    now: datetime | None
    unhealthy_since: Mapping[str, datetime]
    over_limit: Mapping[str, str]


def _judge_rows(replicas: Sequence[Replica], seen: _Seen) -> tuple[list[Action], list[Replica]]:
    """Each replica row against what the engines show: the actions the rows call for, and the
    replicas that stand (live), both in row order."""
    actions: list[Action] = []
    live: list[Replica] = []
    for r in replicas:
        row_actions, stands = _judge_row(r, seen)
        actions += row_actions
        if stands:
            live.append(r)
    return actions, live


def _judge_row(r: Replica, seen: _Seen) -> tuple[tuple[Action, ...], bool]:
    """(what one row calls for, whether the replica stands)."""
    obs = seen.obs
    c = obs.of(r)
    if r.status is ReplicaStatus.STOPPING:
        return (StopReplica(r, c),), False
    if r.status is ReplicaStatus.PENDING:
        return (), True
    if r.node_id is None:
        return (MarkFailed(r, "node removed"),), False
    if r.node_id not in seen.fleet.ids:
        # Deleted with foreign keys off (the sqlite3 shell), or an id typed wrong.
        return (MarkFailed(r, f"node {r.node_id} not found in nodes"),), False
    view = obs.known(r.node_id)
    if r.status is ReplicaStatus.STARTING:
        if view is None:
            return (), True  # node unknown: the create may or may not have happened
        if c is not None and c.state in _ALIVE:
            return (MarkRunning(r, c.id),), True
        return (EnsureContainer(r, c),), True
    # RUNNING
    if view is None:
        return (), True
    if c is None:
        if r.started_at is not None and view.observed_at <= r.started_at:
            return (), True  # listing predates the start: cannot judge yet
        return (MarkFailed(r, "container is gone"),), False
    return _judge_running(r, c, view, seen)


def _judge_running(
    r: Replica, c: ObservedContainer, view: NodeView, seen: _Seen
) -> tuple[tuple[Action, ...], bool]:
    """A running row whose container its (completely listed) node shows."""
    policy, now = seen.policy, seen.now
    sick = seen.unhealthy_since.get(c.id) if c.health == "unhealthy" else None
    too_big = seen.over_limit.get(c.id)
    if too_big is not None:
        return (MarkFailed(r, too_big, c),), False
    if sick is not None and now is not None and now - sick >= policy.unhealthy_grace:
        seconds = int((now - sick).total_seconds())
        return (MarkFailed(r, f"container unhealthy for {seconds}s", c),), False
    if c.state in _ALIVE:
        if c.inspected and (
            c.restart_count > r.restart_count
            or c.exit_code != r.last_exit_code
            or c.oom_killed != r.oom_killed
        ):
            return (RecordCrash(r, c.restart_count, c.exit_code, c.oom_killed),), True
        return (), True
    up_since = seen.fleet.up_since.get(r.node_id) if r.node_id is not None else None
    if _exit_too_fresh(c, up_since, view.observed_at, policy.exit_grace):
        return (), True  # its engine may be going down, or just back: look again later
    return (MarkFailed(r, _exit_reason(c), c),), False


def _strays(
    d: Deployment, obs: Observed, actions: Sequence[Action], live: Sequence[Replica]
) -> list[Action]:
    """Containers of `d` to remove: orphans (no live replica behind them) and twins (on another
    node than their replica's). A container a failure or a stop already deals with is left to
    that action."""
    live_ids = {r.id for r in live}
    stopping_ids = {a.replica.id for a in actions if isinstance(a, StopReplica)}
    replica_nodes = {r.id: r.node_id for r in d.replicas}
    failed_with_container = {
        a.container.id for a in actions if isinstance(a, MarkFailed) and a.container is not None
    }
    removals: list[Action] = []
    for c in obs.mine:
        if c.id in failed_with_container:
            continue
        if c.replica_id in stopping_ids and replica_nodes.get(c.replica_id) == c.node_id:
            continue
        if c.replica_id not in live_ids:
            removals.append(RemoveContainer(c, "no live replica"))
        elif replica_nodes.get(c.replica_id) != c.node_id:
            removals.append(RemoveContainer(c, "twin of a replica placed on another node"))
    return removals


def _split_live(
    d: Deployment, live: Sequence[Replica], fleet: Fleet, leaving: Collection[uuid.UUID]
) -> tuple[list[Replica], list[Replica], bool]:
    """(keepers, outgoing, rolling). Keepers run the current spec off draining nodes; every
    other live replica is outgoing (a rollout's old replicas, a drained node's replicas, and
    those `leaving`: misplaced or being moved). Rolling: some live replica runs an outdated
    spec and the deployment is not being deleted."""
    keepers: list[Replica] = []
    outgoing: list[Replica] = []
    rolling = False
    for r in live:
        old = d.outdated(r)
        rolling = rolling or old
        out = old or r.node_id in fleet.draining or r.id in leaving
        (outgoing if out else keepers).append(r)
    return keepers, outgoing, rolling and not d.deleting


def _misfits(d: Deployment, live: Sequence[Replica], fleet: Fleet, obs: Observed) -> set[uuid.UUID]:
    """Replicas on nodes that no longer fit `d.placement` (changed placement or node labels):
    the selector is not matched, the spread label is missing, or the node holds more than
    `max_per_node` of them, in which case the ready and oldest ones stay. A node the fleet
    does not know is left to `_judge_row`."""
    rules = d.placement
    if rules.empty or d.deleting:
        return set()
    out: set[uuid.UUID] = set()
    on_node: dict[uuid.UUID, list[Replica]] = {}
    for r in live:
        labels = fleet.labels.get(r.node_id) if r.node_id is not None else None
        if labels is None or r.node_id is None:
            continue
        if not _fits(rules, labels):
            out.add(r.id)
        else:
            on_node.setdefault(r.node_id, []).append(r)
    cap = rules.max_per_node
    if cap is not None:
        for held in on_node.values():
            if len(held) > cap:
                held.sort(key=lambda r: (not _is_ready(r, obs), _created(r), str(r.id)))
                out.update(r.id for r in held[cap:])
    return out


def _fits(rules: PlacementRules, labels: frozenset[Label]) -> bool:
    """The node's labels allow the deployment there (the per-node cap aside)."""
    if not rules.matches(labels):
        return False
    return rules.spread_by is None or label_value(labels, rules.spread_by) is not None


def _created(r: Replica) -> float:
    return r.created_at.timestamp() if r.created_at else 0.0


def _outgoing_to_stop(
    keepers: Sequence[Replica],
    outgoing: Sequence[Replica],
    doomed: Sequence[Replica],
    floor: int,
    seen: _Seen,
) -> list[Replica]:
    """The outgoing replicas to stop now. They are replaced first and stop only while what is
    available stays above `floor`: `target` for a drain (as `kubectl drain` with a disruption
    budget), `target - maxUnavailable` for a rollout (as a Deployment's RollingUpdate). One not
    serving at all may go freely. Keepers already `doomed` (scale-down victims) do not count."""
    if not outgoing:
        return []
    obs = seen.obs
    kept = [r for r in keepers if r not in doomed]
    budget = sum(_counts_toward_floor(r, True, seen) for r in kept)
    budget += sum(_counts_toward_floor(r, False, seen) for r in outgoing)
    budget -= floor
    stop: list[Replica] = []
    for r in sorted(outgoing, key=lambda r: _is_ready(r, obs)):
        if _is_ready(r, obs):
            if budget <= 0:
                continue
            budget -= 1
        stop.append(r)
    return stop


def _counts_toward_floor(r: Replica, keeper: bool, seen: _Seen) -> bool:
    """Keepers count once available (up for min_ready); outgoing replicas while serving and not
    just restarted (a crash-looping container shows "running" for a moment after each
    restart). Stopping a serving outgoing replica spends the budget."""
    if keeper:
        return _is_ready(r, seen.obs, now=seen.now, min_ready=seen.policy.min_ready)
    c = seen.obs.of(r)
    settled = c is None or c.uptime_seconds is None or c.uptime_seconds >= 1.0
    return settled and _is_ready(r, seen.obs)


def _to_create(
    live: Sequence[Replica],
    keepers: Sequence[Replica],
    doomed_ids: set[uuid.UUID],
    target: int,
    surge: int | None,
    policy: Policy,
) -> int:
    """How many pending rows to insert: up to `target` keepers, with at most `policy.burst`
    rows unplaced and, during a rollout (`surge` given), never more than target + maxSurge
    replicas at once."""
    if len(keepers) >= target:
        return 0
    unplaced = sum(1 for r in live if r.node_id is None)
    count = min(target - len(keepers), max(0, policy.burst - unplaced))
    if surge is not None:
        remaining = len(live) - len(doomed_ids)
        count = min(count, max(0, target + surge - remaining))
    return count


def rollout_bounds(target: int, policy: Policy) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in replicas, rounded as Kubernetes does: surge up,
    unavailable down, and never both zero, so a rollout can always make progress."""
    surge = math.ceil(target * policy.max_surge)
    unavailable = math.floor(target * policy.max_unavailable)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _exit_too_fresh(
    c: ObservedContainer, node_up_since: datetime | None, seen_at: datetime, grace: timedelta
) -> bool:
    """An exit counts once the node has answered for `grace` past both the exit and its own
    (re)start: a returning engine lists its containers exited until it restarts them."""
    since = max((t for t in (c.finished_at, node_up_since) if t is not None), default=None)
    return since is not None and seen_at - since < grace


def _is_ready(
    r: Replica,
    obs: Observed,
    *,
    now: datetime | None = None,
    min_ready: timedelta = timedelta(0),
) -> bool:
    """Serving now: a running row whose container the engine shows running and, when the image
    has a HEALTHCHECK, healthy (an unknown node's replica is trusted as recorded). With `now`,
    it must also have run for `min_ready` (a rollout's minReadySeconds)."""
    if r.status is not ReplicaStatus.RUNNING:
        return False
    if now is not None and min_ready and (r.started_at is None or now - r.started_at < min_ready):
        return False
    if obs.known(r.node_id) is None:
        return True
    c = obs.of(r)
    if c is None or c.state is not ContainerState.RUNNING or c.health not in (None, "healthy"):
        return False
    # With min_ready, the container itself must also have stayed up that long: a crash-looping
    # container shows "running" for a moment after each restart.
    if now is not None and min_ready and c.uptime_seconds is not None:
        return c.uptime_seconds >= min_ready.total_seconds()
    return True


def _ready(
    replicas: Sequence[Replica],
    obs: Observed,
    *,
    now: datetime | None = None,
    min_ready: timedelta = timedelta(0),
) -> int:
    return sum(1 for r in replicas if _is_ready(r, obs, now=now, min_ready=min_ready))


def victims(live: Sequence[Replica], count: int) -> list[Replica]:
    """Which `count` replicas to stop: unplaced first, then pending < starting < running, then
    those on the node crowded with most replicas of this deployment, newest first."""
    if count <= 0:
        return []
    per_node: Counter[uuid.UUID | None] = Counter(r.node_id for r in live if r.node_id is not None)

    def rank(r: Replica) -> tuple[int, int, int, float, str]:
        created = r.created_at.timestamp() if r.created_at else 0.0
        return (
            0 if r.node_id is None else 1,
            _STATUS_RANK.get(r.status, 3),
            -per_node.get(r.node_id, 0),
            -created,
            str(r.id),
        )

    return sorted(live, key=rank)[:count]


# --- status --------------------------------------------------------------------------------


# The problem part of the reason of a deployment the controller cannot run as written.
CANNOT_RUN = "cannot run: "


@dataclass(frozen=True, slots=True)
class Progress:
    """What the reconciler remembers between passes (persisted with the status it belongs to,
    see `model.ProgressState`)."""

    last_progress_at: datetime
    problem: str | None = None  # the latest start failure or scheduling refusal


@dataclass(frozen=True, slots=True)
class StatusDecision:
    status: DeploymentStatus
    reason: str
    converged: bool
    ready: int


def ready_count(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    mine: Sequence[ObservedContainer] | None = None,
) -> int:
    """Running replicas whose container the engine shows running (unknown nodes: trust the row)."""
    return _ready(d.replicas, Observed.index(d.id, views, mine))


def crash_loop(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    policy: Policy = DEFAULT_POLICY,
    mine: Sequence[ObservedContainer] | None = None,
) -> str | None:
    """`crash loop: replica 3f2a restarted 5 times, last exit code 3` for the worst offender."""
    worst: ObservedContainer | None = None
    live = {r.id for r in d.replicas if r.live}
    for c in Observed.index(d.id, views, mine).mine:
        if c.replica_id not in live or c.state is not ContainerState.RESTARTING:
            continue
        if c.restart_count >= policy.crash_loop_restarts and (
            worst is None or c.restart_count > worst.restart_count
        ):
            worst = c
    if worst is None or worst.replica_id is None:
        return None
    code = "unknown" if worst.exit_code is None else str(worst.exit_code)
    oom = " (OOMKilled)" if worst.oom_killed else ""
    return (
        f"crash loop: replica {short_id(worst.replica_id)} restarted {worst.restart_count} "
        f"times, last exit code {code}{oom}"
    )


def derive_status(
    d: Deployment,
    views: Mapping[uuid.UUID, NodeView],
    progress: Progress,
    *,
    now: datetime,
    deadline: timedelta,
    policy: Policy = DEFAULT_POLICY,
    mine: Sequence[ObservedContainer] | Observed | None = None,
    refusal: str | None = None,
    moving: Collection[uuid.UUID] = (),
) -> StatusDecision:
    """The deployment's status and reason from its replicas and what the engines show.
    `refusal`: why the controller cannot run the spec as written (controller.runnable);
    a deployment not whole with one is `failed` at once, its reason saying why. `moving`:
    replicas a rebalance is replacing; the surplus while one moves is no change of status (a
    rebalance writes one history row of its own when it ends)."""
    live = [r for r in d.replicas if r.live]
    stopping = [r for r in d.replicas if r.status is ReplicaStatus.STOPPING]
    obs = Observed.index(d.id, views, mine)
    ready = _ready(d.replicas, obs)
    if d.deleting:
        if not live and not stopping:
            return StatusDecision(DeploymentStatus.DELETED, "deleted by operator", True, 0)
        return StatusDecision(d.status, f"deleting: {len(live) + len(stopping)} left", False, ready)
    target = d.target_replicas
    if target == 0 and not live and not stopping:
        return StatusDecision(DeploymentStatus.STOPPED, "scaled to 0 replicas", True, 0)
    progress_text = f"{ready}/{target} replicas running"
    outdated = sum(1 for r in live if d.outdated(r))
    if ready == target and len(live) == target and not stopping and not outdated:
        return StatusDecision(DeploymentStatus.RUNNING, progress_text, True, ready)
    if moving and not outdated and _whole_while_moving(live, stopping, moving, ready, target):
        text = f"{target}/{target} replicas running"
        return StatusDecision(DeploymentStatus.RUNNING, text, True, target)
    if refusal is not None and target > 0:
        halted = "rollout halted: " if outdated else ""
        reason = f"{progress_text}; {halted}{CANNOT_RUN}{refusal}"
        return StatusDecision(DeploymentStatus.FAILED, reason, False, ready)

    problem = crash_loop(d, views, policy, obs.mine) or progress.problem
    if outdated:
        updated = sum(1 for r in live if not d.outdated(r))
        problem = (
            f"rollout halted: {problem}"
            if problem
            else f"rollout in progress ({updated}/{target} updated)"
        )
    reason = f"{progress_text}; {problem}" if problem else progress_text
    stalled = now - progress.last_progress_at > deadline
    # Failed is sticky until the deployment converges or the operator changes its spec.
    sticky = generation.failed_is_sticky(d.status, d.generation, d.observed_generation)
    if target > 0 and (stalled or sticky):
        return StatusDecision(DeploymentStatus.FAILED, f"no progress: {reason}", False, ready)
    # Pending means "nothing placed yet" for a deployment starting up; one that got further
    # stays scheduled while failed replicas wait for replacement, so history does not flap.
    never_placed = d.status in (DeploymentStatus.PENDING, DeploymentStatus.STOPPED)
    if target > 0 and never_placed and all(r.node_id is None for r in live):
        return StatusDecision(DeploymentStatus.PENDING, reason, False, ready)
    return StatusDecision(DeploymentStatus.SCHEDULED, reason, False, ready)


def _whole_while_moving(
    live: Sequence[Replica],
    stopping: Sequence[Replica],
    moving: Collection[uuid.UUID],
    ready: int,
    target: int,
) -> bool:
    """Whole but for the replicas being moved: the rest are `target`, at least `target` serve,
    and nothing else is stopping."""
    extra = sum(1 for r in live if r.id in moving)
    if any(r.id not in moving for r in stopping):
        return False
    return len(live) - extra == target and ready >= target


def history_needed(d: Deployment, decision: StatusDecision) -> bool:
    """A history row for every status change, and for a changed problem under the same status
    (a new refusal or error), but not for mere progress counts ("2/5" -> "3/5")."""
    if decision.status is not d.status:
        return True
    if decision.converged:
        return False
    return _problem_of(decision.reason) != _problem_of(d.last_reason)


_RESTART_COUNT = re.compile(r"restarted \d+ times")
_ROLLOUT_COUNT = re.compile(r"\(\d+/\d+ updated\)")
_REFUSED_COUNT = re.compile(r"refused \d+ times")


def _problem_of(reason: str | None) -> str | None:
    """The problem part of a reason, with rising counts masked: a container restarting again,
    a node refusing again or a rollout one replica further is the same problem, not a new
    history row per step."""
    if not reason:
        return None
    text = reason.removeprefix("no progress: ")
    _, sep, problem = text.partition("; ")
    if not sep:
        return None
    problem = _REFUSED_COUNT.sub("refused N times", problem)
    return _ROLLOUT_COUNT.sub("(N updated)", _RESTART_COUNT.sub("restarted N times", problem))
