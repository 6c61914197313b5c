"""Placing and starting one deployment's replicas under slow start.

Slow start as a window rather than batches: at most `window` starts in flight, one more
allowed per success (so the allowance doubles per round trip, 1, 2, 4, 8 ... as Kubernetes'
ReplicaSet batches), and no new start after the first permanent failure, so a broken image
fails once, not a hundred times. Unlike fixed batches there is no barrier waiting for a
batch's slowest start. Placement runs ahead of the launches in chunks of the current window,
so it costs a handful of transactions, not one per replica.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from controller import errors, refusals
from controller.executor import Executor, Outcomes
from controller.model import (
    ZERO,
    Deployment,
    Node,
    NodeRecord,
    NodeView,
    Replica,
    Resources,
)
from controller.placement import PlacementCache
from controller.progress import Backoff, DeploymentMemory, after_start, after_start_failure
from controller.runspec import RegistryAuth

log = structlog.get_logger(__name__)


@dataclass
class Pass:
    """One reconcile's working values: the deployment as loaded (its status kept current by
    our own writes), the listing, the memory as it evolves, and what the actions changed."""

    d: Deployment
    views: Mapping[uuid.UUID, NodeView]
    mem: DeploymentMemory
    out: Outcomes = field(default_factory=Outcomes)
    # The decrypted pull secret (looked up once, only when something starts or is pulled).
    auth: RegistryAuth | None = None
    # Why the spec cannot be run as written (controller.runnable); None: it can.
    refusal: str | None = None

    @property
    def now_d(self) -> Deployment:
        """The deployment with our own writes applied."""
        return self.out.applied_to(self.d)


@dataclass(frozen=True, slots=True)
class _Failed:
    """A start the engine refused for good (or a node refusing again and again)."""

    reason: str
    refused: bool  # the node is passed over now: the replacement goes elsewhere at once


class Starter:
    """Starts one deployment's replicas; `first_placed` runs once the first placement is
    written (the pending -> scheduled status), beside the first starts."""

    def __init__(
        self,
        executor: Executor,
        placement: PlacementCache,
        records: Mapping[uuid.UUID, NodeRecord],
        nodes: tuple[Node, ...],
        clock: Callable[[], datetime],
        backoff: Backoff,
    ) -> None:
        self._executor = executor
        self._placement = placement
        self._records = records
        self._nodes = nodes
        self._up_since_map: dict[uuid.UUID, datetime | None] | None = None
        self._clock = clock
        self._backoff = backoff

    @property
    def _up_since(self) -> Mapping[uuid.UUID, datetime | None]:
        """Each node's engine up-since mark: only needed once refusals are counted, so not
        built per reconcile (a large fog has a thousand nodes)."""
        if self._up_since_map is None:
            self._up_since_map = {n.id: n.up_since for n in self._nodes}
        return self._up_since_map

    async def run(
        self,
        p: Pass,
        ensure: Sequence[Replica],
        pending: Sequence[Replica],
        first_placed: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> bool:
        """Place and start; returns True on a transient failure (look again soon)."""
        request = p.d.resources or ZERO
        spread = Counter(r.node_id for r in p.d.replicas if r.live and r.node_id is not None)
        placed: deque[Replica] = deque(ensure)
        unplaced: deque[Replica] = deque(pending)
        in_flight: set[asyncio.Task[errors.ControllerError | _Failed | None]] = set()
        window, failed, transient = 1, False, False
        announce: asyncio.Task[None] | None = None
        while True:
            while not failed and len(in_flight) < window and (placed or unplaced):
                if not placed:
                    chunk = [unplaced.popleft() for _ in range(min(window, len(unplaced)))]
                    got = await self._place(p, chunk, request, spread)
                    placed.extend(got)
                    if p.mem.unschedulable:
                        unplaced.clear()  # nothing else fits either
                    if got and first_placed is not None and announce is None:
                        announce = asyncio.create_task(first_placed())
                    if not got:
                        break
                r = placed.popleft()
                in_flight.add(asyncio.create_task(self._start(p, r)))
            if not in_flight:
                break
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                in_flight.discard(task)
                outcome = task.result()
                if outcome is None:
                    window += 1
                    if not failed:
                        p.mem = after_start(p.mem)
                elif isinstance(outcome, _Failed) and outcome.refused:
                    # The replacement goes to another node at once: no backoff, a quick look.
                    p.mem = replace(p.mem, error=outcome.reason)
                    failed = transient = True
                elif isinstance(outcome, _Failed):
                    if not failed:
                        failed = True
                        p.mem, delay = after_start_failure(
                            p.mem, outcome.reason, self._clock(), self._backoff
                        )
                        log.warning(
                            "deployment_backoff",
                            failures=p.mem.failures,
                            retry_in_seconds=delay,
                            reason=outcome.reason,
                        )
                else:
                    transient = True
        if announce is not None:
            await announce
        return transient

    async def _place(
        self, p: Pass, chunk: list[Replica], request: Resources, spread: Counter[uuid.UUID]
    ) -> list[Replica]:
        """Nodes for `chunk`, written; the refusal (if any) is the deployment's problem."""
        excluded: set[uuid.UUID] = set()
        if p.mem.refusals:
            p.mem, excluded = refusals.excluded(p.mem, self._up_since, self._clock())
        result = await self._placement.choose(
            [r.id for r in chunk],
            request,
            spread,
            excluded,
            p.d.run.host_ports(),
            p.d.placement,
        )
        reason = result.reason
        last = refusals.last_exclusion(p.mem) if excluded else None
        if reason is not None and last is not None:
            # "0/3 nodes fit: 3 refused this deployment" alone would hide the engine's words.
            reason = f"{reason}; node {last.node_name} refused {last.count} times: {last.words}"
        chosen = {pl.replica_id: pl.node_id for pl in result.placements}
        got: list[Replica] = []
        try:
            got = await self._executor.place(p.d, chosen, chunk, p.out)
        finally:
            written = {r.id for r in got}
            for replica_id in chosen:
                self._placement.settle(replica_id, written=replica_id in written)
        for r in got:
            if r.node_id is not None:
                spread[r.node_id] += 1
        p.mem = replace(p.mem, unschedulable=reason)
        if reason:
            log.info("replicas_unschedulable", count=len(chunk) - len(got), reason=reason)
        return got

    async def _start(self, p: Pass, r: Replica) -> errors.ControllerError | _Failed | None:
        """Create/start one replica's container and record the outcome; errors are returned."""
        record = self._records.get(r.node_id) if r.node_id else None
        if record is None:
            return errors.TransientError("node unknown")
        try:
            container_id = await self._executor.ensure(p.d, r, record, p.auth)
        except errors.ControllerError as exc:
            return await self._failed(p, r, record, exc)
        await self._executor.mark_started(p.d, r, record, container_id, self._clock(), p.out)
        return None

    async def _failed(
        self, p: Pass, r: Replica, record: NodeRecord, exc: errors.ControllerError
    ) -> errors.ControllerError | _Failed:
        """Judge a start failure: count it against the node (from the second identical one
        the engine's words are the deployment's reason; at the bound the node is passed
        over), and fail the replica if it failed for good."""
        verdict = None
        if not isinstance(exc, errors.ConflictError):  # a stranger's container: not the engine
            p.mem, verdict = refusals.count_refusal(
                p.mem,
                record.id,
                record.name,
                exc.reason,
                self._up_since.get(record.id),
                self._clock(),
            )
        refused = verdict is not None and verdict.excluded
        if refused and verdict is not None:
            log.warning(
                "node_refuses_deployment",
                node=record.name,
                count=verdict.count,
                reason=exc.reason,
                detail="its replicas go to other nodes",
            )
        if not isinstance(exc, errors.PermanentError) and not refused:
            log.warning(
                "replica_start_deferred", replica_id=str(r.id), node=record.name, reason=exc.reason
            )
            return exc
        await self._executor.mark_start_failed(
            r, record, exc.reason, self._clock(), p.out, node_excluded=refused
        )
        return _Failed(verdict.text if verdict is not None else exc.reason, refused)
