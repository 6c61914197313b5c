"""`fogctl rollout status`: wait until a deployment is running with every replica up, or fails.

`judge` is PURE (one snapshot in, a verdict out) so its rules are tested with plain values;
`wait` polls the database and draws progress. fogctl reads only what the controller recorded
(the deployment's status, its replica rows, the newest history row); it never guesses from the
engines itself.

A status written *before* the operator's last change may be stale: as kubectl compares
`observedGeneration` with `generation`, the rule is the controller's own
(`controller.generation`, migration 0006). The controller records the generation it acted on
with every status and, when acting changes no status (a scale-down that stays `running`), on
its own. Until it has, an older `failed` is waited out (it keeps failed sticky only for the
generation it failed under) and an older `running` is not trusted (a rolling update may be
about to start). Without this, `fogctl apply -f new.yaml && fogctl rollout status ...` would
report the old failure, or the old success, at once; no clock or settle time is involved.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from controller import generation
from controller.fogctl import views
from controller.fogctl.errors import FogctlError, NotFound
from schema.enums import DeploymentStatus


class Verdict(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    WAITING = "waiting"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    message: str


def _counts(d: views.DeploymentRow) -> str:
    return f"{d.running_replicas}/{d.target_replicas} replicas running"


def changed_since_status(d: views.DeploymentRow) -> bool:
    """The operator changed the deployment after the controller last recorded its status."""
    return generation.spec_changed(d.generation, d.observed_generation)


def judge(d: views.DeploymentRow) -> Judgement:
    """The verdict on one snapshot.

    `running` with every replica up after an edit the controller has not yet observed may be
    the *old* spec: a new image keeps the old replicas running until the controller starts
    its rolling update. It is trusted once the controller has recorded the edit's generation
    as observed, whether or not that changed the status.
    """
    name = d.name
    if d.deleted_at is not None or d.status is DeploymentStatus.DELETED:
        return Judgement(Verdict.FAILED, f"deployment {name!r} was deleted")
    settled = d.live_replicas == d.target_replicas and d.stopping_replicas == 0
    if d.status is DeploymentStatus.RUNNING and d.running_replicas == d.target_replicas and settled:
        if not changed_since_status(d):
            return Judgement(
                Verdict.DONE, f"deployment {name!r} successfully rolled out: {_counts(d)}"
            )
        return Judgement(
            Verdict.WAITING,
            f"waiting for deployment {name!r}: {_counts(d)}, status running "
            "(changed since; waiting for the controller to act on the change)",
        )
    if d.status is DeploymentStatus.STOPPED and d.target_replicas == 0 and settled:
        return Judgement(Verdict.DONE, f"deployment {name!r} scaled to 0 replicas")
    if generation.failed_is_sticky(d.status, d.generation, d.observed_generation):
        reason = d.reason or "no reason recorded"
        return Judgement(Verdict.FAILED, f"deployment {name!r} failed: {reason}")
    waiting = f"waiting for deployment {name!r}: {_counts(d)}, status {d.status.value}"
    if d.status is DeploymentStatus.FAILED:
        waiting += " (changed since it failed; waiting for the controller)"
    elif d.reason:
        waiting += f": {d.reason}"
    return Judgement(Verdict.WAITING, waiting)


class RolloutFailed(FogctlError):
    """The deployment failed, was deleted, or the timeout passed (exit 1)."""


async def wait(
    load: Callable[[], Awaitable[views.DeploymentRow | None]],
    *,
    name: str,
    timeout_seconds: float,
    interval_seconds: float,
    out: Console,
    echo: Callable[[str], None],
) -> str:
    """Poll until done (returns the final words) or failed/timed out (raises RolloutFailed).

    On a terminal a rich progress bar shows running/target; elsewhere one plain line is
    printed each time what there is to say changes, so a CI log does not fill with repeats.
    """
    deadline = time.monotonic() + timeout_seconds if timeout_seconds > 0 else None
    progress = _bar(out) if out.is_terminal else None
    said = ""
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task(name, total=None, status="")
    try:
        while True:
            d = await load()
            if d is None:
                raise NotFound(f"deployment {name!r} not found")
            j = judge(d)
            if j.verdict is Verdict.DONE:
                return j.message
            if j.verdict is Verdict.FAILED:
                raise RolloutFailed(j.message)
            if progress is not None and task is not None:
                progress.update(
                    task,
                    total=max(d.target_replicas, 1),
                    completed=min(d.running_replicas, d.target_replicas),
                    status=d.status.value + (f": {d.reason}" if d.reason else ""),
                )
            elif j.message != said:
                echo(j.message)
                said = j.message
            if deadline is not None and time.monotonic() >= deadline:
                what = j.message.removeprefix("waiting for ")
                raise RolloutFailed(f"timed out after {timeout_seconds:g}s: {what}")
            await asyncio.sleep(_pause(interval_seconds, deadline))
    finally:
        if progress is not None:
            progress.stop()


def _bar(out: Console) -> Progress:
    """The terminal's progress bar: running/target and the status with its reason."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=out,
        transient=True,
    )


def _pause(interval_seconds: float, deadline: float | None) -> float:
    """The next poll's wait: the interval, cut short so the timeout is reported on time."""
    if deadline is None:
        return interval_seconds
    return max(0.0, min(interval_seconds, deadline - time.monotonic()))
