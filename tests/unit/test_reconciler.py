"""The reconciler end to end without I/O: the in-memory store (tests/unit/memstore.py), the
hollow runtime and an injected clock. What is asserted is what an operator sees: replica
rows, status history, containers on the engines, and how often the store and the engines
were called."""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from controller.metrics import Metrics
from controller.model import (
    Deployment,
    DeploymentStatus,
    NodeRecord,
    NodeStatus,
    ReplicaStatus,
)
from controller.placement_rules import PlacementRules
from controller.reconciler import Reconciler
from controller.runtime.hollow import HollowNode, hollow_url
from controller.settings import Settings
from tests.unit.fog import Fog, fog

RUNNING, PENDING, STOPPED, FAILED = (
    ReplicaStatus.RUNNING,
    ReplicaStatus.PENDING,
    ReplicaStatus.STOPPED,
    ReplicaStatus.FAILED,
)
BACKOFF_SECONDS = 10.0
EXIT_GRACE_SECONDS = 5.0


# The reconciler's own tests run on the fog of tests/unit/fog.py, with the production
# slow start (`min_ready_seconds`), which that fog turns off by default.
World = Fog
MIN_READY_SECONDS = {f.name: f.default for f in fields(Settings)}["min_ready_seconds"]


@pytest.fixture
async def world() -> World:
    return await fog(
        "n1",
        crash_backoff_initial_seconds=BACKOFF_SECONDS,
        exit_grace_seconds=EXIT_GRACE_SECONDS,
        min_ready_seconds=MIN_READY_SECONDS,
    )


def new(world: World, target: int, **kw: object) -> Deployment:
    return world.new(target, **kw)


async def test_a_new_deployment_starts_its_replicas_in_one_reconcile(world: World) -> None:
    d = new(world, 3)
    result = await world.reconcile(d)
    assert len(world.store.rows(d.id, RUNNING)) == 3
    assert len(world.runtime.containers()) == 3
    assert world.statuses(d) == [
        (DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED),
        (DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING),
    ]
    # Loaded once: the status after acting comes from the outcomes, not from a re-read.
    assert world.store.calls["load_deployment"] == 1
    assert result.requeue_after is None


async def test_a_converged_deployment_is_a_no_op(world: World) -> None:
    d = new(world, 2)
    await world.reconcile(d)
    calls = dict(world.store.calls)
    result = await world.reconcile(d)
    assert result.actions == 0
    writes = ("transition", "create_replicas", "record_status")
    assert {k: world.store.calls[k] - calls.get(k, 0) for k in writes} == dict.fromkeys(writes, 0)


async def test_scaling_down_stops_the_extra_replicas(world: World) -> None:
    d = new(world, 3)
    await world.reconcile(d)
    world.clock.advance(1)
    world.store.put(replace(d, target_replicas=1, updated_at=world.clock()))
    await world.reconcile(d)
    assert len(world.store.rows(d.id, RUNNING)) == 1
    assert len(world.store.rows(d.id, STOPPED)) == 2
    assert len(world.runtime.containers()) == 1
    assert world.store.deployments[d.id].status is DeploymentStatus.RUNNING


async def crash(world: World, d: Deployment) -> None:
    """The deployment's running container exits with code 3 and the exit grace passes."""
    [running] = world.store.rows(d.id, RUNNING)
    assert running.container_id is not None
    world.runtime.exit(running.container_id, 3, world.clock())
    world.clock.advance(EXIT_GRACE_SECONDS + 1)


async def test_a_crash_is_replaced_at_once_and_a_second_waits_for_the_backoff(
    world: World,
) -> None:
    d = new(world, 1)
    await world.reconcile(d)
    await crash(world, d)
    await world.reconcile(d)
    assert len(world.store.rows(d.id, FAILED)) == 1
    assert len(world.store.rows(d.id, RUNNING)) == 1  # the first replacement is immediate

    await crash(world, d)
    result = await world.reconcile(d)
    assert len(world.store.rows(d.id, FAILED)) == 2
    assert len(world.store.rows(d.id, PENDING)) == 1  # the replacement waits ...
    assert result.requeue_after == pytest.approx(BACKOFF_SECONDS, abs=0.1)  # ... this long
    ensures = world.runtime.calls["ensure"]
    world.clock.advance(BACKOFF_SECONDS / 2)
    await world.reconcile(d)
    assert world.runtime.calls["ensure"] == ensures  # still backing off
    world.clock.advance(BACKOFF_SECONDS / 2)
    await world.reconcile(d)
    assert len(world.store.rows(d.id, RUNNING)) == 1


