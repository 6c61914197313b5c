"""The reconciler against real PostgreSQL / SQLite and three real Docker engines."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.loop import Controller
from controller.readmodel import RUN_TABLES
from controller.runtime.docker import DockerRuntime
from controller.store import Store
from schema.engine import create_engine
from tests.harness.engines import API_VERSION, Cluster, build_image
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    fleet_of,
    managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.integration.kinds import over_engine_kinds

pytestmark = pytest.mark.docker


@pytest.fixture
async def fleet(
    db_url: str, engine: AsyncEngine, kind_cluster: Cluster
) -> AsyncIterator[tuple[Operator, list[str], uuid.UUID]]:
    """Three nodes of the test's engine kind (the default Docker engines unless the test is
    one of the core cases, `over_engine_kinds`)."""
    async with fleet_of(engine, list(kind_cluster.urls)) as made:
        yield made


def _api(url: str) -> docker.APIClient:
    return docker.APIClient(base_url=url, version=API_VERSION, timeout=30)


@over_engine_kinds
async def test_scale_up_down_to_zero_with_history(
    db_url: str, fleet: Any, kind_settings: dict[str, Any]
) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url, **kind_settings)):
        # The spread below needs every node ready before placement (a first probe of a Podman
        # node takes ~0.4 s; on a busy machine it may miss its heartbeat).
        await eventually(lambda: _equals(op.node_statuses(), ["ready"] * len(urls)))
        d = await op.add_deployment(user, "web", replicas=5)
        await eventually(lambda: converged(op, urls, d, 5))
        assert await eventually(lambda: _equals(op.status(d), "running"))
        # Spread over the three nodes: 2/2/1.
        per_node = sorted(
            [sum(1 for s in managed_containers(urls, d) if s.engine_url == u) for u in urls]
        )
        assert per_node == [1, 2, 2]

        await op.scale(d, 2)
        await eventually(lambda: converged(op, urls, d, 2))
        stopped = await op.replicas(d, "stopped")
        assert len(stopped) == 3
        assert all(r["stopped_at"] is not None for r in stopped)

        await op.scale(d, 0)
        await eventually(lambda: converged(op, urls, d, 0))
        assert await eventually(lambda: _equals(op.status(d), "stopped"))

    transitions = [(h["old_status"], h["new_status"]) for h in await op.history(d)]
    assert transitions[0] == ("pending", "scheduled")
    assert ("scheduled", "running") in transitions
    assert transitions[-1][1] == "stopped"
    # Only changes are recorded, never the same status twice in a row without a new reason.
    assert all(h["changed_by"] is None and h["reason"] for h in await op.history(d))


async def _equals(value: Any, expected: Any) -> bool:
    got = await value
    assert got == expected, f"{got!r} != {expected!r}"
    return True


async def test_soft_delete_stops_everything_and_keeps_rows(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "doomed", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))
        await op.soft_delete(d)
        await eventually(lambda: _equals(op.status(d), "deleted"))
        assert managed_containers(urls, d) == []
        assert len(await op.replicas(d, "stopped")) == 3
        # The name is free again for a new live deployment.
        again = await op.add_deployment(user, "doomed", replicas=1)
        await eventually(lambda: converged(op, urls, again, 1))


@over_engine_kinds
async def test_removed_container_is_replaced(
    db_url: str, fleet: Any, kind_settings: dict[str, Any]
) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url, **kind_settings)):
        d = await op.add_deployment(user, "repair", replicas=2)
        await eventually(lambda: converged(op, urls, d, 2))
        victim = managed_containers(urls, d)[0]
        api = _api(victim.engine_url)
        try:
            api.remove_container(victim.id, force=True)
        finally:
            api.close()
        await eventually(lambda: converged(op, urls, d, 2))
        assert victim.replica_id not in {s.replica_id for s in managed_containers(urls, d)}
        failed = await op.replicas(d, "failed")
        assert [str(r["id"]) for r in failed] == [victim.replica_id]


@over_engine_kinds
async def test_restarted_controller_adopts_running_containers(
    db_url: str, fleet: Any, kind_settings: dict[str, Any]
) -> None:
    """A controller stopped at rest and started again takes over what its predecessor left:
    the same containers, never restarted, the same rows, no new history."""
    op, urls, user = fleet
    settings = settings_for_tests(db_url, **kind_settings)
    async with running_controller(settings):
        d = await op.add_deployment(user, "adopted", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))
        assert await eventually(lambda: _equals(op.status(d), "running"))
    before = {(s.engine_url, s.id) for s in managed_containers(urls, d)}
    started_at = {c: _started_at(url, c) for url, c in before}
    rows_before = await op.replicas(d)
    history_before = await op.history(d)

    async with running_controller(settings) as again:
        passes = again.passes
        # Three full passes over the engines, each of which would have acted on anything it
        # did not recognise as its own.
        await eventually(lambda: _at_least(again, passes + 3))
        assert await converged(op, urls, d, 3)
    assert {(s.engine_url, s.id) for s in managed_containers(urls, d)} == before
    for url, c in before:
        assert _started_at(url, c) == started_at[c]
    assert await op.replicas(d) == rows_before
    assert await op.history(d) == history_before
    assert await op.status(d) == "running"


async def _at_least(controller: Controller, passes: int) -> bool:
    return controller.passes >= passes


def _started_at(url: str, container: str) -> str:
    api = _api(url)
    try:
        return str(api.inspect_container(container)["State"]["StartedAt"])
    finally:
        api.close()


async def test_stopped_by_hand_is_replaced(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "handstop", replicas=1)
        await eventually(lambda: converged(op, urls, d, 1))
        victim = managed_containers(urls, d)[0]
        api = _api(victim.engine_url)
        try:
            api.stop(victim.id, timeout=1)
        finally:
            api.close()
        await eventually(lambda: converged(op, urls, d, 1))
        assert victim.replica_id not in {s.replica_id for s in managed_containers(urls, d)}


async def test_labelled_orphan_is_removed(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "owner", replicas=1)
        await eventually(lambda: converged(op, urls, d, 1))
        api = _api(urls[1])
        try:
            orphan = api.create_container(
                "fog-test/busybox:latest",
                name=f"fog-{uuid.uuid4()}",
                labels={
                    "fog.managed-by": "fog-controller",
                    "fog.deployment-id": str(d),
                    "fog.replica-id": str(uuid.uuid4()),
                },
            )
            api.start(orphan["Id"])
            stranger = api.create_container("fog-test/busybox:latest", name=f"x-{uuid.uuid4()}")
        finally:
            api.close()

        async def orphan_gone() -> bool:
            return orphan["Id"] not in {s.id for s in managed_containers(urls)}

        await eventually(orphan_gone)
        await eventually(lambda: converged(op, urls, d, 1))
        api = _api(urls[1])
        try:  # a container without our labels is never touched
            assert api.inspect_container(stranger["Id"])["Id"] == stranger["Id"]
            api.remove_container(stranger["Id"], force=True)
        finally:
            api.close()


async def test_missing_image_fails_while_another_converges(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    settings = settings_for_tests(db_url, progress_deadline_seconds=3.0)
    async with running_controller(settings):
        bad = await op.add_deployment(user, "bad", image="fog-test/does-not-exist:1", replicas=3)
        good = await op.add_deployment(user, "good", replicas=3)
        await eventually(lambda: converged(op, urls, good, 3))
        await eventually(lambda: _equals(op.status(bad), "failed"), within=40)
        reasons = [h["reason"] for h in await op.history(bad)]
        assert any("image pull failed" in r and "does-not-exist" in r for r in reasons), reasons
        failed = await op.replicas(bad, "failed")
        # Slow start and backoff: a handful of attempts, not one per replica per pass.
        assert 1 <= len(failed) <= 6, len(failed)
        assert managed_containers(urls, bad) == []
        assert await op.status(good) == "running"


async def test_container_settings_match_the_deployment(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "inspect", replicas=1, cpu_cores=1.5, memory_mb=768)
        await eventually(lambda: converged(op, urls, d, 1))
        seen = managed_containers(urls, d)[0]
        api = _api(seen.engine_url)
        try:
            info = api.inspect_container(seen.id)
        finally:
            api.close()
    host = info["HostConfig"]
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == 768 * 1024 * 1024
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 1024
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    labels = info["Config"]["Labels"]
    assert labels["fog.managed-by"] == "fog-controller"
    assert labels["fog.deployment-id"] == str(d)
    assert info["Name"] == f"/fog-{labels['fog.replica-id']}"


async def test_storage_limit_on_a_node_that_cannot_cap_disk_is_monitored(
    db_url: str, fleet: Any
) -> None:
    """These engines' overlay2 on ext4 cannot cap a container's disk (`docker info` says
    extfs): the nodes are `monitored`, containers run without a size limit and carry their
    replica's storage_gb for the storage monitor to hold them to."""
    op, urls, user = fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "disk", replicas=2, storage_gb=5)
        await eventually(lambda: converged(op, urls, d, 2))
        rows = await _node_facts(op)
    assert {r["storage_driver"] for r in rows} == {"overlay2"}
    assert {r["storage_limits"] for r in rows} == {"monitored"}
    assert {r["engine_version"] for r in rows} != {None}
    for seen in managed_containers(urls, d):
        info = _api(seen.engine_url).inspect_container(seen.id)
        assert not info["HostConfig"].get("StorageOpt"), info["HostConfig"].get("StorageOpt")
        assert info["Config"]["Labels"]["fog.storage-gb"] == "5"


