"""The reconciler's memory of nodes that keep refusing a deployment: excluded after
`REFUSALS_BEFORE_EXCLUSION` identical failures, forgotten after the TTL, when the node's
engine restarts, or when the operator changes the deployment. Plain values, no I/O."""

from __future__ import annotations

import uuid
from datetime import timedelta

from controller.model import DeploymentStatus
from controller.plan import StatusDecision, history_needed
from controller.progress import DeploymentMemory, Refusal, fresh_start
from controller.refusals import (
    REFUSAL_TTL,
    REFUSALS_BEFORE_EXCLUSION,
    count_refusal,
    excluded,
    last_exclusion,
)
from tests.unit.factories import T0, deployment

A, B = uuid.UUID(int=1), uuid.UUID(int=2)
UP = T0 - timedelta(hours=1)


def memory(*refusals: tuple[uuid.UUID, int]) -> DeploymentMemory:
    mem = DeploymentMemory(last_progress_at=T0, spec_seen=1)
    for node_id, count in refusals:
        mem.refusals[(node_id, "words")] = Refusal(f"n{node_id.int}", "words", count, T0, UP)
    return mem


def test_a_node_is_excluded_only_after_the_bound() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION), (B, REFUSALS_BEFORE_EXCLUSION - 1))
    assert excluded(mem, {A: UP, B: UP}, T0)[1] == {A}
    last = last_exclusion(mem)
    assert last is not None
    assert last.node_name == "n1"


def test_refusals_lapse_after_the_ttl_or_an_engine_restart() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION), (B, REFUSALS_BEFORE_EXCLUSION))
    restarted = UP + timedelta(minutes=30)
    mem, out = excluded(mem, {A: UP, B: restarted}, T0)
    assert out == {A}
    assert list(mem.refusals) == [(A, "words")]
    mem, out = excluded(mem, {A: UP}, T0 + REFUSAL_TTL + timedelta(seconds=1))
    assert out == set()
    assert mem.refusals == {}


def test_a_changed_deployment_forgets_its_refusals() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION))
    assert excluded(fresh_start(mem), {A: UP}, T0)[1] == set()
    assert excluded(mem, {A: UP}, T0)[1] == {A}  # the original is left as it was


def test_a_node_refusing_again_is_not_a_new_history_row_but_its_exclusion_is() -> None:
    said = "0/1 replicas running; node n1 refused 2 times: create container: no"
    d = deployment(1, status=DeploymentStatus.SCHEDULED, last_reason=said)
    again = StatusDecision(
        DeploymentStatus.SCHEDULED,
        "0/1 replicas running; node n1 refused 4 times: create container: no",
        False,
        0,
    )
    assert not history_needed(d, again)
    excluded = StatusDecision(
        DeploymentStatus.SCHEDULED,
        "0/1 replicas running; node n1 refused 5 times: create container: no; trying other nodes",
        False,
        0,
    )
    assert history_needed(d, excluded)


def test_identical_refusals_become_the_reason_then_exclude_the_node() -> None:
    mem = DeploymentMemory(last_progress_at=T0, spec_seen=1)
    words = "create container: image 0123456789abcdef0123 not found"
    verdicts = []
    for i in range(REFUSALS_BEFORE_EXCLUSION):
        # The ids in the words differ between two tries of the same failure.
        said = words.replace("0123456789abcdef0123", f"{i:020x}")
        mem, verdict = count_refusal(mem, A, "n1", said, UP, T0 + timedelta(seconds=i))
        verdicts.append(verdict)
    assert verdicts[0] is None  # one failure is no pattern
    second = verdicts[1]
    assert second is not None
    assert not second.excluded
    assert second.text.startswith("node n1 refused 2 times: create container: image")
    last = verdicts[-1]
    assert last is not None
    assert last.excluded
    assert last.text.endswith("; trying other nodes")
    assert excluded(mem, {A: UP}, T0 + timedelta(seconds=5))[1] == {A}


def test_a_refusal_after_the_engine_restarted_counts_from_one() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION - 1))
    restarted = UP + timedelta(minutes=5)
    mem, verdict = count_refusal(mem, A, "n1", "words", restarted, T0)
    assert verdict is None
