"""Docker event streams on real engines: a crash, an OOM kill, a removal or a health change of
one of our containers reaches the loop within a second; strangers' containers never do; a
stream lost with its engine comes back and asks for a resync; `close()` ends every thread.

No database: the watcher is given node records built by hand.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from controller.events import EventWatcher, parse
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    MANAGED_BY_VALUE,
    NodeRecord,
    NodeStatus,
)
from tests.harness.engines import TEST_IMAGE, TEST_LABEL, Cluster, Engine, build_image

pytestmark = pytest.mark.docker

EVENT_WITHIN = 1.0  # the promise: a change of ours is seen within a second
CLOSE_WITHIN = 2.0
SLOW_WITHIN = 30.0  # engine restarts and reconnect backoff
HEALTH_IMAGE = "fog-test/events-health:latest"


@dataclass
class Recorder:
    """What the watcher reported, stamped on arrival (callbacks run on the loop)."""

    events: list[tuple[float, uuid.UUID, str]] = field(default_factory=list)
    resyncs: list[tuple[float, uuid.UUID]] = field(default_factory=list)
    loop_thread: set[int] = field(default_factory=set)

    def on_deployment(self, deployment_id: uuid.UUID, _node_id: uuid.UUID, event: str) -> None:
        self.loop_thread.add(threading.get_ident())
        self.events.append((time.monotonic(), deployment_id, event))

    def on_resync(self, node_id: uuid.UUID) -> None:
        self.loop_thread.add(threading.get_ident())
        self.resyncs.append((time.monotonic(), node_id))

    def actions(self, deployment_id: uuid.UUID) -> list[str]:
        return [e for _, d, e in self.events if d == deployment_id]

    def resync_count(self, node_id: uuid.UUID) -> int:
        return sum(1 for _, n in self.resyncs if n == node_id)


async def until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll `predicate` on the loop (callbacks keep arriving meanwhile); seconds it took."""
    started = time.monotonic()
    deadline = started + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _records(cluster: Cluster) -> list[NodeRecord]:
    return [
        NodeRecord(id=uuid.uuid4(), name=e.name, docker_url=e.url, status=NodeStatus.READY)
        for e in cluster.engines
    ]


def _events_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("events-")]


async def _close_promptly(watcher: EventWatcher) -> None:
    started = time.monotonic()
    await watcher.close()
    took = time.monotonic() - started
    assert took < CLOSE_WITHIN, f"close() took {took:.2f}s"
    assert _events_threads() == []
    gc.collect()  # an unclosed socket or response would fail the test here (warnings = errors)


@dataclass
class Watched:
    watcher: EventWatcher
    recorder: Recorder
    nodes: list[NodeRecord]

    async def connected(self, *indexes: int) -> None:
        """Every stream named is subscribed (its first resync comes once it is)."""
        for i in indexes or range(len(self.nodes)):
            await self._connected(self.nodes[i])

    async def _connected(self, node: NodeRecord) -> None:
        await until(
            lambda: self.recorder.resync_count(node.id) >= 1,
            SLOW_WITHIN,
            f"stream of {node.name} to connect",
        )


@pytest.fixture
def restores_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The session's engines, all running and without our containers, even after a failure."""
    yield cluster
    cluster.ensure_running()
    cluster.remove_containers(TEST_LABEL)


@pytest.fixture
async def watched(restores_cluster: Cluster) -> AsyncIterator[Watched]:
    recorder = Recorder()
    nodes = _records(restores_cluster)
    watcher = EventWatcher(lambda: nodes, recorder.on_deployment, recorder.on_resync)
    watcher.start()
    try:
        yield Watched(watcher, recorder, nodes)
    finally:
        await _close_promptly(watcher)


def _labels(deployment_id: uuid.UUID) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY_VALUE,
        LABEL_DEPLOYMENT: str(deployment_id),
        LABEL_REPLICA: str(uuid.uuid4()),
        TEST_LABEL: "1",
    }


def _run(
    engine: Engine,
    labels: dict[str, str],
    *,
    image: str = TEST_IMAGE,
    command: list[str] | None = None,
    **host: Any,
) -> str:
    with closing(engine.client()) as client:
        api = client.api
        created = api.create_container(
            image,
            command=command,
            labels=labels,
            host_config=api.create_host_config(
                **{"restart_policy": {"Name": "unless-stopped"}, **host}
            ),
        )
        container_id: str = created["Id"]
        api.start(container_id)
        return container_id


def _inspect(engine: Engine, container_id: str) -> dict[str, Any]:
    with closing(engine.client()) as client:
        detail: dict[str, Any] = client.api.inspect_container(container_id)
        return detail


def _remove(engine: Engine, container_id: str) -> None:
    with closing(engine.client()) as client:
        client.api.remove_container(container_id, force=True)


