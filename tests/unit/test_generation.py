"""The generation rules and the persisted progress, as plain values (no database)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.generation import NEVER_OBSERVED, failed_is_sticky, spec_changed
from controller.model import DeploymentStatus, ProgressState, ReplicaStatus
from controller.progress import DeploymentMemory
from tests.unit.factories import T0, deployment, node, replica

N1 = node("n1")


@pytest.mark.parametrize(
    ("generation", "observed", "changed"),
    [
        pytest.param(1, NEVER_OBSERVED, True, id="never-observed"),
        pytest.param(3, 3, False, id="observed"),
        pytest.param(4, 3, True, id="edited-since"),
    ],
)
def test_spec_changed(generation: int, observed: int, changed: bool) -> None:
    assert spec_changed(generation, observed) is changed


@pytest.mark.parametrize(
    ("status", "generation", "observed", "sticky"),
    [
        pytest.param(DeploymentStatus.FAILED, 3, 3, True, id="failed-this-generation"),
        pytest.param(DeploymentStatus.FAILED, 4, 3, False, id="failed-then-edited"),
        pytest.param(DeploymentStatus.FAILED, 1, NEVER_OBSERVED, False, id="failed-by-hand"),
        pytest.param(DeploymentStatus.SCHEDULED, 3, 3, False, id="not-failed"),
    ],
)
def test_failed_is_sticky_only_for_the_generation_it_failed_under(
    status: DeploymentStatus, generation: int, observed: int, sticky: bool
) -> None:
    assert failed_is_sticky(status, generation, observed) is sticky


def test_memory_without_persisted_progress_starts_afresh() -> None:
    mem = DeploymentMemory.resume(deployment(2), T0)
    assert (mem.spec_seen, mem.last_progress_at, mem.failures, mem.retry_at) == (0, T0, 0, None)
    assert mem.persisted is None


def test_resuming_is_never_progress() -> None:
    """The ready count resumes as the rows' running replicas, so the first look of a new
    leader does not restart a stalled deployment's progress deadline."""
    rows = (
        replica(ReplicaStatus.RUNNING, N1, n=0, started=T0),
        replica(ReplicaStatus.RUNNING, N1, n=1, started=T0),
        replica(ReplicaStatus.STARTING, N1, n=2),
    )
    p = ProgressState(observed_generation=1, progress_since=T0)
    mem = DeploymentMemory.resume(deployment(3, *rows, progress=p), T0 + timedelta(hours=1))
    assert (mem.last_ready, mem.last_progress_at) == (2, T0)


def test_a_converged_deployment_persists_no_progress_time() -> None:
    mem = DeploymentMemory(last_progress_at=T0, spec_seen=2, stable_since=T0)
    before = mem.progress_state()
    mem.last_progress_at = T0 + timedelta(minutes=5)  # every look at it moves this
    assert mem.progress_state() == before
    assert before.progress_since is None


_time = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(T0.tzinfo)
)
_times = st.none() | _time


@st.composite
def _states(draw: st.DrawFn) -> ProgressState:
    stable = draw(_times)
    return ProgressState(
        observed_generation=draw(st.integers(1, 10**6)),
        failures=draw(st.integers(0, 50)),
        retry_at=draw(_times),
        # A controller persists exactly one of the two: progress time while not converged,
        # stable_since while converged.
        progress_since=draw(_time) if stable is None else None,
        stable_since=stable,
        error=draw(st.none() | st.text(max_size=40)),
    )


@given(_states())
def test_what_a_leader_persisted_is_what_its_successor_would_persist(p: ProgressState) -> None:
    mem = DeploymentMemory.resume(deployment(1, progress=p), T0)
    assert mem.persisted == p
    assert mem.progress_state() == p
