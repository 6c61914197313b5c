"""Metrics and health without a listener: what /livez and /readyz decide, and what the
instruments count. The HTTP side is in tests/integration/test_service.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.metrics import Health, Metrics, ReconcileResult, Role, stall_seconds
from controller.settings import Settings
from controller.workqueue import WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --- health -------------------------------------------------------------------------------


def test_live_until_the_loop_goes_quiet_past_the_limit() -> None:
    clock = FakeClock()
    h = Health(60, clock)
    assert h.live()[0], "starting counts as progress"
    clock.now += 60
    assert h.live()[0]
    clock.now += 1
    ok, why = h.live()
    assert not ok
    assert why == "stuck: no progress for 61s (limit 60s)"
    h.progressed()
    assert h.live()[0]


def test_a_database_outage_does_not_make_the_loop_dead() -> None:
    clock = FakeClock()
    h = Health(60, clock)
    h.set_role(Role.LEADER)
    h.database_answered()
    clock.now += 30
    h.database_failed("database unavailable: connection refused")
    h.progressed()  # the failed resync pass still finished
    assert h.live()[0]
    assert h.ready() == (
        False,
        "not ready: database: database unavailable: connection refused",
    )


@pytest.mark.parametrize(
    ("role", "answered_ago", "ready"),
    [
        pytest.param(Role.STARTING, 0.0, False, id="starting"),
        pytest.param(Role.LEADER, 0.0, True, id="leader"),
        pytest.param(Role.STANDBY, 0.0, True, id="standby"),
        pytest.param(Role.STOPPING, 0.0, False, id="stopping"),
        pytest.param(Role.LEADER, 61.0, False, id="database-answered-too-long-ago"),
        pytest.param(Role.LEADER, None, False, id="database-never-answered"),
    ],
)
def test_ready(role: Role, answered_ago: float | None, ready: bool) -> None:
    clock = FakeClock()
    h = Health(60, clock)
    h.set_role(role)
    if answered_ago is not None:
        h.database_answered()
        clock.now += answered_ago
    assert h.ready()[0] is ready


def test_the_database_answering_again_clears_the_failure() -> None:
    h = Health(60, FakeClock())
    h.set_role(Role.LEADER)
    h.database_failed("down")
    assert not h.ready()[0]
    h.database_answered()
    assert h.ready()[0]


@pytest.mark.parametrize(
    ("resync", "docker_timeout", "limit"),
    [
        pytest.param(5.0, 30.0, 60.0, id="defaults-floor"),
        pytest.param(0.5, 20.0, 60.0, id="fast-resync"),
        pytest.param(5.0, 45.0, 90.0, id="slow-docker"),
        pytest.param(300.0, 30.0, 900.0, id="long-resync"),
    ],
)
def test_stall_limit(resync: float, docker_timeout: float, limit: float) -> None:
    s = replace(
        Settings(database_url="sqlite+aiosqlite://"),
        resync_seconds=resync,
        docker_timeout_seconds=docker_timeout,
    )
    assert stall_seconds(s) == limit


# --- instruments -----------------------------------------------------------------------------


def test_each_metrics_object_owns_its_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_reconcile(ReconcileResult.ERROR, 0.2)
    assert sample(a, "fog_controller_reconcile_total", result="error") == 1
    assert sample(b, "fog_controller_reconcile_total", result="error") == 0


def test_reconcile_results() -> None:
    m = Metrics()
    m.observe_reconcile(ReconcileResult.SUCCESS, 0.01)
    m.observe_reconcile(ReconcileResult.REQUEUE, 0.02)
    m.observe_reconcile(ReconcileResult.ERROR, 3.0)
    for result in ("success", "requeue", "error"):
        assert sample(m, "fog_controller_reconcile_total", result=result) == 1
    assert sample(m, "fog_controller_reconcile_errors_total") == 1
    assert sample(m, "fog_controller_reconcile_time_seconds_count") == 3
    assert sample(m, "fog_controller_reconcile_time_seconds_bucket", le="0.025") == 2


def test_counts_of_a_status_that_empties_drop_to_zero() -> None:
    m = Metrics()
    m.set_counts(m.nodes, {"ready": 2, "draining": 1}, known=("unknown", "ready", "not_ready"))
    assert sample(m, "fog_controller_nodes", status="ready") == 2
    assert sample(m, "fog_controller_nodes", status="unknown") == 0
    m.set_counts(m.nodes, {"not_ready": 3}, known=("unknown", "ready", "not_ready"))
    assert sample(m, "fog_controller_nodes", status="ready") == 0
    assert sample(m, "fog_controller_nodes", status="draining") == 0, "seen before: reset too"
    assert sample(m, "fog_controller_nodes", status="not_ready") == 3


def test_docker_errors_by_node_and_operation() -> None:
    m = Metrics()
    m.docker_error("edge-1", "create_container")
    m.docker_error("edge-1", "create_container")
    m.docker_error("edge-2", "info")
    name = "fog_controller_docker_errors_total"
    assert sample(m, name, node="edge-1", operation="create_container") == 2
    assert sample(m, name, node="edge-2", operation="info") == 1


async def test_queue_counts_real_adds_and_the_wait_until_get() -> None:
    m = Metrics()
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(observer=m.workqueue, clock=clock)
    m.watch_queue(lambda: len(q), lambda: q.processing)
    q.add("a")
    q.add("a")  # already waiting: not an add
    q.add("b")
    assert sample(m, "fog_controller_workqueue_adds_total") == 2
    assert sample(m, "fog_controller_workqueue_depth") == 2
    clock.now += 0.02
    assert await q.get() == "a"
    assert sample(m, "fog_controller_workqueue_depth") == 1
    assert sample(m, "fog_controller_active_workers") == 1
    count = sample(m, "fog_controller_workqueue_queue_duration_seconds_count")
    total = sample(m, "fog_controller_workqueue_queue_duration_seconds_sum")
    assert count == 1
    assert total == pytest.approx(0.02)


async def test_a_key_added_mid_reconcile_waits_from_that_add() -> None:
    m = Metrics()
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(observer=m.workqueue, clock=clock)
    q.add("a")
    clock.now += 5.0  # queued, not yet handed out: counted for the first get
    assert await q.get() == "a"
    clock.now += 1.0  # reconciling: no wait yet
    q.add("a")  # an event during the reconcile: counted, queued when it is done
    clock.now += 0.02
    q.done("a")
    assert await q.get() == "a"
    assert sample(m, "fog_controller_workqueue_adds_total") == 2
    total = sample(m, "fog_controller_workqueue_queue_duration_seconds_sum")
    assert total == pytest.approx(5.0 + 0.02)  # the second wait runs from the mid-run add
