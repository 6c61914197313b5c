"""The fault suite: the daemon as a process on PostgreSQL and three real engines, hit by what
production hits it with, and judged each time by one yardstick, `assert_invariants`
(tests/e2e/daemon.py): per deployment exactly `target_replicas` running rows and containers,
no container without a live row, no live row without a container, and a status history that
accounts for every status change.

What is deliberately elsewhere: the daemon's CLI, SIGTERM, a single SIGKILL sequence during
scaling and bad image references (test_daemon.py); PostgreSQL restarts and two controllers
(test_ha.py); the container security options (tests/integration/test_reconciler.py inspects
no-new-privileges, the pids limit and the CPU/memory limits of a managed container).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import docker
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

from tests.e2e.daemon import (
    LABEL_DEPLOYMENT,
    LABEL_REPLICA,
    Daemon,
    Daemons,
    Sql,
    assert_invariants,
    labelled_containers,
    settle,
)
from tests.harness.engines import API_VERSION, DEFAULT_CMD, TEST_IMAGE, Cluster, build_image

pytestmark = pytest.mark.docker

ALT_IMAGE = "fog-test/busybox-alt:latest"
SEED_ENV = "FOG_FAULT_SEED"


# --- helpers --------------------------------------------------------------------------------


async def add_nodes(
    sql: Sql, urls: Iterable[str], *, cpu_cores: float, memory_mb: int
) -> dict[uuid.UUID, str]:
    """One node per engine with an explicit capacity (the engines' own would allow only a
    dozen 0.5-core replicas on this machine)."""
    nodes = {uuid.uuid4(): url for url in urls}
    await sql.execute(
        *(
            (
                "INSERT INTO nodes (id, name, docker_url, cpu_cores, memory_mb) "
                "VALUES (:id, :name, :url, :cpu, :memory)",
                {
                    "id": sql.uid(nid),
                    "name": f"node-{i}",
                    "url": url,
                    "cpu": cpu_cores,
                    "memory": memory_mb,
                },
            )
            for i, (nid, url) in enumerate(nodes.items())
        )
    )
    return nodes


async def soft_delete(sql: Sql, deployment: uuid.UUID) -> None:
    await sql.execute(
        (
            "UPDATE deployments SET deleted_at = CURRENT_TIMESTAMP WHERE id = :id",
            {"id": sql.uid(deployment)},
        )
    )


async def set_image(sql: Sql, deployment: uuid.UUID, image: str) -> None:
    await sql.execute(
        (
            "UPDATE deployments SET container_image = :image WHERE id = :id",
            {"image": image, "id": sql.uid(deployment)},
        )
    )


def _docker(url: str) -> docker.APIClient:
    return docker.APIClient(base_url=url, version=API_VERSION, timeout=30)


def _remove(url: str, container: str) -> None:
    client = _docker(url)
    try:
        client.remove_container(container, force=True)
    finally:
        client.close()


def _stop(url: str, container: str) -> None:
    client = _docker(url)
    try:
        client.stop(container, timeout=2)
    finally:
        client.close()


def _run_labelled(url: str, labels: dict[str, str]) -> str:
    client = _docker(url)
    try:
        created = client.create_container(
            TEST_IMAGE, labels=labels, name=f"intruder-{uuid.uuid4()}"
        )
        client.start(created["Id"])
        return str(created["Id"])
    finally:
        client.close()


def _exists(url: str, container: str) -> bool:
    client = _docker(url)
    try:
        client.inspect_container(container)
        return True
    except docker.errors.NotFound:
        return False
    finally:
        client.close()


def _seed() -> int:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"{SEED_ENV}={seed}")
    return seed


# --- 1. SIGKILL at ten and more random points -------------------------------------------------

# Events after whose k-th new occurrence (k random) a daemon is killed, by the kind of work
# under way: with `resync_done` the kill may fall before the edit is acted on, with the
# others in the middle of the work.
KILL_EVENTS = {
    "up": ("resync_done", "replicas_created", "replica_started", "deployment_status_changed"),
    "down": ("resync_done", "replica_stopping", "replica_stopped", "deployment_status_changed"),
}
KILL_EVENTS["delete"] = KILL_EVENTS["down"]
KILL_POINTS = 10


@dataclass
class KillLog:
    points: list[str] = field(default_factory=list)
    mid_operation: dict[str, int] = field(default_factory=dict)


async def kill_at_random_point(
    daemon: Daemon,
    rng: random.Random,
    sql: Sql,
    urls: list[str],
    kills: KillLog,
    kind: str,
    label: str,
    delta: int,
) -> None:
    """SIGKILL `daemon` after the k-th `event` it logs from now on, or as soon as nothing is
    left to interrupt (the system already satisfies the invariants). k is drawn from what the
    operation can produce: one status change, a couple of passes, a replica event per replica
    added or removed (`delta`)."""
    event = rng.choice(KILL_EVENTS[kind])
    most = {"deployment_status_changed": 1, "resync_done": 2, "replicas_created": 1}
    count = rng.randint(1, most.get(event, max(1, min(3, delta))))
    baseline = len(daemon.log().named(event))
    settled = False

    async def reached() -> bool:
        nonlocal settled
        if len(daemon.log().named(event)) >= baseline + count:
            return True
        try:
            await assert_invariants(sql, urls)
        except AssertionError:
            return False
        settled = True
        return True

    await daemon.until(reached, within=30, what=f"kill point {event} x{count}")
    daemon.kill()
    if not settled:
        kills.mid_operation[kind] = kills.mid_operation.get(kind, 0) + 1
    kills.points.append(f"{label}: {event} x{count}{' (at rest)' if settled else ''}")


async def test_sigkill_at_random_points_during_scale_up_down_and_delete(
    pg_sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    """Operations (scale up, scale down, soft delete, in a seeded random order), each
    interrupted by SIGKILL at a random point and sometimes again right after the restart,
    until at least ten kills fell in the middle of the work (a kill that finds the work done
    does not count and is printed "at rest") and each kind of operation had one; after each
    operation the next daemon converges and the invariants hold."""
    seed = _seed()
    rng = random.Random(seed)
    sql = pg_sql
    env = {"FOG_DATABASE_URL": sql.url}
    user = await sql.add_user()
    await add_nodes(sql, engines, cpu_cores=16, memory_mb=65536)
    await sql.add_deployment(user, "bystander", TEST_IMAGE, 2)
    daemon = daemons.start(**env)
    await settle(daemon, sql, engines, what="bystander running")

    current: uuid.UUID | None = None
    target = generation = operations = 0
    kills = KillLog()
    while sum(kills.mid_operation.values()) < KILL_POINTS or len(kills.mid_operation) < 3:
        operations += 1
        assert operations <= 25, f"too few kills landed mid-operation: {kills} (seed {seed})"
        before = target
        kind = rng.choice(("up", "up", "down", "down", "delete"))
        # Enough kills landed but a kind had none yet: steer the walk to it, so a seed that
        # rarely draws "delete" still ends within the bound below.
        missing = [k for k in ("up", "down", "delete") if k not in kills.mid_operation]
        if sum(kills.mid_operation.values()) >= KILL_POINTS and missing:
            kind = rng.choice(missing)
        if current is None:
            kind, generation, target = "up", generation + 1, rng.randint(5, 10)
            label = f"create victim-{generation} with {target}"
            current = await sql.add_deployment(user, f"victim-{generation}", TEST_IMAGE, target)
        elif kind == "delete":
            label = f"soft delete at {target}"
            await soft_delete(sql, current)
            current, target = None, 0
        else:
            if kind == "up" and target > 7:
                kind = "down"
            elif kind == "down" and target < 4:
                kind = "up"
            new = rng.randint(target + 3, 10) if kind == "up" else rng.randint(0, target - 3)
            label, target = f"scale {target}->{new}", new
            await sql.scale(current, target)
        for _ in range(rng.choice((1, 1, 1, 2))):
            await kill_at_random_point(
                daemon, rng, sql, engines, kills, kind, label, abs(target - before)
            )
            daemon = daemons.start(**env)
        await settle(daemon, sql, engines, what=f"after {label} (seed {seed})")

    print(f"seed {seed}: {len(kills.points)} kills, mid-operation {kills.mid_operation}")
    print("\n".join(kills.points))
    for each in daemons.started:
        each.assert_clean_log()


# --- 2. engines stopped under the daemon ----------------------------------------------------


async def test_engine_stop_restart_and_all_engines_down_at_once(
    pg_sql: Sql, engines: list[str], daemons: Daemons, cluster: Cluster
) -> None:
    sql = pg_sql
    user = await sql.add_user()
    await add_nodes(sql, engines, cpu_cores=16, memory_mb=65536)
    d = await sql.add_deployment(user, "roamer", TEST_IMAGE, 6)
    daemon = daemons.start(
        FOG_DATABASE_URL=sql.url,
        FOG_NODE_GRACE_SECONDS="1.5",
        FOG_EVICTION_SECONDS="1.5",
        FOG_EVICTION_INTERVAL_SECONDS="1",
    )
    try:
        await settle(daemon, sql, engines, what="6 running")

        # One engine stops: its node turns not-ready, is evicted after grace + eviction, and
        # its replicas are replaced on the two others; when it comes back, its old
        # containers are leftovers to remove.
        victim = cluster.engine(engines[0])
        await asyncio.to_thread(victim.stop)
        await daemon.wait_event("node_evicted", within=30, node="node-0")
        await settle(daemon, sql, engines[1:], what="6 running on the two others")
        await asyncio.to_thread(victim.start)
        await settle(daemon, sql, engines, what="node-0 back, its leftovers removed")

        # Every engine stops at once: a full disruption. Eviction halts, and nothing fails.
        failed_before = len(await sql.replicas(d, "failed"))
        evicted_before = len(daemon.log().named("node_evicted"))
        for engine in cluster.engines:
            engine.request_stop()
        for engine in cluster.engines:
            await asyncio.to_thread(engine.wait_stopped)

        async def all_not_ready() -> bool:
            rows = await sql.rows("SELECT status FROM nodes")
            assert {r["status"] for r in rows} == {"not_ready"}, rows
            return True

        await daemon.until(all_not_ready, within=20, what="3 nodes not ready")
        await daemon.wait_event("eviction_halted", within=20)
        # Past grace + eviction for every node: they would all be lost were it not halted.
        halted = len(daemon.log().named("resync_done"))
        await daemon.wait_event("resync_done", count=halted + 8, within=30)
        assert len(await sql.replicas(d, "failed")) == failed_before, "replicas failed"
        assert len(daemon.log().named("node_evicted")) == evicted_before, "eviction storm"

        # All at once again (spawn, then wait for every one), as after a power cut.
        for engine in cluster.engines:
            engine.spawn()
        for engine in cluster.engines:
            await asyncio.to_thread(engine.wait_ready)
        # On the way back the engines answer one heartbeat apart at worst: eviction clocks
        # restart when the disruption ends, so none of them is evicted as a straggler.
        await settle(daemon, sql, engines, what="all engines back")
        assert len(await sql.replicas(d, "failed")) == failed_before, "replicas failed"
        assert len(daemon.log().named("node_evicted")) == evicted_before, "eviction storm"
        daemon.assert_alive()
    finally:
        await asyncio.to_thread(cluster.ensure_running)


# --- 3. out-of-band changes -------------------------------------------------------------------


async def test_out_of_band_changes_are_repaired(
    pg_sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    sql = pg_sql
    user = await sql.add_user()
    nodes = await add_nodes(sql, engines, cpu_cores=16, memory_mb=65536)
    d = await sql.add_deployment(user, "meddled", TEST_IMAGE, 4)
    daemon = daemons.start(FOG_DATABASE_URL=sql.url)
    await settle(daemon, sql, engines, what="4 running")

    async def a_running_replica() -> tuple[uuid.UUID, str, str]:
        row = (await sql.replicas(d, "running"))[0]
        return row["id"], nodes[row["node_id"]], str(row["container_id"])

    # A container removed by hand: replaced.
    rid, url, container = await a_running_replica()
    await asyncio.to_thread(_remove, url, container)
    await settle(daemon, sql, engines, what="after docker rm -f")

    # A container stopped by hand: started again or replaced.
    rid, url, container = await a_running_replica()
    await asyncio.to_thread(_stop, url, container)
    await settle(daemon, sql, engines, what="after docker stop")

    # Containers started by hand with our labels: one for a replica id that does not exist,
    # one for a deployment that does not exist. Both are removed.
    intruders = [
        (
            engines[1],
            await asyncio.to_thread(
                _run_labelled,
                engines[1],
                {
                    "fog.managed-by": "fog-controller",
                    LABEL_DEPLOYMENT: str(d),
                    LABEL_REPLICA: str(uuid.uuid4()),
                },
            ),
        ),
        (
            engines[2],
            await asyncio.to_thread(
                _run_labelled,
                engines[2],
                {
                    "fog.managed-by": "fog-controller",
                    LABEL_DEPLOYMENT: str(uuid.uuid4()),
                    LABEL_REPLICA: str(uuid.uuid4()),
                },
            ),
        ),
    ]
    await settle(daemon, sql, engines, what="after labelled containers by hand")
    for url, container in intruders:
        assert not await asyncio.to_thread(_exists, url, container), container

    # A running replica's row deleted by hand: its container is an orphan (removed) and a
    # replacement is made.
    rid, url, container = await a_running_replica()
    await sql.execute(("DELETE FROM deployment_replicas WHERE id = :id", {"id": sql.uid(rid)}))
    await settle(daemon, sql, engines, what="after DELETE of a running replica row")
    assert not await asyncio.to_thread(_exists, url, container), "orphan left running"

    # A running replica's row edited back to pending (node and container kept).
    rid, url, container = await a_running_replica()
    await sql.execute(
        (
            "UPDATE deployment_replicas SET status = 'pending' WHERE id = :id",
            {"id": sql.uid(rid)},
        )
    )
    await settle(daemon, sql, engines, what="after a running row set to pending")
    daemon.assert_alive()


# --- 4. bad operator input --------------------------------------------------------------------


async def test_bad_operator_input_is_contained(
    pg_sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    sql = pg_sql
    burst = 20
    alice, bob = await sql.add_user("alice"), await sql.add_user("bob")
    # A small cluster: twelve 0.5-core replicas in all.
    await add_nodes(sql, engines, cpu_cores=2, memory_mb=8192)
    daemon = daemons.start(FOG_DATABASE_URL=sql.url, FOG_REPLICA_BURST=str(burst))
    await daemon.wait_event("controller_started", nodes=3)

    # A name with spaces and unicode works like any other.
    odd = await sql.add_deployment(alice, "my wéb app ✓ 日本語", TEST_IMAGE, 2)
    # Bob's deployment, soon orphaned by deleting Bob.
    bobs = await sql.add_deployment(bob, "bobs", TEST_IMAGE, 2)
    await settle(daemon, sql, engines, what="unicode name and bob's deployment running")

    # Resources out of range: the database refuses the insert (the deployment row with it).
    for bad in ({"cpu_cores": 0.1}, {"cpu_cores": 1000.0}, {"memory_mb": 1}, {"storage_gb": 0}):
        with pytest.raises(IntegrityError):
            await sql.add_deployment(alice, f"bad {bad}", TEST_IMAGE, 1, **bad)
    assert not await sql.rows("SELECT id FROM deployments WHERE name LIKE 'bad %'")

    # 100,000 replicas on a cluster that fits 8 more: the free capacity is filled, at most
    # `burst` unplaced rows wait, and the reason says why.
    huge = await sql.add_deployment(alice, "huge", TEST_IMAGE, 100_000)

    async def unschedulable() -> bool:
        reasons = [str(h["reason"]) for h in await sql.history(huge)]
        assert any("0/3 nodes fit" in r for r in reasons), reasons
        return True

    await daemon.until(unschedulable, within=30, what="a 0/3 nodes fit reason")

    async def bounded() -> bool:
        rows = await sql.replicas(huge)
        pending = [r for r in rows if r["status"] == "pending" and r["node_id"] is None]
        running = [r for r in rows if r["status"] == "running"]
        assert len(pending) <= burst, f"{len(pending)} unplaced rows, burst is {burst}"
        assert len(rows) <= 8 + burst, f"{len(rows)} rows for huge"
        assert len(running) == 8, f"{len(running)} running"
        await assert_invariants(sql, engines, skip=[huge])  # the others are untouched
        return True

    await daemon.until(bounded, within=30, what="huge bounded, the rest converged")
    await daemon.wait_event("resync_done", count=len(daemon.log().named("resync_done")) + 3)
    await bounded()
    print("huge:", (await sql.history(huge))[-1]["reason"])

    # The user deleted: the cascade takes the deployment row; its containers are strays.
    await sql.execute(("DELETE FROM users WHERE id = :id", {"id": sql.uid(bob)}))
    assert not await sql.rows("SELECT id FROM deployments WHERE id = :id", id=sql.uid(bobs))

    async def strays_gone() -> bool:
        left = [
            b
            for b in await asyncio.to_thread(labelled_containers, engines)
            if b.deployment_id == str(bobs)
        ]
        assert not left, left
        return True

    await daemon.until(strays_gone, within=30, what="bob's containers removed")

    # The operator fixes the huge one; everything converges, the daemon never stopped.
    await sql.scale(huge, 3)
    await settle(daemon, sql, engines, what="huge scaled back to 3")
    assert await sql.status(odd) == "running"
    daemon.assert_alive()
    daemon.assert_clean_log()


# --- 5. property: operator edits interleaved with restarts --------------------------------------

Edit = tuple[str, int]
EDITS = st.one_of(
    st.tuples(st.just("scale"), st.integers(0, 5)),
    st.tuples(st.just("image"), st.integers(0, 1)),
    st.tuples(st.just("delete"), st.just(0)),
    st.tuples(st.just("undelete"), st.integers(0, 4)),
    st.tuples(st.just("sigterm"), st.just(0)),
    st.tuples(st.just("sigkill"), st.just(0)),
)

# One explicit example with every kind of edit, run before the generated ones.
EVERY_EDIT: list[Edit] = [
    ("scale", 4),
    ("sigkill", 0),
    ("image", 1),
    ("delete", 0),
    ("sigterm", 0),
    ("undelete", 3),
    ("image", 1),
    ("scale", 1),
]


async def test_operator_edits_and_restarts_property(
    pg_url: str, engines: list[str], daemons: Daemons, cluster: Cluster
) -> None:
    for engine in cluster.engines:
        await asyncio.to_thread(build_image, engine, ALT_IMAGE, DEFAULT_CMD)
    images = (TEST_IMAGE, ALT_IMAGE)
    setup = Sql(pg_url)
    try:
        user = await setup.add_user()
        await add_nodes(setup, engines, cpu_cores=16, memory_mb=65536)
    finally:
        await setup.close()
    env = {"FOG_DATABASE_URL": pg_url}
    examples = 0

    async def scenario(edits: list[Edit]) -> None:
        nonlocal examples
        examples += 1
        sql = Sql(pg_url)
        name = f"prop-{examples}"
        daemon = daemons.start(**env)
        try:
            current: uuid.UUID | None = await sql.add_deployment(user, name, TEST_IMAGE, 1)
            for kind, value in edits:
                if kind == "scale" and current is not None:
                    await sql.scale(current, value)
                elif kind == "image" and current is not None:
                    await set_image(sql, current, images[value])
                elif kind == "delete" and current is not None:
                    await soft_delete(sql, current)
                    current = None
                elif kind == "undelete" and current is None:
                    current = await sql.add_deployment(user, name, TEST_IMAGE, value)
                elif kind == "sigterm":
                    await daemon.wait_event("controller_started")
                    code, _ = await daemon.terminate(within=20)
                    assert code == 0, daemon.tail()
                    daemon = daemons.start(**env)
                elif kind == "sigkill":
                    daemon.kill()
                    daemon = daemons.start(**env)
            await settle(daemon, sql, engines, within=60, what=f"after {edits}")
            daemon.assert_clean_log()
        finally:
            daemon.close()
            await sql.close()

    @settings(
        max_examples=3,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @example(EVERY_EDIT)
    @given(st.lists(EDITS, min_size=3, max_size=7))
    def check(edits: list[Edit]) -> None:
        print("edits:", edits)
        asyncio.run(scenario(edits))

    await asyncio.to_thread(check)
    assert examples >= 3
