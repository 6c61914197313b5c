"""Volume purge: a deleted deployment's named volumes go from every node, and the request is
done only once every registered node answered; a node down keeps it pending. In-memory
store, hollow nodes."""

from __future__ import annotations

from controller.model import DeploymentStatus
from controller.purge import Purged, VolumePurge
from controller.runspec import RunSpec, VolumeSpec
from controller.runtime.hollow import hollow_url
from tests.unit.fog import Fog, fog

DATA = RunSpec(volumes=(VolumeSpec("/data", name="data"), VolumeSpec("/cache", name="cache")))


async def deleted_with_volumes(f: Fog) -> VolumePurge:
    d = f.new(2, run=DATA)
    await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.RUNNING
    f.clock.advance(1)
    f.edit(d, deleted_at=f.clock())
    await f.reconcile(d)
    assert f.runtime.count() == 0
    f.store.to_purge.add(d.id)
    return VolumePurge(f.store, f.runtime, lambda: f.nodes.records)


async def test_volumes_go_from_every_node_then_the_request_is_done() -> None:
    f = await fog("n1", "n2")
    purge = await deleted_with_volumes(f)
    assert await purge.run() == Purged(deployments=1, volumes=4, pending=0)
    assert f.store.to_purge == set()
    assert await purge.run() == Purged()


async def test_a_node_down_keeps_the_purge_pending_until_it_answers() -> None:
    f = await fog("n1", "n2")
    purge = await deleted_with_volumes(f)
    f.runtime.set_down(hollow_url("n2"))
    f.clock.advance(60)
    await f.nodes.refresh()  # n2 is not ready now
    assert await purge.run() == Purged(deployments=0, volumes=2, pending=1)
    assert f.store.to_purge  # still to do
    assert await purge.run() == Purged(deployments=0, volumes=0, pending=1)
    assert f.runtime.calls["remove_volumes"] == 1  # n1 is not asked again

    f.runtime.set_down(hollow_url("n2"), down=False)
    await f.nodes.refresh()
    assert await purge.run() == Purged(deployments=1, volumes=2, pending=0)
    assert f.store.to_purge == set()
