"""Crash backoff and progress as pure functions over `DeploymentMemory`: plain values in,
a changed copy out, the given one left as it was."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from controller.model import DeploymentStatus
from controller.plan import StatusDecision
from controller.progress import (
    STABLE_RESET,
    Backoff,
    DeploymentMemory,
    after_crash,
    after_start_failure,
    after_status,
    backoff_left,
    remember,
)
from tests.unit.factories import T0, deployment

BACKOFF = Backoff(initial_seconds=10, max_seconds=300)


def fresh() -> DeploymentMemory:
    return DeploymentMemory(last_progress_at=T0, spec_seen=1)


def test_start_failures_double_the_wait_up_to_the_bound() -> None:
    mem, delays = fresh(), []
    for _ in range(8):
        mem, delay = after_start_failure(mem, "no such image", T0, BACKOFF)
        delays.append(delay)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert mem.error == "no such image"
    assert backoff_left(mem, T0) == 300
    assert backoff_left(mem, T0 + timedelta(seconds=300)) is None


def test_the_first_crash_is_replaced_at_once_the_next_wait() -> None:
    start = fresh()
    mem, first = after_crash(start, "replica 1 failed", T0, BACKOFF)
    assert first is None
    assert backoff_left(mem, T0) is None
    mem, second = after_crash(mem, "replica 2 failed", T0, BACKOFF)
    assert second == 10
    assert mem.failures == 2
    assert start.failures == 0  # the given memory is left as it was


def converged(ready: int) -> StatusDecision:
    reason = f"{ready}/{ready} replicas running"
    return StatusDecision(DeploymentStatus.RUNNING, reason, True, ready)


def test_backoff_resets_only_after_running_stable_for_a_while() -> None:
    mem, _ = after_start_failure(fresh(), "no", T0, BACKOFF)
    mem = after_status(mem, converged(1), T0)
    assert mem.failures == 1
    assert mem.problem is None  # converged clears the problem at once
    mem = after_status(mem, converged(1), T0 + STABLE_RESET)
    assert mem.failures == 0
    assert mem.retry_at is None


def test_an_operator_change_is_a_fresh_start() -> None:
    mem, _ = after_start_failure(fresh(), "no", T0, BACKOFF)
    later = T0 + timedelta(minutes=1)
    same = remember(mem, deployment(1, generation=1), later)
    assert same is mem
    edited = remember(mem, deployment(1, generation=2), later)
    assert (edited.failures, edited.retry_at, edited.error) == (0, None, None)
    assert edited.last_progress_at == later


@given(st.integers(min_value=1, max_value=40))
def test_the_wait_never_shrinks_and_never_passes_the_bound(failures: int) -> None:
    mem, waits = fresh(), []
    for _ in range(failures):
        mem, delay = after_start_failure(mem, "no", T0, BACKOFF)
        waits.append(delay)
    assert waits == sorted(waits)
    assert max(waits) <= BACKOFF.max_seconds
