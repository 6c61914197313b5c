"""Node lifecycle: heartbeat, readiness, eviction, capacity detection.

A node row becomes `ready` after its first successful probe; a ready node whose probes keep
failing for `node_grace_seconds` becomes `not_ready` (no new placements, its replicas unknown,
never judged missing). After `eviction_seconds` more, its live replicas are marked failed
("node lost") and replaced elsewhere, one node per `eviction_interval_seconds` at most, and not
at all while more than `disruption_threshold` of the nodes look down: then the controller is
probably the one cut off, and tearing down a healthy fog would be the worst reaction (this is
Kubernetes' full-disruption mode). Capacity columns left NULL are filled in memory from the
engine's `docker info`. Transitions are a log trail (`node_ready`, `node_not_ready`,
`node_evicted`, `eviction_halted`), not a table: nodes keep no status history of their own.

Every probe also reads the engine's storage driver and version and how the runtime judged
its disk limits (controller.storage); they are written to the node's row when they change
(first probe, an engine restarted with another driver, a refused size limit), with a
`node_storage_limits` log line, so `fogctl get nodes -o wide` shows them.

Every probe also reads what the engine says of itself as labels (`fog.io/arch`, `fog.io/os`,
`fog.io/engine`: controller.placement_rules.engine_labels), and writes them into the node's
`labels` when the row does not hold them yet, the operator's labels kept. The `fog.io/`
prefix is the controller's: a value an operator wrote there is overwritten, with a
`node_label_reserved` warning (a selector on `fog.io/arch` must mean what the engine runs).

Every successful probe also asks which node ports containers that are not ours hold
(`Runtime.host_ports`): the scheduler counts them as taken (`Node.foreign_ports`). A node
whose containers cannot be listed keeps the ports last known, so a listing that fails once
does not make a port look free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller import errors
from controller.model import EngineInfo, Node, NodeRecord, NodeStatus, resolve_node
from controller.placement_rules import engine_labels
from controller.ports import NodeStore
from controller.runtime import Runtime
from controller.settings import Settings
from controller.storage import StorageLimits

log = structlog.get_logger(__name__)

LOCAL_NODE_NAME = "local"


@dataclass(frozen=True, slots=True)
class EvictionDecision:
    lost: tuple[NodeRecord, ...]
    halted: bool
    reason: str = ""


def evictions(
    nodes: Sequence[NodeRecord],
    *,
    now: datetime,
    grace: timedelta,
    eviction: timedelta,
    threshold: float,
    clock_reset_at: datetime | None = None,
) -> EvictionDecision:
    """PURE: which not-ready nodes are lost for good, unless so many are down that eviction
    must halt. Nodes never seen alive (`unknown`) count neither way. `clock_reset_at`: when a
    full disruption ended; every node's eviction clock restarts then (as Kubernetes' node
    lifecycle controller does), so nodes still coming back are not evicted at once."""
    known = [n for n in nodes if n.status is not NodeStatus.UNKNOWN]
    down = [n for n in known if n.status is NodeStatus.NOT_READY]

    def silent_since(n: NodeRecord) -> datetime | None:
        if n.last_heartbeat_at is None:
            return None
        if clock_reset_at is not None:
            return max(n.last_heartbeat_at, clock_reset_at)
        return n.last_heartbeat_at

    lost = tuple(
        n for n in down if (since := silent_since(n)) is not None and now - since > grace + eviction
    )
    if known and len(down) / len(known) > threshold:
        return EvictionDecision(
            lost, True, f"{len(down)}/{len(known)} nodes not ready (> {threshold:.0%})"
        )
    return EvictionDecision(lost, False)


def next_status(
    record: NodeRecord, probe_ok: bool, *, now: datetime, grace: timedelta
) -> NodeStatus:
    """PURE: the node's status after one probe."""
    if probe_ok:
        return NodeStatus.READY
    if record.status is NodeStatus.READY:
        last = record.last_heartbeat_at
        if last is None or now - last > grace:
            return NodeStatus.NOT_READY
    return record.status


