"""What the reconciler remembers of rebalancing: the moves in flight and the rebalance each
belongs to. `controller.rebalance` (pure) picks a move, the planner carries it out (the victim
is `moving`: replaced first, stopped once its replacement is ready) and this keeps the limits
the issue asks for: one move in flight per deployment, at most `rebalance_max_moves` fleet-wide,
and a cool-down per deployment after a rebalance ends, so a flapping node causes no churn.

Memory only, on purpose: a controller that restarts mid-move finds the deployment one replica
over its target, and the ordinary scale-down stops the surplus on the fuller node
(`plan.victims`), which is the move finished; a rebalance cut short that way writes no
history row, and the next resync pass starts a new one if the spread is still off.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from controller.model import Deployment
from controller.rebalance import Move
from controller.settings import Settings

log = structlog.get_logger(__name__)

# How soon to look again while a fleet-wide cap holds a wanted move back (seconds).
CAP_RETRY_SECONDS = 1.0


class Result(enum.StrEnum):
    """The `result` label of fog_controller_rebalance_moves_total."""

    MOVED = "moved"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class _InFlight:
    move: Move
    started_at: datetime
    # The live replicas when the move began: the one that is new at its end is the replacement.
    before: frozenset[uuid.UUID]


@dataclass(frozen=True, slots=True)
class Done:
    """A move that ended: its replica stopped, replaced on `to_node` (None: abandoned)."""

    move: Move
    to_node: uuid.UUID | None


@dataclass
class _Run:
    destinations: list[uuid.UUID] = field(default_factory=list)


class Rebalancer:
    """The moves in flight, the rebalances they belong to and the cool-downs."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rebalance
        self._max_moves = settings.rebalance_max_moves
        self._cooldown = timedelta(seconds=settings.rebalance_cooldown_seconds)
        # A move whose replacement has not served by then is given up (its surplus goes).
        self._deadline = timedelta(seconds=settings.progress_deadline_seconds)
        self._moves: dict[uuid.UUID, _InFlight] = {}
        self._runs: dict[uuid.UUID, _Run] = {}
        self._cool_until: dict[uuid.UUID, datetime] = {}
        # When a node last opened (joined, returned to ready, was uncordoned), and when each
        # deployment's spread was last found balanced: only a deployment placed before the
        # latest opening and not looked at since is owed a rebalance (see `owed`).
        self._opened_at: datetime | None = None
        self._looked: dict[uuid.UUID, datetime] = {}
        # Told of every move that ends (the loop counts them in a metric).
        self.on_end: Callable[[Result], None] = lambda _result: None

    def moving(self, deployment_id: uuid.UUID) -> frozenset[uuid.UUID]:
        """The replica being moved for the deployment, if any (for `plan(moving=...)`)."""
        m = self._moves.get(deployment_id)
        return frozenset() if m is None else frozenset({m.move.replica_id})

    @property
    def in_flight(self) -> int:
        return len(self._moves)

    def running(self, deployment_id: uuid.UUID) -> bool:
        """A rebalance of the deployment has begun and not ended."""
        return deployment_id in self._runs

    def allowed(self, d: Deployment) -> bool:
        """Rebalancing is on for `d` (FOG_REBALANCE and its placement's `rebalance`)."""
        return self.enabled and d.placement.rebalance

    def opened(self, at: datetime) -> None:
        """A node opened for placement: deployments placed before now are owed a look."""
        self._opened_at = at

    def owed(self, d: Deployment) -> bool:
        """Whether `d`'s spread is to be looked at: a rebalance of it is running, or a node
        opened after its last look and some live replica of it predates that opening. A
        replica placed later was placed with the opened node there to choose, so a spread the
        scheduler left uneven (a rollout's surge lands beside the old replicas, which then
        leave) is not churned after every rollout; a controller that restarts sees a node
        that came back meanwhile open at its first probe, so nothing is lost."""
        if self.running(d.id):
            return True
        opened = self._opened_at
        if (
            opened is None
            or self._looked.get(d.id, datetime.min.replace(tzinfo=opened.tzinfo)) >= opened
        ):
            return False
        return any(r.live and (r.created_at is None or r.created_at <= opened) for r in d.replicas)

    def looked(self, deployment_id: uuid.UUID, at: datetime) -> None:
        """`d`'s spread was found balanced at `at` (nothing left to move)."""
        self._looked[deployment_id] = at

    def wait(self, d: Deployment, now: datetime) -> float | None:
        """None: a move may start for `d` now; else seconds until one might (its cool-down,
        the fleet-wide cap on moves in flight)."""
        until = self._cool_until.get(d.id)
        if until is not None and until > now:
            return (until - now).total_seconds()
        if len(self._moves) >= self._max_moves:
            return CAP_RETRY_SECONDS
        return None

    def start(self, d: Deployment, move: Move, now: datetime) -> None:
        live = frozenset(r.id for r in d.replicas if r.live)
        self._moves[d.id] = _InFlight(move, now, live)
        self._runs.setdefault(d.id, _Run())

    def settle(self, d: Deployment, now: datetime) -> Done | None:
        """The deployment's move as its rows now stand: ended (its replica is no longer live),
        abandoned (the deployment changed under it, or it took too long), or still going."""
        m = self._moves.get(d.id)
        if m is None:
            return None
        victim = next((r for r in d.replicas if r.id == m.move.replica_id), None)
        if victim is None or not victim.live:
            new = [r for r in d.replicas if r.live and r.id not in m.before and r.node_id]
            to_node = new[0].node_id if new else None
            if to_node is None:
                return self.abandon(d.id, "its replica ended without a replacement")
            del self._moves[d.id]
            self._runs.setdefault(d.id, _Run()).destinations.append(to_node)
            self.on_end(Result.MOVED)
            return Done(m.move, to_node)
        if d.deleting or any(d.outdated(r) for r in d.replicas if r.live):
            return self.abandon(d.id, "the deployment changed")
        if now - m.started_at > self._deadline:
            return self.abandon(d.id, f"its replacement did not serve within {self._deadline}")
        return None

    def abandon(self, deployment_id: uuid.UUID, why: str) -> Done | None:
        """Give the move up: the planner then sees one replica too many and scales down."""
        m = self._moves.pop(deployment_id, None)
        if m is None:
            return None
        log.warning("rebalance_move_abandoned", replica_id=str(m.move.replica_id), reason=why)
        self.on_end(Result.ABANDONED)
        return Done(m.move, None)

    def end(self, deployment_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
        """The rebalance is over (nothing more to move): the nodes replicas moved to, and the
        deployment's cool-down begins."""
        run = self._runs.pop(deployment_id, None)
        self._cool_until[deployment_id] = now + self._cooldown
        return [] if run is None else run.destinations

    def forget(self, deployment_id: uuid.UUID) -> None:
        self._moves.pop(deployment_id, None)
        self._runs.pop(deployment_id, None)
        self._cool_until.pop(deployment_id, None)
        self._looked.pop(deployment_id, None)

    def new_term(self) -> None:
        """Leadership (re)gained: another leader may have acted meanwhile; a surplus left by a
        move is the planner's ordinary scale-down."""
        self._moves.clear()
        self._runs.clear()


def history_reason(names: list[str]) -> str:
    """`rebalanced: 2 replicas moved to node3, node4` (each node named once)."""
    count = len(names)
    nodes = ", ".join(sorted(set(names)))
    return f"rebalanced: {count} replica{'s' if count != 1 else ''} moved to {nodes}"