async def _node_facts(op: Operator) -> list[Any]:
    from controller.readmodel import NODES

    async with op.engine.connect() as conn:
        query = NODES.select().order_by(NODES.c.name)
        return [r._mapping for r in (await conn.execute(query)).all()]


async def test_a_node_that_keeps_refusing_is_passed_over_with_its_words(
    db_url: str, fleet: Any, cluster: Cluster
) -> None:
    """The image is on node-2 only, under a registry nobody serves: node-0 and node-1 refuse
    every start ("image pull failed"). Their capacities make the scheduler prefer node-0,
    then node-1, however many replicas each has taken. After five identical refusals each
    is passed over, the replica runs on node-2, and the history says which nodes refused,
    in their words."""
    op, urls, user = fleet
    from controller.readmodel import NODES

    async with op.engine.begin() as conn:
        for name, cpu, memory in (("node-0", 1000, 10**7), ("node-1", 100, 10**6)):
            await conn.execute(
                NODES.update().where(NODES.c.name == name).values(cpu_cores=cpu, memory_mb=memory)
            )
        await conn.execute(
            NODES.update().where(NODES.c.name == "node-2").values(cpu_cores=2, memory_mb=2048)
        )
    image = "127.0.0.1:9/fog-test/only-on-node-2:1"
    build_image(cluster.engines[2], image, ["sh", "-c", "exec sleep 3600"])
    settings = settings_for_tests(
        db_url, crash_backoff_initial_seconds=0.1, crash_backoff_max_seconds=0.5
    )
    try:
        async with running_controller(settings):
            d = await op.add_deployment(
                user, "picky", image=image, replicas=1, cpu_cores=0.5, memory_mb=512
            )
            await eventually(lambda: converged(op, urls, d, 1), within=90)
            [seen] = managed_containers(urls, d)
            assert seen.engine_url == urls[2]
            reasons = [h["reason"] for h in await op.history(d)]
        for refused in ("node-0", "node-1"):
            words = [r for r in reasons if f"node {refused} refused" in r]
            assert any("refused 5 times" in r and "trying other nodes" in r for r in words), reasons
            assert all(
                "image pull failed: 127.0.0.1:9/fog-test/only-on-node-2:1" in r for r in words
            )
        assert len(await op.replicas(d, "failed")) == 2 * 5
    finally:
        cluster.engines[2].client().images.remove(image, force=True)


