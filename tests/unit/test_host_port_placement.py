"""Host ports as a node resource through the reconciler: the node monitor learns the ports
containers that are not ours hold, the placement cache the ports our replicas hold (assumed
placements included), and the refusal reads as kube-scheduler's. In-memory store, hollow
nodes, one clock."""

from __future__ import annotations

from collections import Counter

from controller.model import DeploymentStatus, ReplicaStatus
from controller.runspec import PortSpec, RunSpec
from controller.runtime.hollow import hollow_url
from tests.unit.fog import fog

WEB = RunSpec(ports=(PortSpec(8080, 18080),))
HOST = RunSpec(network="host", ports=(PortSpec(18080),))


async def test_ports_of_containers_not_ours_are_learned_each_probe_and_kept_when_unknown() -> None:
    f = await fog("n1", "n2")
    f.runtime.set_foreign_ports(hollow_url("n1"), frozenset({(18080, "tcp")}))
    await f.nodes.refresh()
    by_name = {n.name: n for n in f.nodes.snapshot()}
    assert by_name["n1"].foreign_ports == {(18080, "tcp")}
    assert by_name["n2"].foreign_ports == frozenset()
    f.runtime.set_down(hollow_url("n1"))
    await f.nodes.refresh()
    assert {n.name: n for n in f.nodes.snapshot()}["n1"].foreign_ports == {(18080, "tcp")}


async def test_replicas_holding_one_host_port_never_share_a_node_and_say_why() -> None:
    f = await fog("n1", "n2", "n3")
    f.runtime.set_foreign_ports(hollow_url("n3"), frozenset({(18080, "tcp")}))
    await f.nodes.refresh()
    d = f.new(3, run=WEB)
    await f.reconcile(d)
    rows = f.store.rows(d.id, ReplicaStatus.RUNNING)
    assert sorted(Counter(r.node_id for r in rows).values()) == [1, 1]
    assert f.node_id("n3") not in {r.node_id for r in rows}
    assert "0/3 nodes fit: 3 host port 18080/tcp in use" in f.reasons(d)[-1]

    # Another deployment on the host network binding 18080 itself: no node is free.
    other = f.new(1, id=f.node_id("other"), name="other", run=HOST)
    await f.reconcile(other)
    assert not f.store.rows(other.id, ReplicaStatus.RUNNING)
    assert (
        f.reasons(other)[-1] == "0/1 replicas running; 0/3 nodes fit: 3 host port 18080/tcp in use"
    )
    assert f.status(other) is DeploymentStatus.PENDING


async def test_a_stopped_replica_frees_its_port_for_another_deployment() -> None:
    f = await fog("n1")
    d = f.new(1, run=WEB)
    await f.reconcile(d)
    other = f.new(1, id=f.node_id("other"), name="other", run=HOST)
    await f.reconcile(other)
    assert not f.store.rows(other.id, ReplicaStatus.RUNNING)
    f.clock.advance(1)
    f.edit(d, target_replicas=0)
    await f.reconcile(d)
    f.clock.advance(1)  # a refusal re-reads what the store says is held
    await f.reconcile(other)
    assert len(f.store.rows(other.id, ReplicaStatus.RUNNING)) == 1