async def test_a_start_failure_backs_off_with_the_engines_words(world: World) -> None:
    words = "pull access denied for fog-test/nope, repository does not exist"
    world.runtime.refuse("fog-test/nope:1", words)
    d = new(world, 2, image="fog-test/nope:1")
    result = await world.reconcile(d)
    # Slow start: the first start failed, so the second replica was not tried.
    assert world.runtime.calls["ensure"] == 1
    assert len(world.store.rows(d.id, FAILED)) == 1
    assert result.requeue_after == pytest.approx(BACKOFF_SECONDS, abs=0.1)
    reasons = [h.reason for h in world.store.history if h.deployment_id == d.id]
    assert any(words in r for r in reasons), reasons
    world.clock.advance(1)
    await world.reconcile(d)
    assert world.runtime.calls["ensure"] == 1  # backing off: the engine is not asked again


# --- rebalancing ---------------------------------------------------------------------------

REBALANCE_MIN_READY = 2.0


async def rebalancing_fog(*names: str, **settings: object) -> World:
    """`names` ready; the last one cordoned until `open_node`, so replicas land elsewhere."""
    values: dict[str, object] = {"min_ready_seconds": REBALANCE_MIN_READY, **settings}
    f = await fog(*names, **values)
    cordon(f, names[-1], on=True)
    await f.nodes.refresh()
    return f


async def open_node(f: World, name: str) -> None:
    """Uncordon `name` and pass the opening on as the loop's heartbeat does."""
    cordon(f, name, on=False)
    await f.nodes.refresh()
    assert name in f.nodes.take_openings()
    f.reconciler.rebalance.opened(f.clock())


def cordon(f: World, name: str, *, on: bool) -> None:
    node_id = f.node_id(name)
    f.store.node_rows[node_id] = replace(f.store.node_rows[node_id], unschedulable=on)


def per_node(f: World, d: Deployment) -> dict[str, int]:
    counts: dict[str, int] = {}
    names = {r.id: r.name for r in f.store.node_rows.values()}
    for r in f.store.rows(d.id, RUNNING):
        assert r.node_id is not None
        counts[names[r.node_id]] = counts.get(names[r.node_id], 0) + 1
    return counts


async def start(f: World, *ds: Deployment) -> None:
    for _ in range(10):
        for d in ds:
            await f.reconcile(d)
        f.clock.advance(0.5)
    for d in ds:
        assert f.running(d) == d.target_replicas


async def run_until_quiet(f: World, *ds: Deployment, rounds: int = 60) -> list[dict[str, Any]]:
    """Reconcile each deployment every half second of fog time; never fewer replicas running
    than the target, and never more than one extra (one move in flight). Returns the logs."""
    with capture_logs() as logs:
        for _ in range(rounds):
            for d in ds:
                await f.reconcile(d)
                assert d.target_replicas <= f.running(d) <= d.target_replicas + 1
            f.clock.advance(0.5)
    return logs


