"""The planner, table-driven, plus hypothesis: repeated planning converges to exactly
`target_replicas` live replicas and never gives one replica two containers."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import (
    ContainerState,
    DeploymentStatus,
    Node,
    NodeView,
    ObservedContainer,
    ProgressState,
    Replica,
    ReplicaStatus,
)
from controller.placement_rules import PlacementRules
from controller.plan import (
    CreateReplicas,
    EnsureContainer,
    MarkFailed,
    MarkRunning,
    PlaceReplica,
    Plan,
    Policy,
    Progress,
    RemoveContainer,
    StopReplica,
    derive_status,
    history_needed,
    plan,
    rollout_bounds,
    victims,
)
from tests.unit.factories import T0, container, deployment, node, replica, views

N1, N2, N3 = node("n1"), node("n2"), node("n3")
NODES = [N1, N2, N3]


def kinds(p: Plan) -> list[str]:
    return sorted(type(a).__name__ for a in p.actions)


def test_empty_deployment_creates_target_rows() -> None:
    p = plan(deployment(3), views((N1, [])), NODES)
    assert p.actions == (CreateReplicas(3),)


def test_converged_deployment_plans_nothing() -> None:
    rs = [replica(ReplicaStatus.RUNNING, n, n=i, started=T0) for i, n in enumerate(NODES)]
    v = views(*[(n, [container(r, n)]) for r, n in zip(rs, NODES, strict=True)])
    assert plan(deployment(3, *rs), v, NODES).empty


def test_starting_replica_with_running_container_is_adopted() -> None:
    r = replica(ReplicaStatus.STARTING, N1)
    c = container(r, N1)
    assert plan(deployment(1, r), views((N1, [c])), NODES).actions == (MarkRunning(r, c.id),)


def test_starting_replica_without_container_is_ensured() -> None:
    r = replica(ReplicaStatus.STARTING, N1)
    assert plan(deployment(1, r), views((N1, [])), NODES).actions == (EnsureContainer(r, None),)


def test_starting_replica_on_unknown_node_waits() -> None:
    r = replica(ReplicaStatus.STARTING, N1)
    incomplete = {N1.id: NodeView(N1.id, complete=False, observed_at=T0)}
    assert plan(deployment(1, r), incomplete, NODES).empty


@pytest.mark.parametrize(
    ("listed_at", "expect_failed"),
    [
        pytest.param(T0 + timedelta(seconds=5), True, id="listing-after-start-judges-gone"),
        pytest.param(T0 - timedelta(seconds=5), False, id="listing-before-start-cannot-judge"),
    ],
)
def test_running_replica_whose_container_is_missing(listed_at: object, expect_failed: bool) -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    p = plan(deployment(1, r), views((N1, []), at=listed_at), NODES)  # type: ignore[arg-type]
    if expect_failed:
        assert p.actions == (MarkFailed(r, "container is gone"), CreateReplicas(1))
    else:
        assert p.empty


def test_running_replica_on_unknown_node_is_not_replaced() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    assert plan(deployment(1, r), {}, NODES).empty


def test_exited_container_fails_its_replica_with_exit_code() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    c = container(r, N1, ContainerState.EXITED, exit_code=3)
    p = plan(deployment(1, r), views((N1, [c])), NODES)
    assert p.actions == (
        MarkFailed(r, "container exited with code 3", c),
        CreateReplicas(1),
    )


def test_restarting_container_is_left_to_the_engine() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    c = container(r, N1, ContainerState.RESTARTING, exit_code=1, restart_count=4)
    assert plan(deployment(1, r), views((N1, [c])), NODES).empty


def test_orphan_and_twin_are_removed() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    orphan = container(None, N2, replica_id=uuid.UUID(int=99))
    twin = container(r, N3)
    p = plan(deployment(1, r), views((N1, [container(r, N1)]), (N2, [orphan]), (N3, [twin])), NODES)
    assert p.actions == (
        RemoveContainer(orphan, "no live replica"),
        RemoveContainer(twin, "twin of a replica placed on another node"),
    )


def test_replica_whose_node_was_removed_fails() -> None:
    r = replace(replica(ReplicaStatus.RUNNING, None, started=T0), node_id=None)
    assert kinds(plan(deployment(1, r), views((N1, [])), NODES)) == ["CreateReplicas", "MarkFailed"]


def test_soft_delete_stops_everything() -> None:
    rs = [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(2)]
    pending = replica(ReplicaStatus.PENDING, None, n=5)
    d = deployment(2, *rs, pending, deleted_at=T0)  # stopping wins over placing
    v = views((N1, [container(r, N1) for r in rs]))
    assert kinds(plan(d, v, NODES)) == ["StopReplica"] * 3


def test_stopping_replica_is_stopped_again_after_a_crash() -> None:
    r = replica(ReplicaStatus.STOPPING, N1)
    c = container(r, N1)
    assert plan(deployment(0, r), views((N1, [c])), NODES).actions == (StopReplica(r, c),)


def test_burst_bounds_unplaced_pending_rows() -> None:
    stuck = [replica(ReplicaStatus.PENDING, None, n=i) for i in range(4)]
    p = plan(deployment(100_000, *stuck), views((N1, [])), NODES, policy=Policy(burst=5))
    assert p.actions == (*[PlaceReplica(r) for r in stuck], CreateReplicas(1))
    p = plan(deployment(100_000), views((N1, [])), NODES, policy=Policy(burst=5))
    assert p.actions == (CreateReplicas(5),)


def test_victim_order_matches_kubernetes() -> None:
    unplaced = replica(ReplicaStatus.PENDING, None, n=1)
    starting = replica(ReplicaStatus.STARTING, N2, n=2)
    crowded_old = replica(ReplicaStatus.RUNNING, N1, n=3)
    crowded_new = replica(ReplicaStatus.RUNNING, N1, n=4)
    alone = replica(ReplicaStatus.RUNNING, N3, n=9)
    live = [alone, crowded_old, crowded_new, starting, unplaced]
    assert victims(live, 5) == [unplaced, starting, crowded_new, crowded_old, alone]


# --- convergence property ------------------------------------------------------------------


class World:
    """An ideal cluster: every start succeeds. Applies plans the way the reconciler does."""

    def __init__(self, d_target: int, replicas: list, containers: list, deleting: bool) -> None:
        self.target = d_target
        self.deleting = deleting
        self.replicas = {r.id: r for r in replicas}
        self.containers: dict[str, ObservedContainer] = {c.id: c for c in containers}
        self.t = T0 + timedelta(hours=1)
        self.rr = 0

    def deployment(self):  # type: ignore[no-untyped-def]
        live = [r for r in self.replicas.values() if r.status not in _TERMINAL]
        return deployment(self.target, *live, deleted_at=T0 if self.deleting else None)

    def views(self) -> dict[uuid.UUID, NodeView]:
        return views(
            *[(n, [c for c in self.containers.values() if c.node_id == n.id]) for n in NODES],
            at=self.t,
        )

    def drop_containers(self, replica_id: uuid.UUID, node_id: uuid.UUID | None) -> None:
        for cid, c in list(self.containers.items()):
            if c.replica_id == replica_id and c.node_id == node_id:
                del self.containers[cid]

    def start(self, r):  # type: ignore[no-untyped-def]
        n = next(x for x in NODES if x.id == r.node_id)
        if not any(c.replica_id == r.id and c.node_id == n.id for c in self.containers.values()):
            c = container(r, n)
            self.containers[c.id] = c
        self.replicas[r.id] = replace(r, status=ReplicaStatus.RUNNING, started_at=self.t)

    def apply(self, p: Plan) -> None:
        self.t += timedelta(seconds=1)
        for a in p.actions:
            if isinstance(a, MarkRunning):
                self.replicas[a.replica.id] = replace(
                    a.replica, status=ReplicaStatus.RUNNING, started_at=self.t
                )
            elif isinstance(a, MarkFailed):
                self.replicas[a.replica.id] = replace(a.replica, status=ReplicaStatus.FAILED)
                if a.container is not None:
                    self.containers.pop(a.container.id, None)
            elif isinstance(a, EnsureContainer):
                self.start(a.replica)
            elif isinstance(a, StopReplica):
                self.drop_containers(a.replica.id, a.replica.node_id)
                self.replicas[a.replica.id] = replace(a.replica, status=ReplicaStatus.STOPPED)
            elif isinstance(a, RemoveContainer):
                self.containers.pop(a.container.id, None)
            elif isinstance(a, PlaceReplica):
                self.rr += 1
                self.start(
                    replace(a.replica, status=ReplicaStatus.STARTING, node_id=NODES[self.rr % 3].id)
                )
        for a in p.actions:
            if isinstance(a, CreateReplicas):
                for _ in range(a.count):
                    self.rr += 1
                    r = replica(ReplicaStatus.STARTING, NODES[self.rr % 3], n=10_000 + self.rr)
                    self.start(r)
        self.t += timedelta(seconds=1)


_TERMINAL = {ReplicaStatus.STOPPED, ReplicaStatus.FAILED}
_STATUSES = list(ReplicaStatus)
_STATES = list(ContainerState)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(0, 8))
    replicas, containers = [], []
    for i in range(n):
        status = draw(st.sampled_from(_STATUSES))
        on = draw(st.sampled_from([None, *NODES]))
        r = replica(status, on, n=i, started=T0 if status is ReplicaStatus.RUNNING else None)
        replicas.append(r)
        for where in draw(st.lists(st.sampled_from(NODES), max_size=2, unique=True)):
            containers.append(container(r, where, draw(st.sampled_from(_STATES)), exit_code=1))
    for j in range(draw(st.integers(0, 2))):  # strays with our labels
        containers.append(
            container(None, draw(st.sampled_from(NODES)), replica_id=uuid.UUID(int=5000 + j))
        )
    return World(draw(st.integers(0, 12)), replicas, containers, draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_repeated_planning_converges_without_twins(world: World) -> None:
    for _ in range(6):
        p = plan(world.deployment(), world.views(), NODES)
        if p.empty:
            break
        world.apply(p)
        per_replica: dict[uuid.UUID | None, int] = {}
        for c in world.containers.values():
            if c.state is ContainerState.RUNNING:
                per_replica[c.replica_id] = per_replica.get(c.replica_id, 0) + 1
    else:
        pytest.fail(f"no convergence: {plan(world.deployment(), world.views(), NODES)}")
    live = [r for r in world.replicas.values() if r.live]
    expected = 0 if world.deleting else world.target
    assert len(live) == expected
    # Every live replica has exactly one container, on its own node; nothing else remains.
    assert sorted((c.replica_id, c.node_id) for c in world.containers.values()) == sorted(
        (r.id, r.node_id) for r in live
    )


# --- status ----------------------------------------------------------------------------------


def _status(d, v, *, problem=None, since=T0, now=None):  # type: ignore[no-untyped-def]
    return derive_status(
        d,
        v,
        Progress(since, problem),
        now=now or T0 + timedelta(seconds=10),
        deadline=timedelta(seconds=600),
    )


def test_status_running_when_target_reached() -> None:
    rs = [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(2)]
    decision = _status(deployment(2, *rs), views((N1, [container(r, N1) for r in rs])))
    assert (decision.status, decision.reason) == (DeploymentStatus.RUNNING, "2/2 replicas running")


def test_status_pending_until_first_placement_then_scheduled() -> None:
    unplaced = replica(ReplicaStatus.PENDING, None)
    assert _status(deployment(1, unplaced), views((N1, []))).status is DeploymentStatus.PENDING
    placed = replica(ReplicaStatus.STARTING, N1)
    assert _status(deployment(1, placed), views((N1, []))).status is DeploymentStatus.SCHEDULED


def test_status_does_not_flap_back_to_pending_after_a_failed_start() -> None:
    unplaced = replica(ReplicaStatus.PENDING, None)
    d = deployment(1, unplaced, status=DeploymentStatus.SCHEDULED)
    decision = _status(d, views((N1, [])), problem="image pull failed: nope")
    assert decision.status is DeploymentStatus.SCHEDULED
    assert decision.reason == "0/1 replicas running; image pull failed: nope"


def test_status_failed_after_deadline_and_sticky_until_converged() -> None:
    r = replica(ReplicaStatus.STARTING, N1)
    late = T0 + timedelta(seconds=601)
    d = deployment(1, r, status=DeploymentStatus.SCHEDULED)
    assert _status(d, views((N1, [])), now=late).status is DeploymentStatus.FAILED
    # With a fresh progress clock (a new leader's) failed stays failed for the generation it
    # failed under...
    failed = replace(d, status=DeploymentStatus.FAILED, generation=3, progress=ProgressState(3))
    assert _status(failed, views((N1, []))).status is DeploymentStatus.FAILED
    # ...until the operator changes the deployment (the database counts a new generation),
    edited = replace(failed, generation=4)
    assert _status(edited, views((N1, []))).status is DeploymentStatus.SCHEDULED
    # or it converges.
    ok = replica(ReplicaStatus.RUNNING, N1, started=T0)
    done = replace(failed, replicas=(ok,))
    assert _status(done, views((N1, [container(ok, N1)]))).status is DeploymentStatus.RUNNING


def test_crash_loop_reason_and_history_dedup() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    looping = container(r, N1, ContainerState.RESTARTING, exit_code=3, restart_count=5)
    d = deployment(1, r, status=DeploymentStatus.SCHEDULED)
    decision = _status(d, views((N1, [looping])))
    assert decision.reason == (
        f"0/1 replicas running; crash loop: replica {str(r.id)[:8]} restarted 5 times, "
        "last exit code 3"
    )
    assert history_needed(d, decision)
    recorded = replace(d, last_reason=decision.reason.replace("5 times", "4 times"))
    assert not history_needed(recorded, decision)


def test_deleted_when_nothing_left() -> None:
    d = deployment(3, deleted_at=T0, status=DeploymentStatus.RUNNING)
    assert _status(d, views((N1, []))).status is DeploymentStatus.DELETED
    d = deployment(0, status=DeploymentStatus.RUNNING)
    assert _status(d, views((N1, []))).status is DeploymentStatus.STOPPED


# --- drain -------------------------------------------------------------------------------------


def test_drain_replaces_before_stopping() -> None:
    draining = replace(N1, draining=True, unschedulable=True)
    nodes = [draining, N2, N3]
    old = [replica(ReplicaStatus.RUNNING, draining, n=i, started=T0) for i in range(2)]
    v = views((draining, [container(r, draining) for r in old]), (N2, []), (N3, []))
    # Step 1: replacements first, nothing stopped while they do not serve.
    assert plan(deployment(2, *old), v, nodes).actions == (CreateReplicas(2),)
    # Step 2: one replacement serves: exactly one old replica may go.
    new = [
        replica(ReplicaStatus.RUNNING, N2, n=10, started=T0),
        replica(ReplicaStatus.STARTING, N3, n=11),
    ]
    v = views(
        (draining, [container(r, draining) for r in old]),
        (N2, [container(new[0], N2)]),
        (N3, []),
    )
    p = plan(deployment(2, *old, *new), v, nodes)
    assert [a.replica for a in p.actions if isinstance(a, StopReplica)] == [old[0]]
    # Step 3: both serve: the rest of the draining node empties.
    v = views(
        (draining, [container(old[1], draining)]),
        (N2, [container(new[0], N2)]),
        (N3, [container(new[1], N3)]),
    )
    running = [new[0], replace(new[1], status=ReplicaStatus.RUNNING, started_at=T0)]
    p = plan(deployment(2, old[1], *running), v, nodes)
    assert p.actions == (StopReplica(old[1], container(old[1], draining)),)


def test_fresh_exit_waits_for_the_node_to_outlive_it() -> None:
    """An engine going down stops its containers just before it stops answering."""
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    listed = T0 + timedelta(hours=1)
    c = container(
        r, N1, ContainerState.EXITED, exit_code=0, finished_at=listed - timedelta(seconds=1)
    )
    assert plan(deployment(1, r), views((N1, [c]), at=listed), NODES).empty
    old = replace(c, finished_at=listed - timedelta(seconds=30))
    assert kinds(plan(deployment(1, r), views((N1, [old]), at=listed), NODES)) == [
        "CreateReplicas",
        "MarkFailed",
    ]


# --- rolling updates ---------------------------------------------------------------------------


def _rollout_world(target: int):  # type: ignore[no-untyped-def]
    old_d = deployment(target, image="app:1")
    olds = [
        replace(
            replica(ReplicaStatus.RUNNING, NODES[i % 3], n=i, started=T0), spec_hash=old_d.spec_hash
        )
        for i in range(target)
    ]
    return deployment(target, *olds, image="app:2"), olds


def test_rollout_bounds_round_like_kubernetes() -> None:
    assert rollout_bounds(4, Policy()) == (1, 1)
    assert rollout_bounds(1, Policy()) == (1, 0)
    assert rollout_bounds(10, Policy()) == (3, 2)
    assert rollout_bounds(1, Policy(max_surge=0, max_unavailable=0)) == (0, 1)


def test_rollout_surges_then_replaces_within_unavailability() -> None:
    d, olds = _rollout_world(4)
    v = views(*[(n, [container(r, n) for r in olds if r.node_id == n.id]) for n in NODES])
    p = plan(d, v, NODES)
    # maxSurge 1, maxUnavailable 1: one old replica may go at once (3 still serve), and two
    # new ones fill up to target + surge = 5 live replicas.
    assert len(p.of(StopReplica)) == 1
    assert p.of(CreateReplicas) == [CreateReplicas(2)]


@pytest.mark.parametrize(("uptime", "stops"), [(0.5, 0), (5.0, 1)])
def test_rollout_floor_does_not_count_an_old_replica_just_restarted(
    uptime: float, stops: int
) -> None:
    """A crash-looping container shows "running" for a moment after each restart: an old
    replica up for under a second does not count toward the floor, so no other may go."""
    d, olds = _rollout_world(4)  # maxUnavailable 1: floor 3
    cs = [
        container(r, NODES[i % 3], uptime_seconds=uptime if i == 0 else 60.0)
        for i, r in enumerate(olds)
    ]
    v = views(*[(n, [c for c in cs if c.node_id == n.id]) for n in NODES])
    assert len(plan(d, v, NODES).of(StopReplica)) == stops


def test_rollout_never_stops_old_while_new_ones_fail() -> None:
    """A halted rollout: the new replica never becomes ready, old ones keep serving."""
    d, olds = _rollout_world(2)  # surge 1, unavailable 0
    failing_new = replica(ReplicaStatus.RUNNING, N3, n=50, started=T0)
    failing_new = replace(failing_new, spec_hash=d.spec_hash)
    c = container(failing_new, N3, ContainerState.RESTARTING, exit_code=1, restart_count=4)
    v = views((N1, [container(olds[0], N1)]), (N2, [container(olds[1], N2)]), (N3, [c]))
    p = plan(replace(d, replicas=(*olds, failing_new)), v, NODES)
    assert p.of(StopReplica) == []
    assert p.of(CreateReplicas) == []
    decision = _status(replace(d, replicas=(*olds, failing_new)), v)
    assert "rollout halted: crash loop" in decision.reason


def test_unhealthy_container_is_not_ready() -> None:
    r = replica(ReplicaStatus.RUNNING, N1, started=T0)
    sick = container(r, N1, health="unhealthy")
    d = deployment(1, r)
    assert _status(d, views((N1, [sick]))).status is not DeploymentStatus.RUNNING
    assert _status(d, views((N1, [replace(sick, health="healthy")]))).status is (
        DeploymentStatus.RUNNING
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.floats(0, 1), st.floats(0, 1))
def test_rollout_converges_and_keeps_availability(
    target: int, max_surge: float, max_unavailable: float
) -> None:
    policy = Policy(max_surge=max_surge, max_unavailable=max_unavailable)
    surge, unavailable = rollout_bounds(target, policy)
    d, olds = _rollout_world(target)
    world = {r.id: r for r in olds}
    running: dict[uuid.UUID, ObservedContainer] = {}
    for r in olds:
        n = next(x for x in NODES if x.id == r.node_id)
        running[r.id] = container(r, n)
    serial = 0
    for _ in range(40):
        live = [r for r in world.values() if r.status is ReplicaStatus.RUNNING]
        v = views(*[(n, [c for c in running.values() if c.node_id == n.id]) for n in NODES])
        p = plan(replace(d, replicas=tuple(live)), v, NODES, policy=policy)
        if p.empty:
            break
        for a in p.of(StopReplica):
            world.pop(a.replica.id)
            running.pop(a.replica.id, None)
        # Availability floor holds after the stops, before the new ones arrive.
        assert len(running) >= target - unavailable
        for a in p.of(CreateReplicas):
            for _ in range(a.count):
                serial += 1
                n = NODES[serial % 3]
                r = replace(
                    replica(ReplicaStatus.RUNNING, n, n=500 + serial, started=T0),
                    spec_hash=d.spec_hash,
                )
                world[r.id] = r
                running[r.id] = container(r, n)
        assert len(world) <= target + max(surge, 0)
    else:
        pytest.fail("rollout did not converge")
    assert len(world) == target
    assert all(not d.outdated(r) for r in world.values())


# --- placement: misplaced and moving replicas --------------------------------------------------

ZONE_A = frozenset({("zone", "a")})
A1, A2 = node("a1", labels=ZONE_A), node("a2", labels=ZONE_A)
BARE = node("bare")


def _serving(*placed: tuple[Replica, Node]) -> dict[uuid.UUID, NodeView]:
    by_node: dict[Node, list[ObservedContainer]] = {}
    for r, n in placed:
        by_node.setdefault(n, []).append(container(r, n))
    return views(*by_node.items())


def _stopped(p: Plan) -> list[Replica]:
    return [a.replica for a in p.actions if isinstance(a, StopReplica)]


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(PlacementRules.of({"zone": "a"}), id="selector-not-matched"),
        pytest.param(PlacementRules.of(spread_by="zone"), id="spread-label-missing"),
    ],
)
def test_replica_on_a_node_that_no_longer_fits_is_replaced_first(rules: PlacementRules) -> None:
    nodes = [A1, A2, BARE]
    keep = replica(ReplicaStatus.RUNNING, A1, n=0, started=T0)
    misplaced = replica(ReplicaStatus.RUNNING, BARE, n=1, started=T0)
    d = deployment(2, keep, misplaced, placement=rules)
    # Surge first: the misplaced one keeps serving until its replacement does.
    p = plan(d, _serving((keep, A1), (misplaced, BARE)), nodes)
    assert p.actions == (CreateReplicas(1),)
    # The replacement is pending (no node fits, say): the old one still serves.
    pending = replica(ReplicaStatus.PENDING, n=2)
    d = deployment(2, keep, misplaced, pending, placement=rules)
    p = plan(d, _serving((keep, A1), (misplaced, BARE)), nodes)
    assert _stopped(p) == []
    # The replacement serves: now the misplaced one stops.
    new = replica(ReplicaStatus.RUNNING, A2, n=2, started=T0)
    d = deployment(2, keep, misplaced, new, placement=rules)
    p = plan(d, _serving((keep, A1), (misplaced, BARE), (new, A2)), nodes)
    assert _stopped(p) == [misplaced]


def test_over_max_per_node_the_ready_and_oldest_stay() -> None:
    rules = PlacementRules.of(max_per_node=1)
    old = replica(ReplicaStatus.RUNNING, N1, n=0, started=T0)
    newer = replica(ReplicaStatus.RUNNING, N1, n=1, started=T0)
    d = deployment(2, newer, old, placement=rules)
    p = plan(d, _serving((old, N1), (newer, N1)), NODES)
    assert p.actions == (CreateReplicas(1),)
    # Its replacement serves on n2: the newer one on n1 goes, the oldest stays.
    new = replica(ReplicaStatus.RUNNING, N2, n=2, started=T0)
    d = deployment(2, newer, old, new, placement=rules)
    p = plan(d, _serving((old, N1), (newer, N1), (new, N2)), NODES)
    assert _stopped(p) == [newer]
    # An unready oldest one is the one replaced.
    v = _serving((newer, N1), (new, N2))
    v |= views(
        (N1, [container(newer, N1), container(old, N1, ContainerState.RUNNING, health="starting")])
    )
    p = plan(deployment(2, newer, old, new, placement=rules), v, NODES)
    assert _stopped(p) == [old]


def test_a_moving_replica_is_replaced_before_it_stops() -> None:
    rs = [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(2)]
    d = deployment(2, *rs)
    v = _serving((rs[0], N1), (rs[1], N1))
    assert plan(d, v, NODES).empty
    assert plan(d, v, NODES, moving={rs[1].id}).actions == (CreateReplicas(1),)
    new = replica(ReplicaStatus.STARTING, N2, n=2)
    d = deployment(2, *rs, new)
    assert _stopped(plan(d, v | views((N2, [])), NODES, moving={rs[1].id})) == []
    running = replace(new, status=ReplicaStatus.RUNNING, started_at=T0)
    d = deployment(2, *rs, running)
    v = _serving((rs[0], N1), (rs[1], N1), (running, N2))
    policy = Policy(min_ready=timedelta(seconds=5))
    soon = T0 + timedelta(seconds=2)
    assert _stopped(plan(d, v, NODES, moving={rs[1].id}, policy=policy, now=soon)) == []
    later = T0 + timedelta(seconds=6)
    p = plan(d, v, NODES, moving={rs[1].id}, policy=policy, now=later)
    assert _stopped(p) == [rs[1]]


def test_a_forgotten_move_surplus_stops_the_one_on_the_fuller_node() -> None:
    """After a restart the move in flight is forgotten: target + 1 replicas serve, and the
    ordinary scale-down takes the one on the crowded node, so the move still completes."""
    rs = [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(2)]
    moved = replica(ReplicaStatus.RUNNING, N2, n=5, started=T0)
    d = deployment(2, *rs, moved)
    p = plan(d, _serving((rs[0], N1), (rs[1], N1), (moved, N2)), NODES)
    stopped = _stopped(p)
    assert len(stopped) == 1
    assert stopped[0].node_id == N1.id


def test_status_while_a_replica_moves_stays_running() -> None:
    rs = [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(2)]
    new = replica(ReplicaStatus.STARTING, N2, n=2)
    d = deployment(2, *rs, new, status=DeploymentStatus.RUNNING, last_reason="2/2 replicas running")
    v = _serving((rs[0], N1), (rs[1], N1)) | views((N2, []))
    progress = Progress(last_progress_at=T0)
    now = T0 + timedelta(seconds=1)
    moving = derive_status(
        d, v, progress, now=now, deadline=timedelta(minutes=5), moving={rs[1].id}
    )
    assert moving.status is DeploymentStatus.RUNNING
    assert moving.converged
    assert not history_needed(d, moving)
    plain = derive_status(d, v, progress, now=now, deadline=timedelta(minutes=5))
    assert plain.status is DeploymentStatus.SCHEDULED
