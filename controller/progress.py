"""PURE: what the reconciler remembers about a deployment between reconciles, and the
decisions over it: crash backoff (kubelet's CrashLoopBackOff), the progress deadline's start,
and the problem to show. Each decision takes a `DeploymentMemory` and returns a new one, so
it is tested with plain values; the reconciler keeps the current value per deployment and
writes its `progress_state()` with the status it belongs to (deployment_controller_state), so
a controller that takes over resumes the backoff and the progress deadline where they were.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.model import Deployment, ProgressState, ReplicaStatus
from controller.plan import Progress, StatusDecision
from controller.settings import Settings

# Crash backoff resets after this long converged without a break (as kubelet's does).
STABLE_RESET = timedelta(minutes=10)


@dataclass
class Refusal:
    """Identical start failures of one deployment on one node."""

    node_name: str
    words: str  # the engine's answer, verbatim (the latest)
    count: int
    last_at: datetime
    node_up_since: datetime | None  # the engine's uptime mark when it refused


@dataclass
class DeploymentMemory:
    """What the reconciler remembers about one deployment between reconciles: failures,
    the current problem, progress time. Treated as a value: the functions below return a
    changed copy and never change the one they are given. What decides behaviour
    (`progress_state`) is persisted with the status and resumed from on first sight, so a
    controller that takes over goes on where the old leader stopped; node refusals and the
    unschedulable reason stay in memory (the next placement finds the latter again)."""

    last_progress_at: datetime
    spec_seen: int  # the generation last acted on (see controller.generation)
    failures: int = 0
    retry_at: datetime | None = None
    error: str | None = None  # the latest start failure
    unschedulable: str | None = None  # the latest "0/N nodes fit: ..."
    last_ready: int = 0
    stable_since: datetime | None = None  # converged without a break since
    # Start failures per (node, failure with ids masked).
    refusals: dict[tuple[uuid.UUID, str], Refusal] = field(default_factory=dict)
    persisted: ProgressState | None = None  # as last read from or written to the store

    @classmethod
    def resume(cls, d: Deployment, now: datetime) -> DeploymentMemory:
        """Memory as the last leader persisted it. The ready count is the rows' running
        replicas: at least what that leader counted ready, so resuming is never progress."""
        p = d.progress
        if p is None:
            return cls(last_progress_at=now, spec_seen=d.observed_generation)
        return cls(
            last_progress_at=p.progress_since or now,
            spec_seen=p.observed_generation,
            failures=p.failures,
            retry_at=p.retry_at,
            error=p.error,
            last_ready=sum(1 for r in d.replicas if r.status is ReplicaStatus.RUNNING),
            stable_since=p.stable_since,
            persisted=p,
        )

    def progress_state(self) -> ProgressState:
        """What to persist. A converged deployment's progress time moves with every look and
        decides nothing, so it is left out (resumed as "now")."""
        return ProgressState(
            observed_generation=self.spec_seen,
            failures=self.failures,
            retry_at=self.retry_at,
            progress_since=None if self.stable_since is not None else self.last_progress_at,
            stable_since=self.stable_since,
            error=self.error,
        )

    @property
    def problem(self) -> str | None:
        return self.error or self.unschedulable

    @property
    def progress(self) -> Progress:
        return Progress(self.last_progress_at, self.problem)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Crash backoff bounds: `initial_seconds` doubling up to `max_seconds`."""

    initial_seconds: float = 10.0
    max_seconds: float = 300.0

    @classmethod
    def of(cls, settings: Settings) -> Backoff:
        return cls(settings.crash_backoff_initial_seconds, settings.crash_backoff_max_seconds)

    def delay(self, step: int) -> float:
        """Seconds to wait at `step` (0: the first wait)."""
        return float(min(self.initial_seconds * 2**step, self.max_seconds))


def fresh_start(mem: DeploymentMemory) -> DeploymentMemory:
    """Forget failures, problems and refusals (the operator changed the deployment)."""
    return replace(mem, failures=0, retry_at=None, error=None, unschedulable=None, refusals={})


def remember(mem: DeploymentMemory | None, d: Deployment, now: datetime) -> DeploymentMemory:
    """The memory to reconcile `d` with: resumed from what was persisted for a deployment not
    seen yet, and a fresh start after an operator's change (a new generation), as a new
    rollout resets Kubernetes' progress deadline and a changed pod resets kubelet's backoff."""
    if mem is None:
        mem = DeploymentMemory.resume(d, now)
    if d.generation > mem.spec_seen:
        return replace(fresh_start(mem), spec_seen=d.generation, last_progress_at=now)
    return mem


def backoff_left(mem: DeploymentMemory, now: datetime) -> float | None:
    """Seconds until the crash backoff lets starts through again; None: not backing off."""
    if mem.retry_at is None or now >= mem.retry_at:
        return None
    return (mem.retry_at - now).total_seconds()


def after_start_failure(
    mem: DeploymentMemory, reason: str, now: datetime, backoff: Backoff
) -> tuple[DeploymentMemory, float]:
    """A start failed for good: back off (10 s doubling to 5 min by default) with the
    engine's words as the problem. Returns the memory and the delay in seconds."""
    failures = mem.failures + 1
    delay = backoff.delay(failures - 1)
    changed = replace(mem, failures=failures, retry_at=now + timedelta(seconds=delay), error=reason)
    return changed, delay


def after_crash(
    mem: DeploymentMemory, reason: str, now: datetime, backoff: Backoff
) -> tuple[DeploymentMemory, float | None]:
    """A replica lost after it ran (container gone, exited, unhealthy): the first replacement
    is immediate, the next ones back off, until the deployment has run stable for
    `STABLE_RESET`. Returns the memory and the delay (None: no wait)."""
    failures = mem.failures + 1
    if failures < 2:
        return replace(mem, failures=failures, error=reason), None
    delay = backoff.delay(failures - 2)
    changed = replace(mem, failures=failures, retry_at=now + timedelta(seconds=delay), error=reason)
    return changed, delay


def after_start(mem: DeploymentMemory) -> DeploymentMemory:
    """A start succeeded: the start failure is no longer the problem (the backoff count
    itself resets only after stable running)."""
    return mem if mem.error is None else replace(mem, error=None)


def after_status(
    mem: DeploymentMemory, decision: StatusDecision, now: datetime
) -> DeploymentMemory:
    """Progress and stability after a status derivation: more replicas ready (or converged)
    is progress; converged clears the problems, and converged for `STABLE_RESET` clears the
    crash backoff."""
    last_progress_at = now if decision.converged or decision.ready > mem.last_ready else None
    changed = replace(
        mem,
        last_progress_at=last_progress_at or mem.last_progress_at,
        last_ready=decision.ready,
    )
    if not decision.converged:
        return replace(changed, stable_since=None)
    changed = replace(changed, error=None, unschedulable=None)
    if changed.stable_since is None:
        return replace(changed, stable_since=now)
    if now - changed.stable_since >= STABLE_RESET:
        return replace(changed, failures=0, retry_at=None)
    return changed


def persisted(mem: DeploymentMemory, state: ProgressState) -> DeploymentMemory:
    """`state` is now what the store holds for the deployment."""
    return replace(mem, persisted=state)


def progress_wait(mem: DeploymentMemory, now: datetime, deadline: timedelta) -> float | None:
    """Seconds until the progress deadline could pass (a little after), None when it passed
    more than a second ago (the failure is recorded; nothing more to wait for)."""
    left = (mem.last_progress_at + deadline - now).total_seconds()
    return max(left, 0.0) + 0.05 if left > -1 else None
