"""The reconciler's memory of nodes that keep refusing a deployment: excluded after
`REFUSALS_BEFORE_EXCLUSION` identical failures, forgotten after the TTL, when the node's
engine restarts, or when the operator changes the deployment. Plain values, no I/O."""

from __future__ import annotations

import uuid
from datetime import timedelta

from controller.model import DeploymentStatus
from controller.plan import StatusDecision, history_needed
from controller.reconciler import REFUSAL_TTL, REFUSALS_BEFORE_EXCLUSION, DeploymentMemory, Refusal
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
    assert mem.excluded({A: UP, B: UP}, T0) == {A}
    last = mem.last_exclusion()
    assert last is not None
    assert last.node_name == "n1"


def test_refusals_lapse_after_the_ttl_or_an_engine_restart() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION), (B, REFUSALS_BEFORE_EXCLUSION))
    restarted = UP + timedelta(minutes=30)
    assert mem.excluded({A: UP, B: restarted}, T0) == {A}
    assert list(mem.refusals) == [(A, "words")]
    assert mem.excluded({A: UP}, T0 + REFUSAL_TTL + timedelta(seconds=1)) == set()
    assert mem.refusals == {}


def test_a_changed_deployment_forgets_its_refusals() -> None:
    mem = memory((A, REFUSALS_BEFORE_EXCLUSION))
    mem.reset()
    assert mem.excluded({A: UP}, T0) == set()


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