# --- tests -----------------------------------------------------------------------------------


def test_parse_reads_deployment_and_action_from_labels() -> None:
    d = uuid.uuid4()
    ours = {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_DEPLOYMENT: str(d)}
    assert parse({"Action": "die", "Actor": {"Attributes": ours}}) == (d, "die")
    assert parse({"Action": "health_status: healthy", "Actor": {"Attributes": ours}}) == (
        d,
        "health_status: healthy",
    )
    assert parse({"Action": "die", "Actor": {"Attributes": {LABEL_DEPLOYMENT: str(d)}}}) is None
    bad = {**ours, LABEL_DEPLOYMENT: "not-a-uuid"}
    assert parse({"Action": "die", "Actor": {"Attributes": bad}}) is None
    assert parse({"Action": "die"}) is None


async def test_host_kill_is_a_die_within_a_second_then_a_restart(
    watched: Watched, cluster: Cluster
) -> None:
    await watched.connected()
    engine = cluster.engines[0]
    deployment = uuid.uuid4()
    container = _run(engine, _labels(deployment))
    await until(
        lambda: "start" in watched.recorder.actions(deployment), EVENT_WITHIN, "start event"
    )
    watched.recorder.events.clear()

    # A signal from the host is a crash; `docker kill` would count as a manual stop and the
    # restart policy would leave the container down.
    os.kill(_inspect(engine, container)["State"]["Pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    await until(lambda: "die" in watched.recorder.actions(deployment), EVENT_WITHIN, "die event")
    await until(
        lambda: "start" in watched.recorder.actions(deployment),
        SLOW_WITHIN,
        "the restart policy's start",
    )
    actions = watched.recorder.actions(deployment)
    assert actions.index("die") < actions.index("start")
    die_at = next(t for t, d, e in watched.recorder.events if d == deployment and e == "die")
    assert die_at - killed_at < EVENT_WITHIN
    # Callbacks ran on the loop's thread, never in a stream thread.
    assert watched.recorder.loop_thread == {threading.get_ident()}


async def test_removal_is_a_destroy_and_strangers_are_ignored(
    watched: Watched, cluster: Cluster
) -> None:
    await watched.connected()
    engine = cluster.engines[0]
    ours, stranger = uuid.uuid4(), uuid.uuid4()
    # A stranger that even names a deployment, but is not managed by us.
    other = _run(engine, {LABEL_DEPLOYMENT: str(stranger), TEST_LABEL: "1"})
    _remove(engine, other)
    container = _run(engine, _labels(ours))
    await until(lambda: "start" in watched.recorder.actions(ours), EVENT_WITHIN, "start event")

    _remove(engine, container)
    removed_at = time.monotonic()
    await until(lambda: "destroy" in watched.recorder.actions(ours), EVENT_WITHIN, "destroy event")
    assert time.monotonic() - removed_at < EVENT_WITHIN
    assert "die" in watched.recorder.actions(ours)
    # One engine's events arrive in order, so the stranger's would have come first.
    assert watched.recorder.actions(stranger) == []
    assert {d for _, d, _ in watched.recorder.events} == {ours}


async def test_oom_kill_is_reported_before_its_die(watched: Watched, cluster: Cluster) -> None:
    await watched.connected(2)
    engine = cluster.engines[2]
    deployment = uuid.uuid4()
    # The shell keeps a command substitution's output in memory: 100 MB into a 16 MB cgroup.
    _run(
        engine,
        _labels(deployment),
        command=["/bin/sh", "-c", "x=$(head -c 100000000 /dev/urandom); sleep 3600"],
        mem_limit="16m",
        memswap_limit="16m",
        restart_policy={"Name": "no"},
    )
    await until(lambda: "die" in watched.recorder.actions(deployment), SLOW_WITHIN, "die")
    actions = watched.recorder.actions(deployment)
    # cgroup v1 reports every process the kernel kills: several "oom" may precede one "die",
    # and an "oom" alone (a child killed) does not mean the container stopped.
    assert "oom" in actions
    assert actions.index("oom") < actions.index("die")


async def test_health_changes_arrive_with_their_status(watched: Watched, cluster: Cluster) -> None:
    await watched.connected(1)
    engine = cluster.engines[1]
    build_image(
        engine,
        HEALTH_IMAGE,
        ["/bin/sh", "-c", 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'],
        healthcheck={
            "test": ["CMD", "test", "!", "-e", "/tmp/sick"],
            "interval": 100_000_000,  # ns
            "timeout": 1_000_000_000,
            "retries": 1,
        },
    )
    deployment = uuid.uuid4()
    container = _run(engine, _labels(deployment), image=HEALTH_IMAGE)
    await until(
        lambda: "health_status: healthy" in watched.recorder.actions(deployment),
        SLOW_WITHIN,
        "healthy",
    )
    with closing(engine.client()) as client:
        exec_id = client.api.exec_create(container, ["touch", "/tmp/sick"])["Id"]
        client.api.exec_start(exec_id)
    await until(
        lambda: "health_status: unhealthy" in watched.recorder.actions(deployment),
        SLOW_WITHIN,
        "unhealthy",
    )
    # The exec's own events (exec_create, exec_start, exec_die) are not ours to follow.
    assert all(
        a in {"start", "health_status: healthy", "health_status: unhealthy"}
        for a in watched.recorder.actions(deployment)
    )


async def test_engine_restart_reconnects_resyncs_and_events_flow_again(
    watched: Watched, cluster: Cluster
) -> None:
    await watched.connected()
    node = watched.nodes[1]
    engine = cluster.engines[1]
    assert watched.recorder.resync_count(node.id) == 1

    engine.stop()
    engine.start()
    await until(
        lambda: watched.recorder.resync_count(node.id) >= 2,
        SLOW_WITHIN,
        "a resync of node 2 after its stream reconnected",
    )
    # Only the node that went away asks for a resync.
    assert [watched.recorder.resync_count(n.id) for n in watched.nodes] == [1, 2, 1]

    deployment = uuid.uuid4()
    container = _run(engine, _labels(deployment))
    await until(lambda: "start" in watched.recorder.actions(deployment), EVENT_WITHIN, "start")
    _remove(engine, container)
    await until(lambda: "destroy" in watched.recorder.actions(deployment), EVENT_WITHIN, "destroy")


async def test_streams_follow_the_node_list(restores_cluster: Cluster) -> None:
    cluster = restores_cluster
    recorder = Recorder()
    first, second = _records(cluster)[:2]
    nodes: list[NodeRecord] = [first]
    watcher = EventWatcher(lambda: list(nodes), recorder.on_deployment, recorder.on_resync)
    try:
        watcher.start()
        await until(lambda: recorder.resync_count(first.id) == 1, SLOW_WITHIN, "first stream")

        # A new ready node gets a stream; a node not (yet) ready gets none.
        nodes.append(second)
        nodes.append(replace(_records(cluster)[2], status=NodeStatus.UNKNOWN))
        watcher.sync()
        await until(lambda: recorder.resync_count(second.id) == 1, SLOW_WITHIN, "second stream")
        assert set(watcher.watching) == {first.id, second.id}

        # A node whose URL changes gets a fresh stream (and a resync) for the new URL.
        moved = replace(second, docker_url=cluster.engines[2].url)
        nodes[1] = moved
        watcher.sync()
        await until(lambda: recorder.resync_count(second.id) == 2, SLOW_WITHIN, "moved stream")
        assert watcher.watching[second.id] == cluster.engines[2].url
        await until(
            lambda: len(_events_threads()) == 2, CLOSE_WITHIN, "the old URL's thread to end"
        )

        # An engine that does not answer is retried in the background, and the periodic
        # sync (no explicit sync() call) picks the change up.
        nodes[1] = replace(moved, docker_url="unix:///nonexistent/docker.sock")
        await until(
            lambda: watcher.watching.get(second.id) == "unix:///nonexistent/docker.sock",
            SLOW_WITHIN,
            "the periodic sync",
        )
        # A node going not ready, or away, loses its stream.
        nodes[0] = replace(first, status=NodeStatus.NOT_READY)
        watcher.sync()
        assert first.id not in watcher.watching
        await until(lambda: len(_events_threads()) == 1, CLOSE_WITHIN, "first stream to end")
        nodes.pop(0)
        watcher.sync()
        assert set(watcher.watching) == {second.id}
        # Its thread is gone, so the first engine's events reach nobody now.
        deployment = uuid.uuid4()
        _remove(cluster.engines[0], _run(cluster.engines[0], _labels(deployment)))
        assert recorder.actions(deployment) == []
    finally:
        # Closing while a stream waits out its backoff must still be prompt.
        await _close_promptly(watcher)


async def test_close_is_prompt_while_connected_and_idempotent(
    restores_cluster: Cluster,
) -> None:
    recorder = Recorder()
    nodes = _records(restores_cluster)
    before = set(threading.enumerate())
    async with EventWatcher(lambda: nodes, recorder.on_deployment, recorder.on_resync) as w:
        await until(lambda: len(recorder.resyncs) == 3, SLOW_WITHIN, "three streams")
        assert len(_events_threads()) == 3
        started = time.monotonic()
        await w.close()
        assert time.monotonic() - started < CLOSE_WITHIN
    await w.close()
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError):
        w.start()
