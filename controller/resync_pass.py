"""The resync pass: the level-triggered safety net under every wake-up the loop may miss.

A pass lists every node once, loads every deployment in a constant number of queries, asks the
triage (controller.resync) which deployments a reconcile would act for, and enqueues those
keys; workers then reconcile one key at a time with fresh reads. The same pass removes
labelled containers that belong to no deployment, the named volumes of deleted deployments an
operator asked to purge (controller.purge), prunes old terminal replica rows, and sets
the gauges and the systemd STATUS line from what it loaded anyway. `repeat` is the timer: it
spaces the passes by their own cost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import structlog

from controller import errors, sdnotify
from controller.metrics import Health, Metrics
from controller.model import Deployment, DeploymentStatus, NodeStatus
from controller.nodes import NodeMonitor
from controller.purge import VolumePurge
from controller.reconciler import Reconciler
from controller.runtime import Runtime
from controller.settings import Settings
from controller.store import Store
from controller.workqueue import WorkQueue
from schema.enums import NOT_TERMINAL_REPLICA_STATUSES

log = structlog.get_logger(__name__)

# The next periodic resync waits at least this many times the last pass's duration.
RESYNC_SPACING = 9.0
# ... but never more than this (unless FOG_RESYNC_SECONDS itself is longer).
RESYNC_SPACING_CAP_SECONDS = 30.0

# The replica statuses a resync pass loads (terminal rows are not loaded).


class ResyncPass:
    """One full pass over the fog, and how many ran and how long the last one took (the loop
    spaces the next pass by it)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        reconciler: Reconciler,
        nodes: NodeMonitor,
        runtime: Runtime,
        *,
        metrics: Metrics,
        health: Health,
        notifier: sdnotify.Notifier,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reconciler = reconciler
        self.nodes = nodes
        self.metrics = metrics
        self.health = health
        self.notifier = notifier
        self.passes = 0
        self.last_pass_seconds = 0.0
        self.purge = VolumePurge(store, runtime, lambda: nodes.records)

    async def repeat(
        self,
        queue: WorkQueue[uuid.UUID],
        *,
        kick: asyncio.Event,
        ended: asyncio.Event,
        deposed: asyncio.Event,
    ) -> None:
        """Pass after pass until this term as leader has `ended`; `kick` asks for one at once,
        and a pass that finds the leader fenced out sets `deposed`."""
        while not ended.is_set():
            # Cleared before the pass: a kick that arrives during it asks for another one.
            kick.clear()
            try:
                await self.run(queue)
                self.health.database_answered()
            except errors.Deposed as exc:
                log.error("leader_deposed", error=exc.reason)
                deposed.set()
            except errors.ControllerError as exc:
                if isinstance(exc, errors.StoreUnavailable):
                    self.health.database_failed(exc.reason)
                log.warning("resync_failed", error=exc.reason)
            except Exception:
                log.exception("resync_crashed")
            self.health.progressed()  # a failed pass is progress too: /livez means "not stuck"
            # A pass may take at most a tenth of the leader's time: while thousands of
            # deployments change at once, a full reload every FOG_RESYNC_SECONDS would
            # compete with the reconciles it is a safety net for (measured: 40 % of the CPU).
            spacing = max(
                self.settings.resync_seconds,
                min(RESYNC_SPACING * self.last_pass_seconds, RESYNC_SPACING_CAP_SECONDS),
            )
            await _wait_any(kick, ended, spacing)
            self.health.progressed()  # the wait ended: the loop is alive (/livez)

    async def run(self, queue: WorkQueue[uuid.UUID]) -> int:
        """One full pass feeding `queue` (the current term's); returns how many deployments
        were enqueued."""
        started = time.monotonic()
        enqueued = await self._pass(queue)
        # Only a pass that ran counts: a failed one spent its time waiting, not working.
        self.last_pass_seconds = time.monotonic() - started
        return enqueued

    async def _pass(self, queue: WorkQueue[uuid.UUID]) -> int:
        started = time.monotonic()
        # Observe first, then load: every container in the listing was made from a replica row
        # committed before the listing began, so the load below cannot miss its deployment.
        views = await self.reconciler.observe(self.nodes.reachable())
        deployments = await self.store.load_active()
        # A held deployment (a row of it unusable) is not loaded, but its containers are its own.
        known = {d.id for d in deployments} | self.store.held
        enqueued = 0
        for deployment_id in self.reconciler.triage(deployments, views):
            queue.add(deployment_id)
            enqueued += 1
        strays = [
            c
            for v in views.values()
            if v.complete
            for c in v.containers
            if c.deployment_id not in known
        ]
        if strays:
            await asyncio.gather(
                *(self.reconciler.executor.remove(c, "no deployment") for c in strays)
            )
        purged = await self.purge.run()
        pruned = await self.store.prune_terminal_replicas(self.settings.keep_terminal_replicas)
        self.passes += 1
        self._report(deployments, queue)
        self.metrics.resync_duration.observe(time.monotonic() - started)
        # An idle pass is debug: operators read the info lines as "something happened".
        quiet = not (enqueued or strays or pruned or purged.deployments or purged.volumes)
        (log.debug if quiet else log.info)(
            "resync_done",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            deployments=len(deployments),
            enqueued=enqueued,
            replanned=self.reconciler.replanned,
            strays_removed=len(strays),
            volumes_removed=purged.volumes,
            volume_purges_done=purged.deployments,
            volume_purges_pending=purged.pending,
            replicas_pruned=pruned,
            queue_depth=len(queue),
        )
        return enqueued

    def _report(self, deployments: list[Deployment], queue: WorkQueue[uuid.UUID]) -> None:
        """Gauges from what the pass loaded anyway, and a STATUS line for `systemctl status`."""
        m = self.metrics
        m.set_counts(
            m.deployments,
            Counter(d.status.value for d in deployments),
            (s.value for s in DeploymentStatus if s is not DeploymentStatus.DELETED),
        )
        m.set_counts(
            m.replicas,
            Counter(r.status.value for d in deployments for r in d.replicas),
            (s.value for s in NOT_TERMINAL_REPLICA_STATUSES),
        )
        nodes = Counter(r.status.value for r in self.nodes.records.values())
        m.set_counts(m.nodes, nodes, (s.value for s in NodeStatus))
        self.notifier.status(
            f"{self.health.role.value}: {len(deployments)} deployments, "
            f"{nodes[NodeStatus.READY.value]}/{sum(nodes.values())} nodes ready, "
            f"{len(queue)} queued"
        )


async def _wait_any(event: asyncio.Event, ended: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early on `event` or when this term as leader `ended`."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(ended.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
