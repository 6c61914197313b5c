"""The daemon: workers draining the work queue, a resync timer, node heartbeats, graceful stop.

The loop only wires things: a resync pass lists every node once, loads every deployment in a
constant number of queries, asks the pure planner which deployments have work, and enqueues
those keys; workers then reconcile one key at a time with fresh reads. The same pass removes
labelled containers that belong to no deployment and prunes old terminal replica rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from controller import errors
from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler
from controller.runtime import Runtime
from controller.settings import Settings
from controller.store import Store
from controller.workqueue import WorkQueue

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.nodes = NodeMonitor(store, runtime, settings, clock)
        self.reconciler = Reconciler(store, runtime, self.nodes, settings, clock)
        self.queue: WorkQueue[uuid.UUID] = WorkQueue()
        self._stop = asyncio.Event()
        self._resync_now = asyncio.Event()
        self.passes = 0

    def stop(self) -> None:
        self._stop.set()

    def resync_now(self) -> None:
        self._resync_now.set()

    async def run(self) -> None:
        """Run until `stop()`; in-flight reconciles get `shutdown_grace_seconds` to finish."""
        s = self.settings
        log.info(
            "controller_starting",
            resync_seconds=s.resync_seconds,
            workers=s.workers,
            stop_timeout_seconds=s.stop_timeout_seconds,
        )
        await self._wait_for_store()
        if self._stop.is_set():
            return
        await self.nodes.register_local()
        await self.nodes.refresh()
        workers = [asyncio.create_task(self._worker(i)) for i in range(s.workers)]
        timers = [
            asyncio.create_task(self._resync_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        log.info("controller_started", nodes=len(self.nodes.records))
        await self._stop.wait()
        log.info("controller_stopping", in_flight=self.queue.processing)
        # Timers and workers see the stop event and finish what they are doing; only what is
        # still running after the grace period is cancelled (its replica stays `starting` or
        # `stopping`, which the next start picks up).
        self.queue.shutdown()
        tasks = [*timers, *workers]
        _, pending = await asyncio.wait(tasks, timeout=s.shutdown_grace_seconds)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("controller_stopped", abandoned=len(pending))

    async def _wait_for_store(self) -> None:
        """The database may be down at boot: wait for it rather than exiting."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.store.ping()
                return
            except errors.StoreUnavailable as exc:
                log.warning("database_unavailable", error=exc.reason, retry_in_seconds=delay)
                await self._sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _worker(self, index: int) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            try:
                result = await self.reconciler.reconcile(key)
            except errors.ControllerError as exc:
                delay = self.queue.add_rate_limited(key)
                log.warning(
                    "reconcile_failed",
                    deployment_id=str(key),
                    error=exc.reason,
                    retry_in_seconds=round(delay, 3),
                )
            except Exception:
                delay = self.queue.add_rate_limited(key)
                log.exception(
                    "reconcile_crashed", deployment_id=str(key), retry_in_seconds=round(delay, 3)
                )
            else:
                self.queue.forget(key)
                if result.requeue_after is not None:
                    self.queue.add_after(key, result.requeue_after)
            finally:
                self.queue.done(key)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._sleep(self.settings.node_heartbeat_seconds)
            if self._stop.is_set():
                return
            try:
                await self.nodes.refresh()
            except errors.ControllerError as exc:
                log.warning("heartbeat_failed", error=exc.reason)

    async def _resync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.resync()
            except errors.ControllerError as exc:
                log.warning("resync_failed", error=exc.reason)
            except Exception:
                log.exception("resync_crashed")
            self._resync_now.clear()
            await self._wait_any(self._resync_now, self.settings.resync_seconds)

    async def _wait_any(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep up to `seconds`, waking early on `event` or on stop."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def resync(self) -> int:
        """One full pass; returns how many deployments were enqueued."""
        started = time.monotonic()
        # Observe first, then load: every container in the listing was made from a replica row
        # committed before the listing began, so the load below cannot miss its deployment.
        views = await self.reconciler.observe(self.nodes.reachable())
        deployments = await self.store.load_deployments()
        known = {d.id for d in deployments}
        enqueued = 0
        for d in deployments:
            if self.reconciler.wants_work(d, views):
                self.queue.add(d.id)
                enqueued += 1
        strays = [
            c
            for v in views.values()
            if v.complete
            for c in v.containers
            if c.deployment_id not in known
        ]
        if strays:
            await asyncio.gather(*(self._remove_stray(c.node_id, c.id, c.name) for c in strays))
        pruned = await self.store.prune_terminal_replicas(self.settings.keep_terminal_replicas)
        self.passes += 1
        log.info(
            "resync_done",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            deployments=len(deployments),
            enqueued=enqueued,
            strays_removed=len(strays),
            replicas_pruned=pruned,
            queue_depth=len(self.queue),
        )
        return enqueued

    async def _remove_stray(self, node_id: uuid.UUID, container: str, name: str) -> None:
        record = self.nodes.records.get(node_id)
        if record is None:
            return
        try:
            await self.runtime.stop(record, container, 0)
            log.info("container_removed", container=name, node=record.name, why="no deployment")
        except errors.ControllerError as exc:
            log.warning("container_remove_failed", container=name, reason=exc.reason)
