"""The resync pass's triage: which deployments a reconcile would do something for now.

The pass lists every node once and loads every deployment; `Triage.wanted` plans each one
against that listing (grouped by deployment once, not scanned per deployment) and remembers
the converged judgements, so a no-op pass over a large fog does not plan every deployment
again. `judge` is the pure judgement of one deployment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.model import Deployment, NodeView, ObservedContainer
from controller.plan import Fleet, Observed, Policy, derive_status, history_needed, plan
from controller.progress import DeploymentMemory


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a judgement reads besides the deployment and the listing."""

    policy: Policy
    now: datetime
    deadline: timedelta
    unhealthy_since: Mapping[str, datetime]
    over_limit: Mapping[str, str]
    # The replica a rebalance is moving for a deployment (controller.rebalancer).
    moving: Callable[[uuid.UUID], Collection[uuid.UUID]] = lambda _d: ()
    # For a converged deployment: would a rebalance move start now (True), may one start
    # later (False: not remembered as steady), or neither (None).
    rebalance: Callable[[Deployment, Observed], bool | None] = field(default=lambda _d, _o: None)


def judge(
    d: Deployment,
    observed: Observed,
    fleet: Fleet,
    mem: DeploymentMemory,
    inputs: Inputs,
) -> tuple[bool, bool]:
    """(would a reconcile act, is the deployment converged). A converged deployment whose
    spread a rebalance would heal is acted for; one whose move must wait (a cool-down, the
    fleet-wide cap) is not taken as converged, so the next pass looks again."""
    moving = inputs.moving(d.id)
    p = plan(
        d,
        observed.views,
        fleet,
        policy=inputs.policy,
        mine=observed,
        now=inputs.now,
        unhealthy_since=inputs.unhealthy_since,
        over_limit=inputs.over_limit,
        moving=moving,
    )
    if not p.empty:
        return True, False
    decision = derive_status(
        d,
        observed.views,
        mem.progress,
        now=inputs.now,
        deadline=inputs.deadline,
        policy=inputs.policy,
        mine=observed,
        moving=moving,
    )
    if history_needed(d, decision):
        return True, decision.converged
    if decision.converged and not moving:
        due = inputs.rebalance(d, observed)
        if due is not None:
            return due, False
    return False, decision.converged


def steady_key(
    d: Deployment, views: Mapping[uuid.UUID, NodeView], mine: list[ObservedContainer]
) -> tuple[object, ...]:
    """What a converged judgement of `d` rests on besides its rows and nodes: its containers
    as listed (all but their uptime, which grows with every listing) and which of its
    replicas' nodes could be listed completely."""
    containers = tuple(
        (
            c.id,
            c.node_id,
            c.replica_id,
            c.state,
            c.health,
            c.spec_hash,
            c.image,
            c.inspected,
            c.restart_count,
            c.exit_code,
            c.oom_killed,
            c.finished_at,
        )
        for c in mine
    )
    nodes = tuple(
        (r.node_id, r.node_id is not None and r.node_id in views and views[r.node_id].complete)
        for r in d.replicas
    )
    return containers, nodes


def group(views: Mapping[uuid.UUID, NodeView]) -> dict[uuid.UUID | None, list[ObservedContainer]]:
    """Every listed container by its deployment."""
    grouped: dict[uuid.UUID | None, list[ObservedContainer]] = {}
    for view in views.values():
        for c in view.containers:
            grouped.setdefault(c.deployment_id, []).append(c)
    return grouped


class Triage:
    """The converged judgements of the last pass, and the pass's triage over them."""

    def __init__(self) -> None:
        self._steady: dict[uuid.UUID, tuple[Deployment, Fleet, tuple[object, ...]]] = {}
        # How many deployments the last pass planned (the rest were converged and unchanged).
        self.judged = 0

    def forget(self, deployment_id: uuid.UUID) -> None:
        """Something changed for the deployment (a reconcile, a problem found elsewhere)."""
        self._steady.pop(deployment_id, None)

    def wanted(
        self,
        deployments: Iterable[Deployment],
        views: Mapping[uuid.UUID, NodeView],
        grouped: Mapping[uuid.UUID | None, list[ObservedContainer]],
        fleet: Fleet,
        memory: Callable[[Deployment], DeploymentMemory],
        inputs: Inputs,
    ) -> list[uuid.UUID]:
        """The deployments a reconcile would do something for now.

        A deployment judged converged last pass, whose rows (the same object from the store's
        snapshot), nodes (the same fleet) and containers are unchanged, is converged still:
        nothing in a converged judgement depends on the clock (a clock enters only with an
        unhealthy, exited or missing container, or an outgoing replica, none of which a
        converged deployment has)."""
        steady: dict[uuid.UUID, tuple[Deployment, Fleet, tuple[object, ...]]] = {}
        wanted = []
        judged = 0
        for d in deployments:
            mine = grouped.get(d.id, [])
            key = steady_key(d, views, mine)
            prior = self._steady.get(d.id)
            if prior is not None and prior[0] is d and prior[1] is fleet and prior[2] == key:
                steady[d.id] = prior
                continue
            observed = Observed.index(d.id, views, mine)
            judged += 1
            work, converged = judge(d, observed, fleet, memory(d), inputs)
            if work:
                wanted.append(d.id)
            elif converged:
                steady[d.id] = (d, fleet, key)
        self._steady, self.judged = steady, judged
        return wanted
