"""Pre-pull: before a rollout stops any old replica, its new image is pulled where the old
replicas stop; a pull that fails halts the rollout with every old replica serving; what was
pulled is not pulled again. The in-memory store, hollow nodes recording the order of pulls
and stops, one clock."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import datetime

import pytest

from controller.decide import Decision, prepull_nodes, without_rollout_stops
from controller.model import DeploymentStatus, NodeRecord, ReplicaStatus
from controller.plan import StopReplica
from controller.runspec import RegistryAuth, RunSpec
from controller.runtime.hollow import HollowRuntime
from tests.unit.factories import deployment, node, replica
from tests.unit.fog import Clock, Fog, fog

OLD, NEW = "fog-test/web:1", "fog-test/web:2"
NODES = ("n1", "n2", "n3")
BACKOFF_SECONDS = 10.0
REFUSED = "unauthorized: authentication required"


class Recording(HollowRuntime):
    """Hollow engines that keep one log of pulls and stops, in the order they happened."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.log: list[tuple[str, str]] = []

    async def pull(self, node: NodeRecord, image: str, auth: RegistryAuth | None) -> None:
        self.log.append(("pull", node.name))
        await super().pull(node, image, auth)

    async def stop(self, node: NodeRecord, container: str, timeout_seconds: float) -> None:
        self.log.append(("stop", node.name))
        await super().stop(node, container, timeout_seconds)


async def rolled_fog() -> tuple[Fog, Recording]:
    f = await fog(*NODES, runtime=Recording, crash_backoff_initial_seconds=BACKOFF_SECONDS)
    assert isinstance(f.runtime, Recording)
    return f, f.runtime


def old_replicas_running(f: Fog, d_id: uuid.UUID) -> int:
    d = f.store.deployments[d_id]
    return sum(1 for r in f.store.rows(d_id, ReplicaStatus.RUNNING) if d.outdated(r))


async def test_the_new_image_is_pulled_where_old_replicas_stop_before_any_stops() -> None:
    f, engines = await rolled_fog()
    d = f.new(10, image=OLD)
    await f.reconcile(d)
    assert f.running(d) == 10
    f.clock.advance(10)
    d = f.edit(d, image=NEW)
    await f.reconcile(d)
    stops = [i for i, (what, _) in enumerate(engines.log) if what == "stop"]
    assert stops, "the rollout stopped nothing"
    pulled_before = {name for what, name in engines.log[: stops[0]] if what == "pull"}
    stopped_on = {name for what, name in engines.log if what == "stop"}
    assert stopped_on <= pulled_before
    assert [image for _, image, _ in engines.pulls] == [NEW] * len(engines.pulls)


async def test_each_node_is_pulled_once_for_one_spec_however_many_passes() -> None:
    f, engines = await rolled_fog()
    d = f.new(10, image=OLD)
    await f.reconcile(d)
    f.clock.advance(10)
    d = f.edit(d, image=NEW)
    for _ in range(20):
        await f.reconcile(d)
        f.clock.advance(1)
    assert f.status(d) is DeploymentStatus.RUNNING
    assert old_replicas_running(f, d.id) == 0
    per_node = Counter(name for name, _, _ in engines.pulls)
    assert set(per_node) == set(NODES)
    assert max(per_node.values()) == 1
    # A new spec (an env change) is pulled for again.
    d = f.edit(d, run=RunSpec(env=(("SITE", "north"),)))
    await f.reconcile(d)
    assert max(Counter(name for name, _, _ in engines.pulls).values()) == 2


async def test_a_pull_that_fails_halts_the_rollout_with_every_old_replica_serving() -> None:
    f, engines = await rolled_fog()
    d = f.new(10, image=OLD)
    await f.reconcile(d)
    f.clock.advance(10)
    engines.refuse(NEW, REFUSED)
    d = f.edit(d, image=NEW)
    result = await f.reconcile(d)
    assert engines.calls["stop"] == 0
    assert old_replicas_running(f, d.id) == 10
    assert not f.store.rows(d.id, ReplicaStatus.STOPPING)
    reason = f.reasons(d)[-1]
    assert reason.startswith("10/10 replicas running; rollout halted: pull before stopping old ")
    assert f"image pull failed: {NEW}: {REFUSED}" in reason
    assert result.requeue_after == pytest.approx(BACKOFF_SECONDS, abs=0.1)

    # Within the backoff, no pull and no stop.
    pulls = engines.calls["pull"]
    f.clock.advance(BACKOFF_SECONDS / 2)
    await f.reconcile(d)
    assert (engines.calls["pull"], engines.calls["stop"]) == (pulls, 0)

    # The registry lets us in: after the backoff the rollout goes on and completes.
    engines.allow(NEW)
    f.clock.advance(BACKOFF_SECONDS)
    for _ in range(20):
        await f.reconcile(d)
        f.clock.advance(1)
    assert f.status(d) is DeploymentStatus.RUNNING
    assert old_replicas_running(f, d.id) == 0


def test_nodes_to_pull_are_those_of_the_old_replicas_stopping_and_new_ones_placed() -> None:
    a, b, c = node("a"), node("b"), node("c")
    old = [replica(ReplicaStatus.RUNNING, n, n=i) for i, n in enumerate((a, b))]
    d = deployment(2, *old, image=NEW)
    old = [replace(o, spec_hash="0123456789ab") for o in old]
    new = replace(replica(ReplicaStatus.STARTING, c, n=5), spec_hash=d.spec_hash)
    decision = Decision(stops=(StopReplica(old[0]),), ensure=(new,), actions=2)
    assert prepull_nodes(d, decision) == {a.id, c.id}
    # No old replica stops: nothing to pull ahead (a create pulls for itself).
    assert prepull_nodes(d, Decision(ensure=(new,), actions=1)) == frozenset()
    held = without_rollout_stops(d, decision)
    assert held.stops == ()
    assert held.actions == 1
    # A deletion's stops are not a rollout's.
    gone = deployment(2, *old, image=NEW, deleted_at=datetime(2026, 1, 2))
    assert prepull_nodes(gone, decision) == frozenset()
