"""The reconciler end to end without I/O: the in-memory store (tests/unit/memstore.py), the
hollow runtime and an injected clock. What is asserted is what an operator sees: replica
rows, status history, containers on the engines, and how often the store and the engines
were called."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from controller.model import (
    Deployment,
    DeploymentStatus,
    ReplicaStatus,
)
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