async def test_gpu_request_on_node_without_driver_fails_clearly(db_url: str, fleet: Any) -> None:
    op, urls, user = fleet
    async with op.engine.begin() as conn:
        from controller.readmodel import NODES

        await conn.execute(NODES.update().where(NODES.c.name == "node-0").values(gpu_units=2))
    settings = settings_for_tests(db_url, progress_deadline_seconds=2.0)
    async with running_controller(settings):
        d = await op.add_deployment(user, "gpu", replicas=1, gpu_units=1)
        await eventually(lambda: _equals(op.status(d), "failed"), within=40)
        reasons = " ".join(h["reason"] for h in await op.history(d))
        assert "could not select device driver" in reasons
        assert managed_containers(urls, d) == []


async def test_unschedulable_reason(db_url: str, fleet: Any) -> None:
    op, _, user = fleet
    async with op.engine.begin() as conn:
        from controller.readmodel import NODES

        await conn.execute(NODES.update().values(memory_mb=1024))
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "big", replicas=4, memory_mb=1024)

        async def reason() -> bool:
            rows = await op.history(d)
            assert rows
            assert "0/3 nodes fit: 3 insufficient memory" in rows[-1]["reason"]
            return True

        await eventually(reason)
        assert len(await op.replicas(d, "running")) == 3
        assert len(await op.replicas(d, "pending")) == 1


