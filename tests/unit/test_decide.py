"""The whole decision of one reconcile as plain values: the plan's actions by kind, the
backoff gate after recorded crashes, and when to look again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.decide import (
    TRANSIENT_RETRY_SECONDS,
    Decision,
    crashes_counted,
    decide,
    requeue_after,
    start_gate,
)
from controller.model import (
    ContainerState,
    DeploymentStatus,
    ObservedContainer,
    Replica,
    ReplicaStatus,
)
from controller.plan import DEFAULT_POLICY, Fleet, MarkFailed, Observed
from controller.progress import Backoff, DeploymentMemory
from tests.unit.factories import T0, container, deployment, node, replica, views

N1 = node("n1")
NOW = T0 + timedelta(hours=1)
DEADLINE = timedelta(minutes=10)


def running(n: int) -> list[Replica]:
    return [replica(ReplicaStatus.RUNNING, N1, n=i, started=T0) for i in range(n)]


def decided(target: int, rows: list[Replica], containers: list[ObservedContainer]) -> Decision:
    d = deployment(target, *rows, status=DeploymentStatus.RUNNING)
    seen = views((N1, containers))
    return decide(
        d,
        Observed.index(d.id, seen),
        Fleet.of([N1]),
        policy=DEFAULT_POLICY,
        now=NOW,
        unhealthy_since={},
        over_limit={},
    )


def test_a_new_deployment_creates_its_replicas() -> None:
    decision = decided(3, [], [])
    assert decision.create == 3
    assert decision.wants_starts


def test_scaling_down_stops_and_starts_nothing() -> None:
    rows = running(3)
    decision = decided(1, rows, [container(r, N1) for r in rows])
    assert len(decision.stops) == 2
    assert not decision.wants_starts


def test_a_converged_deployment_decides_nothing() -> None:
    rows = running(2)
    assert decided(2, rows, [container(r, N1) for r in rows]).empty


def test_an_exited_container_fails_its_replica_and_is_replaced() -> None:
    rows = running(1)
    gone = container(rows[0], N1, ContainerState.EXITED, exit_code=3, finished_at=T0)
    decision = decided(1, rows, [gone])
    [failed] = decision.failures
    assert "code 3" in failed.reason
    assert decision.create == 1


def test_only_recorded_failures_count_toward_the_backoff() -> None:
    mem = DeploymentMemory(last_progress_at=T0, spec_seen=1)
    rows = running(2)
    failures = [MarkFailed(r, "container is gone") for r in rows]
    backoff = Backoff(10, 300)
    one, delays = crashes_counted(mem, failures, {rows[0].id}, NOW, backoff)
    assert (one.failures, delays) == (1, [])
    assert start_gate(one, NOW) is None  # the first replacement is immediate
    two, delays = crashes_counted(mem, failures, {r.id for r in rows}, NOW, backoff)
    assert (two.failures, delays) == (2, [(2, 10)])
    assert start_gate(two, NOW) == 10


@pytest.mark.parametrize(
    ("status", "gated", "transient", "expected"),
    [
        pytest.param(DeploymentStatus.RUNNING, None, False, None, id="running-nothing-due"),
        pytest.param(DeploymentStatus.RUNNING, 7.0, False, 7.0, id="backoff-gate"),
        pytest.param(
            DeploymentStatus.RUNNING, 7.0, True, TRANSIENT_RETRY_SECONDS, id="transient-first"
        ),
        pytest.param(
            DeploymentStatus.SCHEDULED, None, False, 600.05, id="not-running-progress-deadline"
        ),
    ],
)
def test_when_to_look_again(
    status: DeploymentStatus, gated: float | None, transient: bool, expected: float | None
) -> None:
    d = deployment(1, status=status)
    mem = DeploymentMemory(last_progress_at=NOW, spec_seen=1)
    got = requeue_after(
        d,
        {},
        mem,
        gated=gated,
        transient=transient,
        unhealthy_since={},
        policy=DEFAULT_POLICY,
        now=NOW,
        deadline=DEADLINE,
    )
    assert got == (None if expected is None else pytest.approx(expected))