async def test_an_opened_node_gets_its_share_one_move_at_a_time() -> None:
    f = await rebalancing_fog("n1", "n2", "n3")
    d = f.new(6)
    await start(f, d)
    assert per_node(f, d) == {"n1": 3, "n2": 3}
    metrics = Metrics()
    f.reconciler.rebalance.on_end = metrics.rebalance_move  # as the loop wires it
    await open_node(f, "n3")
    assert f.nodes.take_openings() == []  # once
    f.reconciler.rebalance.opened(f.clock())  # as the loop's heartbeat passes it on
    # The resync pass's triage (what a node's return kicks) finds the deployment.
    views = await f.reconciler.observe(f.nodes.reachable())
    loaded = await f.store.load_deployment(d.id)
    assert loaded is not None
    assert f.reconciler.triage([loaded], views) == [d.id]
    logs = await run_until_quiet(f, d)
    assert per_node(f, d) == {"n1": 2, "n2": 2, "n3": 2}
    moves = [e for e in logs if e["event"] == "rebalance_move"]
    assert [(e["from"], e["to"]) for e in moves] == [("n1", "n3"), ("n2", "n3")]
    assert all(e["deployment"] == d.name for e in moves)
    moves_metric = "fog_controller_rebalance_moves_total"
    assert metrics.registry.get_sample_value(moves_metric, {"result": "moved"}) == 2
    assert metrics.registry.get_sample_value(moves_metric, {"result": "abandoned"}) == 0
    assert [e["replica"] for e in moves] == [
        e["replica"] for e in logs if e["event"] == "rebalance_move_done"
    ]
    # One history row for the rebalance, and the moves themselves changed no status.
    reasons = f.reasons(d)
    assert reasons[-1] == "rebalanced: 2 replicas moved to n3"
    assert [r for r in reasons if r.startswith("rebalanced")] == [reasons[-1]]
    assert f.status(d) is DeploymentStatus.RUNNING
    assert f.statuses(d)[-2:] == [
        (DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING),
        (DeploymentStatus.RUNNING, DeploymentStatus.RUNNING),
    ]


@pytest.mark.parametrize(
    ("settings", "placement"),
    [
        pytest.param({"rebalance": False}, PlacementRules(), id="FOG_REBALANCE=false"),
        pytest.param({}, PlacementRules(rebalance=False), id="placement-rebalance-false"),
    ],
)
async def test_rebalance_off_moves_nothing(
    settings: dict[str, object], placement: PlacementRules
) -> None:
    f = await rebalancing_fog("n1", "n2", "n3", **settings)
    d = f.new(6, placement=placement)
    await start(f, d)
    await open_node(f, "n3")
    logs = await run_until_quiet(f, d, rounds=20)
    assert per_node(f, d) == {"n1": 3, "n2": 3}
    assert not [e for e in logs if e["event"].startswith("rebalance")]


async def test_fleet_wide_cap_holds_moves_in_flight() -> None:
    f = await rebalancing_fog("n1", "n2", "n3", rebalance_max_moves=1)
    a = f.new(4, id=uuid.UUID(int=11), name="a")
    b = f.new(4, id=uuid.UUID(int=12), name="b")
    await start(f, a, b)
    await open_node(f, "n3")
    in_flight = []
    with capture_logs():
        for _ in range(60):
            for d in (a, b):
                await f.reconcile(d)
                in_flight.append(f.reconciler.rebalance.in_flight)
            f.clock.advance(0.5)
    assert max(in_flight) == 1
    assert per_node(f, a)["n3"] == 1
    assert per_node(f, b)["n3"] == 1


async def test_cool_down_after_a_rebalance() -> None:
    f = await rebalancing_fog("n1", "n2", "n3", "n4", rebalance_cooldown_seconds=60.0)
    cordon(f, "n3", on=True)
    await f.nodes.refresh()
    d = f.new(6)
    await start(f, d)
    await open_node(f, "n3")
    await run_until_quiet(f, d)
    assert per_node(f, d) == {"n1": 2, "n2": 2, "n3": 2}
    # n4 opens within the cool-down: nothing moves until it has passed.
    await open_node(f, "n4")
    before = per_node(f, d)
    await run_until_quiet(f, d, rounds=20)
    assert per_node(f, d) == before
    f.clock.advance(60)
    await f.nodes.refresh()
    await run_until_quiet(f, d)
    assert sorted(per_node(f, d).values()) == [1, 1, 2, 2]
    assert [r for r in f.reasons(d) if r.startswith("rebalanced")] == [
        "rebalanced: 2 replicas moved to n3",
        "rebalanced: 1 replica moved to n4",
    ]