async def test_crash_loop_is_reported_not_replaced(
    db_url: str, fleet: Any, cluster: Cluster
) -> None:
    """Restarts are the engine's job: the replica keeps its container, the reason says why."""
    op, urls, user = fleet
    for e in cluster.engines:
        build_image(e, "fog-test/crash:3", ["sh", "-c", "exit 3"])
    settings = settings_for_tests(db_url, progress_deadline_seconds=4.0)
    async with running_controller(settings):
        d = await op.add_deployment(user, "crashy", image="fog-test/crash:3", replicas=1)
        await eventually(lambda: _equals(op.status(d), "failed"), within=40)
        reasons = [h["reason"] for h in await op.history(d)]
        crash = [r for r in reasons if "crash loop: replica" in r]
        assert crash, reasons
        assert re.search(r"restarted \d+ times, last exit code 3", crash[-1]), crash
        # The same replica, its container restarted in place by the engine: no replacement.
        assert await op.replicas(d, "failed") == []
        [seen] = managed_containers(urls, d)
        assert seen.state in ("restarting", "running")


async def test_resync_remembers_converged_deployments_but_not_past_a_change(
    db_url: str, fleet: Any
) -> None:
    """The resync pass skips re-planning a deployment judged converged whose rows, nodes and
    containers are unchanged; a container stopped by hand is still found by the next pass.
    Driven pass by pass (no workers, no event streams) so nothing repairs it first."""
    op, urls, user = fleet
    settings = settings_for_tests(db_url)
    store = Store(create_engine(db_url))
    runtime = DockerRuntime(settings)
    controller = Controller(settings, store, runtime)
    try:

        async def settle(d: uuid.UUID) -> None:
            """Reconcile by hand until converged (an exit is judged after the exit grace)."""
            for _ in range(60):
                await controller.reconciler.reconcile(d)
                if await converged(op, urls, d, 2) and await op.status(d) == "running":
                    return
                await asyncio.sleep(0.25)
            raise AssertionError(f"{d} did not converge")

        await controller.nodes.refresh()
        steady = await op.add_deployment(user, "steady", replicas=2)
        touched = await op.add_deployment(user, "touched", replicas=2)
        for d in (steady, touched):
            await settle(d)
        assert await controller.resync() == 0  # judged converged...
        with capture_logs() as logs:
            assert await controller.resync() == 0  # ...and remembered
        if store.engine.dialect.name == "postgresql":  # rows come from the store's snapshot
            assert _replanned(logs) == 0

        victim = managed_containers(urls, touched)[0]
        await asyncio.to_thread(_api(victim.engine_url).stop, victim.id, timeout=0)
        with capture_logs() as logs:
            assert await controller.resync() == 1
        assert _replanned(logs) >= 1
        await settle(touched)  # the repair
        assert await controller.resync() == 0
    finally:
        await runtime.close()
        await store.close()


