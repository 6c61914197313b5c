"""The daemon: workers draining the work queue, a resync timer, node heartbeats, graceful stop.

The loop only wires things: it waits for the database (controller.startup), stands for
election, and while it leads runs the workers, the timers and the wake-ups. Workers reconcile
one key at a time with fresh reads; the resync pass (controller.resync_pass) is the safety net
that finds the keys every wake-up missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError

from controller import errors, sdnotify, startup
from controller.diskwatch import StorageMonitor
from controller.events import EventWatcher
from controller.leader import Lease, SqliteLock
from controller.metrics import Health, Metrics, ReconcileResult, Role, stall_seconds
from controller.model import NodeRecord
from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler
from controller.resync_pass import ResyncPass
from controller.runtime import Runtime
from controller.runtime.docker import EngineConnector, EngineFlavour
from controller.settings import Settings
from controller.store import Store
from controller.watch import PgListener, SqlitePoller
from controller.workqueue import WorkQueue
from schema.engine import is_sqlite

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Controller:
    """Wires the daemon: the node monitor, the reconciler, the resync pass, the wake-ups and the
    work queue, run while this process leads and stopped gracefully when it no longer does."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        clock: Callable[[], datetime] = utcnow,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        notifier: sdnotify.Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self._clock = clock
        self.nodes = NodeMonitor(store, runtime, settings, clock)
        self.reconciler = Reconciler(store, runtime, self.nodes, settings, clock)
        self.storage = StorageMonitor(runtime, self.nodes, self.reconciler)
        # Observability is optional so tests and benchmarks can build a bare Controller; the CLI
        # passes the ones it serves on FOG_METRICS_ADDR and the systemd notifier.
        self.metrics = Metrics() if metrics is None else metrics
        self.health = Health(stall_seconds(settings)) if health is None else health
        self.notifier = sdnotify.Notifier() if notifier is None else notifier
        self.reconciler.rebalance.on_end = self.metrics.rebalance_move
        self.queue: WorkQueue[uuid.UUID] = WorkQueue(observer=self.metrics.workqueue)
        self.metrics.watch_queue(lambda: len(self.queue), lambda: self.queue.processing)
        self._stop = asyncio.Event()
        self._deposed = asyncio.Event()
        self._ended = asyncio.Event()
        self._resync_now = asyncio.Event()
        self.resyncs = ResyncPass(
            settings,
            store,
            self.reconciler,
            self.nodes,
            runtime,
            metrics=self.metrics,
            health=self.health,
            notifier=self.notifier,
        )

    @property
    def passes(self) -> int:
        """How many resync passes have run (tests wait for the next one)."""
        return self.resyncs.passes

    def stop(self) -> None:
        if not self._stop.is_set():
            self.health.set_role(Role.STOPPING)
            self.metrics.leader.set(0)
            self.notifier.stopping(f"stopping: {self.queue.processing} reconciles in flight")
        self._stop.set()

    def resync_now(self) -> None:
        self._resync_now.set()

    def _on_container_event(
        self, deployment_id: uuid.UUID, node_id: uuid.UUID, _action: str
    ) -> None:
        # The reconcile lists only the nodes it knows hold the deployment's containers: an
        # event from elsewhere (a container started by hand, say) adds its node to them.
        self.reconciler.note_seen(deployment_id, node_id)
        self.queue.add(deployment_id)

    async def run(self) -> None:
        """Run until `stop()`; in-flight reconciles get `shutdown_grace_seconds` to finish."""
        interval = self.notifier.watchdog_interval_seconds
        watchdog = (
            asyncio.create_task(sdnotify.keep_alive(self.notifier, self.health.live, interval))
            if interval
            else None
        )
        try:
            await self._run()
        finally:
            self.metrics.leader.set(0)
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)

    async def _run(self) -> None:
        s = self.settings
        log.info(
            "controller_starting",
            resync_seconds=s.resync_seconds,
            workers=s.workers,
            stop_timeout_seconds=s.stop_timeout_seconds,
        )
        elector = startup.elector(s)
        # On SQLite the file lock is taken before anything touches the file, migrations
        # included: a second controller must refuse before it can change the schema.
        held = await elector.acquire(self._stop) if isinstance(elector, SqliteLock) else None
        try:
            self.notifier.status("starting: connecting to the database")
            await startup.wait_for_store(
                s,
                self.store,
                health=self.health,
                notifier=self.notifier,
                stop=self._stop,
                sleep=self._sleep,
            )
        except BaseException:
            if held is not None:
                await held.release()
            raise
        announced = False
        while not self._stop.is_set():
            if not announced:
                # A standby is healthy and ready to take over: READY=1 now, not on election.
                self.health.set_role(Role.STANDBY)
                self.notifier.ready("standing by: waiting to lead")
                announced = True
            lease, held = held or await elector.acquire(self._stop), None
            if lease is None:
                break
            try:
                await self._lead(lease)
            except (errors.ControllerError, SQLAlchemyError) as exc:
                # The database went away (or a successor took over) as the term began: stand
                # down and take part in the next election instead of dying. (A database error
                # the store did not recognise as a lost connection lands here too.)
                reason = exc.reason if isinstance(exc, errors.ControllerError) else str(exc)
                log.warning("leader_term_failed", epoch=lease.epoch, error=reason)
                await self._sleep(self.settings.leader_retry_seconds)
            finally:
                await lease.release()
                self.store.fence(None)
            if not self._stop.is_set():
                log.warning("leader_stepped_down", epoch=lease.epoch)
                self.health.set_role(Role.STANDBY)
                self.metrics.leader.set(0)

    async def _lead(self, lease: Lease) -> None:
        """Act as the leader until stopped or deposed; then stop acting before returning."""
        s = self.settings
        self.store.fence(lease.epoch if lease.epoch else None)
        self.reconciler.new_term()
        self._deposed = asyncio.Event()
        self._ended = asyncio.Event()  # this term as leader is over (stop, loss, deposal)
        # Docker event streams: a container that dies, is OOM-killed, removed or turns
        # unhealthy gets its deployment reconciled within a second, not at the next resync.
        self._events = EventWatcher(
            lambda: self.nodes.records.values(),
            self._on_container_event,
            lambda _node_id: self.resync_now(),
            on_exit=self.reconciler.note_exit,
            # Reach engines as the runtime does (TLS per node); the runtime's heartbeat has
            # already warned about a plain TCP node before any stream follows it.
            connector=EngineConnector.from_settings(s, warn_plaintext=False),
            # Which engine each node runs, as its probe found (Podman names events its way).
            engine_of=self._engine_of,
        )
        self.queue = WorkQueue(observer=self.metrics.workqueue)
        await self.nodes.register_local()
        await self.nodes.refresh()
        workers = [asyncio.create_task(self._worker(i)) for i in range(s.workers)]
        timers = [
            asyncio.create_task(self._resync_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._storage_loop()),
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._events.run(self._ended)),
        ]
        log.info("controller_started", nodes=len(self.nodes.records), epoch=lease.epoch)
        self.health.set_role(Role.LEADER)
        self.metrics.leader.set(1)
        self.notifier.status(f"running: leader, {len(self.nodes.records)} nodes")
        ends = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(lease.lost.wait()),
            asyncio.ensure_future(self._deposed.wait()),
        ]
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        self._ended.set()
        for e in ends:
            e.cancel()
        deposed = not self._stop.is_set()
        log.info("controller_stopping", in_flight=self.queue.processing, deposed=deposed)
        # Timers and workers see the stop and finish what they are doing; whatever still runs
        # after the grace period (at once when deposed: a successor may be acting) is
        # cancelled, its replica left `starting` or `stopping` for the next leader.
        self.queue.shutdown()
        tasks = [*timers, *workers]
        if deposed:
            for t in tasks:
                t.cancel()
        _, pending = await asyncio.wait(tasks, timeout=s.shutdown_grace_seconds)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("controller_stopped", abandoned=len(pending))

    def _engine_of(self, node: NodeRecord) -> EngineFlavour | None:
        info = self.nodes.info(node.id)
        try:
            return EngineFlavour(info.engine) if info is not None else None
        except ValueError:  # a runtime that does not tell (hollow): ask the engine
            return None

    async def _watch_loop(self) -> None:
        """Instant wake-ups: NOTIFY on PostgreSQL, the updated_at poll on SQLite."""
        if is_sqlite(self.settings.database_url):
            await SqlitePoller(self.store, self.queue.add).run(self._ended)
        else:
            await PgListener(self.settings.database_url, self.queue.add, self.resync_now).run(
                self._ended
            )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _worker(self, index: int) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            outcome = ReconcileResult.ERROR
            started = time.perf_counter()
            try:
                result = await self.reconciler.reconcile(key)
            except errors.Deposed as exc:
                log.error("leader_deposed", error=exc.reason)
                self._deposed.set()
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
                requeue = result.requeue_after is not None
                outcome = ReconcileResult.REQUEUE if requeue else ReconcileResult.SUCCESS
            finally:
                self.metrics.observe_reconcile(outcome, time.perf_counter() - started)
                self.queue.done(key)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._sleep(self.settings.node_heartbeat_seconds)
            if self._ended.is_set():
                return
            try:
                await self.nodes.refresh()
                if self.nodes.take_openings():
                    self.reconciler.rebalance.opened(self._clock())
                    # A node joined, came back or was uncordoned: every deployment's spread
                    # is looked at (the resync triage asks the rebalance decision).
                    self.resync_now()
                for deployment_id, reason in (await self.nodes.evict()).items():
                    self.reconciler.note_problem(deployment_id, reason)
                    self.queue.add(deployment_id)
            except errors.ControllerError as exc:
                log.warning("heartbeat_failed", error=exc.reason)

    async def _storage_loop(self) -> None:
        """The storage monitor (controller.diskwatch), on its own cadence."""
        interval = self.settings.storage_check_seconds
        if interval <= 0:
            return
        while True:
            await self._sleep(interval)
            if self._ended.is_set():
                return
            try:
                result = await self.storage.check()
            except Exception:
                log.exception("storage_check_crashed")
                continue
            for deployment_id in result.over:
                self.queue.add(deployment_id)

    async def _resync_loop(self) -> None:
        await self.resyncs.repeat(
            self.queue, kick=self._resync_now, ended=self._ended, deposed=self._deposed
        )

    async def resync(self) -> int:
        """One full pass (controller.resync_pass); returns how many deployments were enqueued."""
        return await self.resyncs.run(self.queue)