async def test_a_restart_mid_move_leaves_no_surplus() -> None:
    """The move lives in memory: a new controller finds one replica too many and the
    ordinary scale-down stops the one on the fuller node."""
    f = await rebalancing_fog("n1", "n2", "n3")
    d = f.new(6)
    await start(f, d)
    await open_node(f, "n3")
    with capture_logs():
        for _ in range(20):
            await f.reconcile(d)
            if len(f.store.rows(d.id, RUNNING)) == 7:
                break
            f.clock.advance(0.5)
    assert per_node(f, d) == {"n1": 3, "n2": 3, "n3": 1}
    f.clock.advance(REBALANCE_MIN_READY)
    settings = Settings(
        database_url="sqlite+aiosqlite:///unused.db",
        register_local_node=False,
        min_ready_seconds=REBALANCE_MIN_READY,
    )
    f.reconciler = Reconciler(f.store, f.runtime, f.nodes, settings, f.clock)
    f.reconciler.rebalance.enabled = False  # only the ordinary logic now
    await run_until_quiet(f, d, rounds=6)
    spread = per_node(f, d)
    assert spread["n3"] == 1
    assert sorted(spread.values()) == [1, 2, 3]


async def test_a_node_that_joins_or_returns_opens_for_placement() -> None:
    f = await fog("n1", "n2", node_grace_seconds=1.0)
    assert f.nodes.take_openings() == []  # the first refresh after start opens nothing
    # n2 stops answering past its grace (not ready), then answers again.
    f.runtime.set_down(hollow_url("n2"))
    f.clock.advance(2)
    await f.nodes.refresh()
    assert f.store.node_rows[f.node_id("n2")].status is NodeStatus.NOT_READY
    assert f.nodes.take_openings() == []
    f.runtime.set_down(hollow_url("n2"), down=False)
    await f.nodes.refresh()
    assert f.nodes.take_openings() == ["n2"]
    # A node added to the fog.
    f.runtime.add_node(hollow_url("n3"), HollowNode())
    n3 = f.node_id("n3")
    f.store.node_rows[n3] = NodeRecord(n3, "n3", hollow_url("n3"), NodeStatus.UNKNOWN, 8, 32768)
    await f.nodes.refresh()
    assert f.nodes.take_openings() == ["n3"]
    await f.nodes.refresh()
    assert f.nodes.take_openings() == []
    # An operator labels a node: a selector may match it now.
    f.store.node_rows[n3] = replace(f.store.node_rows[n3], labels=(("zone", "b"),))
    await f.nodes.refresh()
    assert f.nodes.take_openings() == ["n3"]


async def test_only_a_spread_made_before_a_node_opened_is_rebalanced() -> None:
    """Uneven spreads the scheduler leaves (here: a node uncordoned without the loop seeing
    it open, then a deployment placed while it was cordoned) are not churned; the opening
    is what owes a look, and only to deployments placed before it."""
    f = await rebalancing_fog("n1", "n2", "n3")
    d = f.new(6, id=uuid.UUID(int=21), name="before")
    await start(f, d)
    cordon(f, "n3", on=False)
    await f.nodes.refresh()
    f.nodes.take_openings()  # seen by nobody: no opening passed on
    logs = await run_until_quiet(f, d, rounds=10)
    assert per_node(f, d) == {"n1": 3, "n2": 3}
    assert not [e for e in logs if e["event"] == "rebalance_move"]
    # The opening is passed on: the deployment placed before it is owed a look and healed.
    f.reconciler.rebalance.opened(f.clock())
    f.clock.advance(0.5)
    after = f.new(2, id=uuid.UUID(int=22), name="after")
    await run_until_quiet(f, d)
    assert per_node(f, d) == {"n1": 2, "n2": 2, "n3": 2}
    # A deployment placed after the opening is not owed one, whatever its spread; after its
    # look a balanced deployment is not looked at again until the next opening.
    await start(f, after)
    for placed in (after, d):
        loaded = await f.store.load_deployment(placed.id)
        assert loaded is not None
        assert not f.reconciler.rebalance.owed(loaded)