async def test_a_new_deployment_is_loaded_once_per_reconcile(db_url: str, fleet: Any) -> None:
    """Wake-up to Docker calls for a new deployment of 3 replicas: one deployment load (the
    status after acting comes from what the actions changed, not from reading it again),
    one read of node usage for the scheduler, and every replica started in that reconcile."""
    op, _urls, user = fleet
    settings = settings_for_tests(db_url)
    store = Store(create_engine(db_url))
    runtime = DockerRuntime(settings)
    controller = Controller(settings, store, runtime)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    try:
        await controller.nodes.refresh()
        d = await op.add_deployment(user, "counted", replicas=3)
        event.listen(store.engine.sync_engine, "before_cursor_execute", record)
        try:
            await controller.reconciler.reconcile(d)
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", record)
        loads = [s for s in statements if s.startswith("SELECT") and "FROM DEPLOYMENTS " in s]
        assert len(loads) == 1, loads
        selects = [s for s in statements if s.startswith("SELECT")]
        # The load's three queries and one per spec table, usage, (fencing).
        assert len(selects) <= 3 + len(RUN_TABLES) + 2, selects
        assert await op.status(d) == "running"
        assert len(await op.replicas(d, "running")) == 3
    finally:
        await runtime.close()
        await store.close()


async def test_the_resync_pass_removes_a_container_of_no_deployment(
    db_url: str, fleet: Any
) -> None:
    """A labelled container whose deployment is not in the database is removed by the
    resync pass (through the executor the reconciler uses), and said at info; a pass with
    nothing to do says so at debug only."""
    _op, urls, _user = fleet
    settings = settings_for_tests(db_url)
    store = Store(create_engine(db_url))
    runtime = DockerRuntime(settings)
    controller = Controller(settings, store, runtime)
    api = _api(urls[0])
    try:
        await controller.nodes.refresh()
        stray = api.create_container(
            "fog-test/busybox:latest",
            name=f"fog-{uuid.uuid4()}",
            labels={
                "fog.managed-by": "fog-controller",
                "fog.deployment-id": str(uuid.uuid4()),
                "fog.replica-id": str(uuid.uuid4()),
            },
        )
        api.start(stray["Id"])
        with capture_logs() as logs:
            await controller.resync()
        assert stray["Id"] not in {s.id for s in managed_containers(urls)}
        [removed] = [e for e in logs if e["event"] == "container_removed"]
        assert removed["why"] == "no deployment"
        [done] = [e for e in logs if e["event"] == "resync_done"]
        assert (done["log_level"], done["strays_removed"]) == ("info", 1)

        with capture_logs() as logs:
            await controller.resync()
        [idle] = [e for e in logs if e["event"] == "resync_done"]
        assert (idle["log_level"], idle["enqueued"], idle["strays_removed"]) == ("debug", 0, 0)
    finally:
        api.close()
        await runtime.close()
        await store.close()


def _replanned(logs: list[dict[str, Any]]) -> int:
    """How many deployments the resync pass in `logs` planned (it logs one `resync_done`)."""
    [done] = [e for e in logs if e["event"] == "resync_done"]
    return int(done["replanned"])
