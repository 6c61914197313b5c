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
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from sqlalchemy.exc import SQLAlchemyError

from controller import errors, sdnotify
from controller.diskwatch import StorageMonitor
from controller.events import EventWatcher
from controller.leader import Lease, PgElector, SqliteLock
from controller.metrics import Health, Metrics, ReconcileResult, Role, stall_seconds
from controller.model import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentStatus,
    NodeRecord,
    NodeStatus,
    ReplicaStatus,
)
from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler
from controller.runtime import Runtime
from controller.runtime.docker import EngineConnector, EngineFlavour
from controller.settings import Settings
from controller.store import Store
from controller.watch import PgListener, SqlitePoller
from controller.workqueue import WorkQueue
from schema import migrate
from schema.engine import is_sqlite, mask_url, sqlite_path

log = structlog.get_logger(__name__)

# While the database is down at boot, each failed ping pushes systemd's start deadline this far
# past the next attempt: a ping against a black-holed host may itself take minutes.
START_EXTEND_SECONDS = 300.0
# The next periodic resync waits at least this many times the last pass's duration.
RESYNC_SPACING = 9.0
# ... but never more than this (unless FOG_RESYNC_SECONDS itself is longer).
RESYNC_SPACING_CAP_SECONDS = 30.0
# The replica statuses a resync pass loads (terminal rows are not loaded).
_LOADED_REPLICA_STATUSES = (*LIVE_REPLICA_STATUSES, ReplicaStatus.STOPPING)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Controller:
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
        self.nodes = NodeMonitor(store, runtime, settings, clock)
        self.reconciler = Reconciler(store, runtime, self.nodes, settings, clock)
        self.storage = StorageMonitor(runtime, self.nodes, self.reconciler)
        # Observability is optional so tests and benchmarks can build a bare Controller; the CLI
        # passes the ones it serves on FOG_METRICS_ADDR and the systemd notifier.
        self.metrics = Metrics() if metrics is None else metrics
        self.health = Health(stall_seconds(settings)) if health is None else health
        self.notifier = sdnotify.Notifier() if notifier is None else notifier
        self.queue: WorkQueue[uuid.UUID] = WorkQueue(observer=self.metrics.workqueue)
        self.metrics.watch_queue(lambda: len(self.queue), lambda: self.queue.processing)
        self._stop = asyncio.Event()
        self._deposed = asyncio.Event()
        self._ended = asyncio.Event()
        self._resync_now = asyncio.Event()
        self.passes = 0
        self.last_pass_seconds = 0.0

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
        watchdog = asyncio.create_task(self._watchdog_loop(interval)) if interval else None
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
        elector = self._elector()
        # On SQLite the file lock is taken before anything touches the file, migrations
        # included: a second controller must refuse before it can change the schema.
        held = await elector.acquire(self._stop) if isinstance(elector, SqliteLock) else None
        try:
            self.notifier.status("starting: connecting to the database")
            await self._wait_for_store()
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

    def _elector(self) -> PgElector | SqliteLock:
        url = self.settings.database_url
        path = sqlite_path(url)
        if is_sqlite(url):
            return SqliteLock(path if path is not None else Path("fog-memory.db"))
        return PgElector(url, retry_seconds=self.settings.leader_retry_seconds)

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

    async def _wait_for_store(self) -> None:
        """The database may be down at boot: wait for it rather than exiting."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.store.ping()
                if self.settings.auto_migrate:
                    await self._migrate()
                self.health.database_answered()
                return
            except errors.StoreUnavailable as exc:
                log.warning("database_unavailable", error=exc.reason, retry_in_seconds=delay)
                self.health.database_failed(exc.reason)
                # Waiting for the database is not a hung start: keep systemd's deadline ahead.
                self.notifier.extend_timeout(
                    delay + START_EXTEND_SECONDS, f"waiting for the database: {exc.reason}"
                )
                await self._sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self.health.progressed()

    async def _migrate(self) -> None:
        url = self.settings.database_url
        try:
            await migrate.upgrade_async(url)
        except (OSError, SQLAlchemyError) as exc:
            raise errors.StoreUnavailable(f"schema upgrade failed: {exc}") from exc
        log.info("schema_ready", database=mask_url(url))

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
        while not self._ended.is_set():
            # Cleared before the pass: a kick that arrives during it asks for another one.
            self._resync_now.clear()
            try:
                await self.resync()
                self.health.database_answered()
            except errors.Deposed as exc:
                log.error("leader_deposed", error=exc.reason)
                self._deposed.set()
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
            await self._wait_any(self._resync_now, spacing)
            self.health.progressed()  # the wait ended: the loop is alive (/livez)

    async def _wait_any(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep up to `seconds`, waking early on `event` or when this term as leader ends."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def resync(self) -> int:
        """One full pass; returns how many deployments were enqueued."""
        started = time.monotonic()
        enqueued = await self._resync()
        # Only a pass that ran counts: a failed one spent its time waiting, not working.
        self.last_pass_seconds = time.monotonic() - started
        return enqueued

    async def _resync(self) -> int:
        started = time.monotonic()
        # Observe first, then load: every container in the listing was made from a replica row
        # committed before the listing began, so the load below cannot miss its deployment.
        views = await self.reconciler.observe(self.nodes.reachable())
        deployments = await self.store.load_active()
        # A held deployment (a row of it unusable) is not loaded, but its containers are its own.
        known = {d.id for d in deployments} | self.store.held
        enqueued = 0
        for deployment_id in self.reconciler.triage(deployments, views):
            self.queue.add(deployment_id)
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
        pruned = await self.store.prune_terminal_replicas(self.settings.keep_terminal_replicas)
        self.passes += 1
        self._report(deployments)
        self.metrics.resync_duration.observe(time.monotonic() - started)
        # An idle pass is debug: operators read the info lines as "something happened".
        quiet = not (enqueued or strays or pruned)
        (log.debug if quiet else log.info)(
            "resync_done",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            deployments=len(deployments),
            enqueued=enqueued,
            replanned=self.reconciler.replanned,
            strays_removed=len(strays),
            replicas_pruned=pruned,
            queue_depth=len(self.queue),
        )
        return enqueued

    def _report(self, deployments: list[Deployment]) -> None:
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
            (s.value for s in _LOADED_REPLICA_STATUSES),
        )
        nodes = Counter(r.status.value for r in self.nodes.records.values())
        m.set_counts(m.nodes, nodes, (s.value for s in NodeStatus))
        self.notifier.status(
            f"{self.health.role.value}: {len(deployments)} deployments, "
            f"{nodes[NodeStatus.READY.value]}/{sum(nodes.values())} nodes ready, "
            f"{len(self.queue)} queued"
        )

    async def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 every half watchdog period, only while /livez would answer 200: a stuck
        loop withholds the pings (a blocked event loop cannot run this task at all), and
        systemd restarts the service."""
        withheld = False
        while True:
            ok, why = self.health.live()
            if ok:
                self.notifier.watchdog()
            elif not withheld:
                log.error("watchdog_withheld", reason=why)
            withheld = not ok
            await asyncio.sleep(interval)