class NodeMonitor:
    def __init__(
        self, store: NodeStore, runtime: Runtime, settings: Settings, clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._settings = settings
        self._clock = clock
        self._records: dict[uuid.UUID, NodeRecord] = {}
        self._info: dict[uuid.UUID, EngineInfo] = {}
        self._up_since: dict[uuid.UUID, datetime] = {}
        # Node ports held by containers that are not ours, as last listed.
        self._foreign_ports: dict[uuid.UUID, frozenset[tuple[int, str]]] = {}
        # The last probe failure logged per node: a node that was never ready (a TLS set-up
        # mistake, say) makes no `node_not_ready`, so its reason is logged here, once per
        # change rather than on every heartbeat.
        self._probe_errors: dict[uuid.UUID, str] = {}
        # The engine labels last written per node (what the row should hold): a replaced
        # value other than these was an operator's, and is warned about.
        self._written_labels: dict[uuid.UUID, dict[str, str]] = {}
        # Nodes whose labels could not be merged (no JSON object), with the labels read then:
        # not tried again on every heartbeat until the row changes.
        self._labels_unwritable: dict[uuid.UUID, tuple[tuple[str, str], ...]] = {}
        # `nodes()` as of the last refresh: every reconcile and placement asks for it, and
        # rebuilding a thousand Node values each time was a hot spot at fog scale. Only
        # `refresh()` changes what it is made of, and it drops this.
        self._nodes: tuple[Node, ...] | None = None
        self._last_eviction_at: datetime | None = None
        self._halted = False
        # Nodes that joined, returned to ready or were uncordoned since `take_openings`.
        self._openings: set[str] = set()
        self._clock_reset_at: datetime | None = None

    @property
    def records(self) -> Mapping[uuid.UUID, NodeRecord]:
        # No copy: a refresh replaces the dict rather than changing it, so this is a snapshot.
        return self._records

    def info(self, node_id: uuid.UUID) -> EngineInfo | None:
        """What the node's engine said of itself at its last successful probe."""
        return self._info.get(node_id)

    def nodes(self) -> list[Node]:
        return list(self.snapshot())

    def snapshot(self) -> tuple[Node, ...]:
        """The nodes as the scheduler sees them; the same tuple until a refresh changes them
        (the scheduler's index is rebuilt when it is not)."""
        if self._nodes is None:
            self._nodes = tuple(
                resolve_node(
                    r,
                    self._info.get(r.id),
                    self._up_since.get(r.id),
                    self._foreign_ports.get(r.id, frozenset()),
                )
                for r in self._records.values()
            )
        return self._nodes

    def reachable(self) -> list[NodeRecord]:
        """Nodes worth listing: those not known to be down."""
        return [r for r in self._records.values() if r.status is NodeStatus.READY]

    async def register_local(self) -> None:
        """The embedded default: an empty `nodes` table and a reachable local engine make node
        `local`, with the engine's own capacity, so `make run` works with nothing else."""
        if not self._settings.register_local_node:
            return
        if await self._store.nodes():
            return
        probe = NodeRecord(
            id=uuid.uuid4(),
            name=LOCAL_NODE_NAME,
            docker_url=self._settings.local_docker_host,
            status=NodeStatus.UNKNOWN,
        )
        try:
            info = await self._runtime.info(probe)
        except errors.ControllerError as exc:
            log.warning(
                "local_engine_unreachable",
                docker_url=probe.docker_url,
                error=exc.reason,
                hint="add nodes with fogctl node add, or start Docker",
            )
            return
        if await self._store.register_node_if_none(LOCAL_NODE_NAME, probe.docker_url, info):
            log.info(
                "node_registered",
                node=LOCAL_NODE_NAME,
                docker_url=probe.docker_url,
                cpu_cores=info.cpu_cores,
                memory_mb=info.memory_mb,
            )

    async def refresh(self) -> None:
        """Re-read node rows, probe every engine at once, write heartbeats and transitions."""
        records = await self._store.nodes()
        results = await asyncio.gather(*(self._probe(r) for r in records))
        now = self._clock()
        grace = timedelta(seconds=self._settings.node_grace_seconds)
        changes: list[tuple[uuid.UUID, dict[str, Any]]] = []
        label_writes: dict[uuid.UUID, dict[str, str]] = {}
        fresh: dict[uuid.UUID, NodeRecord] = {}
        for record, (info, error) in zip(records, results, strict=True):
            ok = info is not None
            status = next_status(record, ok, now=now, grace=grace)
            values: dict[str, Any] = {}
            facts = (record.storage_driver, record.storage_limits, record.engine_version)
            if ok:
                assert info is not None
                self._info[record.id] = info
                self._up_since.setdefault(record.id, now)
                values["last_heartbeat_at"] = now
                self._probe_errors.pop(record.id, None)
                facts = self._engine_facts(record, info, values)
                wanted = self._labels_to_write(record, info)
                if wanted:
                    label_writes[record.id] = wanted
            else:
                self._up_since.pop(record.id, None)
                if error is not None and self._probe_errors.get(record.id) != error:
                    self._probe_errors[record.id] = error
                    log.warning(
                        "node_probe_failed",
                        node=record.name,
                        status=record.status.value,
                        error=error,
                    )
            if self._opened(record, status):
                self._openings.add(record.name)
            if status is not record.status:
                values["status"] = status.value
                event = "node_ready" if status is NodeStatus.READY else "node_not_ready"
                log.info(
                    event,
                    node=record.name,
                    old_status=record.status.value,
                    new_status=status.value,
                    reason="probe succeeded" if ok else f"no heartbeat for {grace}: {error}",
                )
            if values:
                changes.append((record.id, values))
            driver, limits, version = facts
            fresh[record.id] = dataclasses.replace(
                record,
                status=status,
                last_heartbeat_at=now if ok else record.last_heartbeat_at,
                storage_driver=driver,
                storage_limits=limits,
                engine_version=version,
            )
        self._nodes = None  # probes changed `_info` and `_up_since`
        await self._store.update_nodes(changes)
        if label_writes:
            await self._write_engine_labels(label_writes, fresh)
        self._records = fresh
        self._nodes = None

    def _opened(self, record: NodeRecord, status: NodeStatus) -> bool:
        """Room for replicas appeared on this node: it is ready and schedulable now and was
        not at the last refresh (a new node, one back from not ready, one uncordoned), or its
        labels changed (a selector may match it now)."""
        if status is not NodeStatus.READY or record.unschedulable or record.draining:
            return False
        before = self._records.get(record.id)
        if before is None:
            return bool(self._records)  # the first refresh after start opens nothing new
        return (
            before.status is not NodeStatus.READY
            or before.unschedulable
            or before.draining
            or before.labels != record.labels
        )

    def take_openings(self) -> list[str]:
        """The nodes that opened for placement since the last call (their names), once."""
        opened, self._openings = sorted(self._openings), set()
        return opened

    @staticmethod
    def _engine_facts(
        record: NodeRecord, info: EngineInfo, values: dict[str, Any]
    ) -> tuple[str | None, StorageLimits | None, str | None]:
        """The node's engine facts after a probe; changed ones go into `values` (its row)."""
        driver = info.storage_driver or record.storage_driver
        limits = info.storage_limits or record.storage_limits
        version = info.server_version or record.engine_version
        if driver != record.storage_driver:
            values["storage_driver"] = driver
        if version != record.engine_version:
            values["engine_version"] = version
        if limits is not record.storage_limits:
            values["storage_limits"] = limits.value if limits is not None else None
            log.info(
                "node_storage_limits",
                node=record.name,
                storage_driver=driver,
                old=record.storage_limits.value if record.storage_limits else None,
                new=limits.value if limits is not None else None,
            )
        return driver, limits, version

    def _labels_to_write(self, record: NodeRecord, info: EngineInfo) -> dict[str, str]:
        """The engine's labels when the node's row does not hold them all (empty: it does)."""
        wanted = engine_labels(info.arch, info.os, info.engine)
        have = dict(record.labels)
        if all(have.get(k) == v for k, v in wanted.items()):
            return {}
        if self._labels_unwritable.get(record.id) == record.labels:
            return {}
        return wanted

    async def _write_engine_labels(
        self, writes: dict[uuid.UUID, dict[str, str]], fresh: dict[uuid.UUID, NodeRecord]
    ) -> None:
        """Merge each node's engine labels into its row; `fresh` records say what they hold."""
        merged = await self._store.set_engine_labels(writes)
        for node_id, wanted in writes.items():
            record = fresh[node_id]
            replaced = merged.get(node_id)
            if replaced is None:  # labels that are no JSON object: the load said so
                self._labels_unwritable[node_id] = record.labels
                continue
            self._labels_unwritable.pop(node_id, None)
            self._log_replaced(record, wanted, replaced)
            self._written_labels[node_id] = dict(wanted)
            labels = tuple(sorted({**dict(record.labels), **wanted}.items()))
            fresh[node_id] = dataclasses.replace(record, labels=labels)

    def _log_replaced(
        self, record: NodeRecord, wanted: dict[str, str], replaced: dict[str, str]
    ) -> None:
        ours = self._written_labels.get(record.id, {})
        for key, old in sorted(replaced.items()):
            if ours.get(key) == old:
                log.info(
                    "node_label_changed", node=record.name, label=key, old=old, new=wanted[key]
                )
            else:
                log.warning(
                    "node_label_reserved",
                    node=record.name,
                    label=key,
                    value=old,
                    engine_value=wanted[key],
                    reason="fog.io/ labels are the engine's: the operator's value was replaced",
                )

    async def _probe(self, record: NodeRecord) -> tuple[EngineInfo | None, str | None]:
        # A black-holed engine must not hold up the heartbeat of every other node.
        timeout = max(2.0, self._settings.node_heartbeat_seconds)
        try:
            info = await asyncio.wait_for(self._runtime.info(record), timeout)
        except errors.ControllerError as exc:
            return None, exc.reason
        except TimeoutError:
            return None, f"probe timed out after {timeout:g}s"
        await self._probe_ports(record, timeout)
        return info, None

    async def _probe_ports(self, record: NodeRecord, limit_seconds: float) -> None:
        """The node ports containers that are not ours hold; unknown keeps the last known."""
        try:
            ports = await asyncio.wait_for(self._runtime.host_ports(record), limit_seconds)
        except (errors.ControllerError, TimeoutError):
            ports = None
        if ports is None:
            return
        if ports != self._foreign_ports.get(record.id, frozenset()):
            log.info(
                "node_foreign_ports",
                node=record.name,
                ports=sorted(f"{port}/{proto}" for port, proto in ports),
            )
        self._foreign_ports[record.id] = ports

    async def evict(self) -> dict[uuid.UUID, str]:
        """Fail the live replicas of one lost node (rate-limited); returns the deployments
        touched, each with the reason to show. Nothing while eviction is halted."""
        s = self._settings
        now = self._clock()
        decision = evictions(
            list(self._records.values()),
            now=now,
            grace=timedelta(seconds=s.node_grace_seconds),
            eviction=timedelta(seconds=s.eviction_seconds),
            threshold=s.disruption_threshold,
            clock_reset_at=self._clock_reset_at,
        )
        if decision.halted:
            if not self._halted:
                log.warning("eviction_halted", reason=decision.reason)
            self._halted = True
            return {}
        if self._halted:
            log.info("eviction_resumed", detail="eviction clocks restart now")
            self._halted = False
            self._clock_reset_at = now
            return {}
        interval = timedelta(seconds=s.eviction_interval_seconds)
        touched: dict[uuid.UUID, str] = {}
        for node in decision.lost:
            if self._last_eviction_at is not None and now - self._last_eviction_at < interval:
                break
            affected = await self._store.fail_replicas_on_node(node.id, now)
            if not affected:
                continue
            self._last_eviction_at = now
            reason = f"node {node.name} lost: replicas replaced elsewhere"
            log.warning(
                "node_evicted",
                node=node.name,
                replicas=sum(affected.values()),
                deployments=len(affected),
                last_heartbeat_at=str(node.last_heartbeat_at),
            )
            touched.update(dict.fromkeys(affected, reason))
        return touched
