"""The storage monitor: `storage_gb` held by measurement on nodes whose engine cannot cap disk.

Kubelet enforces ephemeral storage the same way: it measures each pod's writable layer on a
cadence and evicts a pod over its limit. Every `FOG_STORAGE_CHECK_SECONDS` this lists our
running containers with their sizes (`SizeRw`), one call per `monitored` node (the runtime's
per-node semaphore bounds it beside the reconciles' calls), and hands the containers over
their limit to the reconciler, which replaces their replicas with the reason
`storage limit exceeded: 1.3 GB written of 1 GB`. It runs off the resync path: asking an
engine for sizes makes it walk every container's writable layer, which no reconcile should
wait for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import structlog

from controller.model import NodeRecord
from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler
from controller.runtime import Runtime
from controller.storage import Excess, StorageLimits, exceeded

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CheckResult:
    nodes: int  # monitored nodes asked
    containers: int  # containers measured
    over: tuple[uuid.UUID, ...]  # deployments with a replica over its limit
    seconds: float


class StorageMonitor:
    def __init__(self, runtime: Runtime, nodes: NodeMonitor, reconciler: Reconciler) -> None:
        self._runtime = runtime
        self._nodes = nodes
        self._reconciler = reconciler

    async def check(self) -> CheckResult:
        """One pass over every reachable `monitored` node; returns the deployments to
        reconcile. A node that cannot be listed is skipped until the next pass."""
        started = time.perf_counter()
        watched = [
            r for r in self._nodes.reachable() if r.storage_limits is StorageLimits.MONITORED
        ]
        # Each node's containers are judged in its own task, as its listing arrives, so a
        # pass over a large fog never holds the event loop for all of them at once.
        found = await asyncio.gather(*(self._node(r) for r in watched))
        over: dict[str, tuple[uuid.UUID, str]] = {}
        measured = 0
        for record, (count, excesses) in zip(watched, found, strict=True):
            measured += count
            for e in excesses:
                over[e.container_id] = (e.deployment_id, e.reason)
                log.warning(
                    "storage_limit_exceeded",
                    node=record.name,
                    deployment_id=str(e.deployment_id),
                    replica_id=str(e.replica_id),
                    container=e.container_id[:12],
                    reason=e.reason,
                )
        self._reconciler.note_storage(over)
        deployments = tuple(dict.fromkeys(d for d, _ in over.values()))
        seconds = time.perf_counter() - started
        log.debug(
            "storage_check_done",
            nodes=len(watched),
            containers=measured,
            over=len(over),
            duration_ms=round(seconds * 1000, 2),
        )
        return CheckResult(len(watched), measured, deployments, seconds)

    async def _node(self, record: NodeRecord) -> tuple[int, list[Excess]]:
        """(containers measured, those over their limit) on one node; (0, []) when it could
        not be listed (the runtime logged why)."""
        used = await self._runtime.disk_usage(record)
        if used is None:
            return 0, []
        return len(used), exceeded(used)
