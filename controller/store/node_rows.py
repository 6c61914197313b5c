"""Nodes as the store reads and writes them: the node table, what replicas hold on each
node, heartbeats, and eviction of a lost node's replicas."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import String, case, func, insert, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller import readmodel
from controller.model import EngineInfo, NodeRecord, NodeStatus, ReplicaStatus, Resources
from controller.placement_rules import label_key_problem, label_value_problem
from controller.readmodel import NODES, PORTS, REPLICAS, SPECS
from controller.storage import StorageLimits
from controller.store.deployment_rows import IN_CHUNK
from controller.store.retry import retrying
from controller.store.unusable import UnusableRows

log = structlog.get_logger("controller.store")

_NOT_TERMINAL = readmodel.NOT_TERMINAL
_LIVE = readmodel.LIVE


def _json_object(raw: Any) -> dict[str, Any] | None:
    """The stored labels as a dict, or None when they are no JSON object (NULL reads as {})."""
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _labels(raw: Any) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
    """A node's labels from the stored JSON, and the problems, by label key ('' for the whole
    value), of what was left out: a value that is not an object reads as no labels (plain SQL
    can write any JSON there, and on SQLite any text); a label that breaks the label syntax
    (controller.placement_rules) is dropped alone, since a selector could never match it as
    the operator meant."""
    if raw is None:
        return (), {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return (), {"": f"labels = {raw[:80]!r} is not JSON"}
    if not isinstance(raw, dict):
        return (), {"": f"labels = {json.dumps(raw)[:80]} is not a JSON object"}
    labels: list[tuple[str, str]] = []
    problems: dict[str, str] = {}
    for key, value in raw.items():
        # JSON numbers read as their text (zone: 1 is zone=1); other kinds are no label value.
        text = (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )
        problem = label_key_problem(key)
        if problem is None and not isinstance(text, str):
            problem = f"value {json.dumps(value)[:80]} is not text"
        elif problem is None:
            problem = label_value_problem(text)
            problem = None if problem is None else f"value {text[:80]!r}: {problem}"
        if problem is None:
            labels.append((key, text))
        else:
            problems[key] = problem
    return tuple(sorted(labels)), problems


class NodeRows:
    """The store's node operations, and the label problems it has already logged."""

    def __init__(
        self,
        engine: AsyncEngine,
        begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        unusable: UnusableRows,
    ) -> None:
        self._engine = engine
        # One fenced write transaction (`Store._write`).
        self._begin = begin
        self._unusable = unusable
        # Node label problems already logged, by node name (and label key, '' for all).
        self._label_problems: dict[str, dict[str, str]] = {}

    @retrying
    async def nodes(self) -> list[NodeRecord]:
        return await self._unusable.tolerant(self._nodes)

    async def _nodes(self) -> list[NodeRecord]:
        n = NODES
        # Labels as the stored text: JSON that is no object (or, on SQLite, no JSON at all)
        # costs the node its labels, not the whole read.
        cols = [c for c in n.columns if c.name != "labels"]
        raw_labels = type_coerce(n.c.labels, String).label("labels")
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*cols, raw_labels).where(self._unusable.skip(n)).order_by(n.c.name)
                )
            ).all()
        labels = {row.id: self._node_labels(row.name, row.labels) for row in rows}
        return [
            NodeRecord(
                id=row.id,
                name=row.name,
                docker_url=row.docker_url,
                status=NodeStatus(row.status),
                cpu_cores=row.cpu_cores,
                memory_mb=row.memory_mb,
                gpu_units=row.gpu_units,
                storage_gb=row.storage_gb,
                unschedulable=bool(row.unschedulable),
                draining=bool(row.draining),
                last_heartbeat_at=row.last_heartbeat_at,
                labels=labels[row.id],
                storage_driver=row.storage_driver,
                storage_limits=StorageLimits(row.storage_limits) if row.storage_limits else None,
                engine_version=row.engine_version,
            )
            for row in rows
        ]

    def _node_labels(self, node: str, raw: Any) -> tuple[tuple[str, str], ...]:
        labels, problems = _labels(raw)
        logged = self._label_problems.get(node, {})
        for key, problem in problems.items():
            if logged.get(key) == problem:
                continue  # once per problem, not every pass
            effect = (
                "the node is used without labels until the value is a JSON object"
                if key == ""
                else f"the node is used without label {key!r} until it is fixed"
            )
            fields = {"label": key} if key else {}
            log.warning(
                "row_unusable",
                table="nodes",
                node=node,
                column="labels",
                problem=problem,
                effect=effect,
                **fields,
            )
        if problems:
            self._label_problems[node] = problems
        else:
            self._label_problems.pop(node, None)
        return labels

    @retrying
    async def node_usage(self) -> dict[uuid.UUID, Resources]:
        """What live replicas hold on each node: the scheduler's `usage`."""
        return await self._unusable.tolerant(self._node_usage)

    async def _node_usage(self) -> dict[uuid.UUID, Resources]:
        query = readmodel.node_usage(self._unusable.skip(REPLICAS))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.node_id: readmodel.usage_of(row) for row in rows}

    async def node_ports(self) -> dict[uuid.UUID, Counter[tuple[int, str]]]:
        """The host ports live replicas hold on each node, counted per replica: as
        `RunSpec.host_ports()` says, the container port on the host network, nothing on
        `none`, the published host port otherwise."""
        return await self._unusable.tolerant(self._node_ports)

    async def _node_ports(self) -> dict[uuid.UUID, Counter[tuple[int, str]]]:
        rep, port, spec = REPLICAS, PORTS, SPECS
        held = case(
            (spec.c.network == "host", port.c.container_port),
            (spec.c.network == "none", None),
            else_=port.c.host_port,
        )
        query = (
            select(
                rep.c.node_id, held.label("port"), port.c.protocol, func.count().label("holders")
            )
            .select_from(
                rep.join(port, port.c.deployment_id == rep.c.deployment_id).outerjoin(
                    spec, spec.c.deployment_id == rep.c.deployment_id
                )
            )
            .where(
                rep.c.node_id.is_not(None),
                rep.c.status.in_(_LIVE),
                held.is_not(None),
                self._unusable.skip(REPLICAS),
            )
            .group_by(rep.c.node_id, held, port.c.protocol)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[uuid.UUID, Counter[tuple[int, str]]] = {}
        for row in rows:
            out.setdefault(row.node_id, Counter())[(row.port, row.protocol)] = row.holders
        return out

    @retrying
    async def fail_replicas_on_node(
        self, node_id: uuid.UUID, now: datetime
    ) -> dict[uuid.UUID, int]:
        """Eviction: live replicas on a lost node become failed, stopping ones stopped (their
        container cannot be reached to stop). Returns the count per deployment touched."""
        rep = REPLICAS
        async with self._begin() as conn:
            rows = (
                await conn.execute(
                    select(rep.c.deployment_id, func.count())
                    .where(rep.c.node_id == node_id, rep.c.status.in_(_NOT_TERMINAL))
                    .group_by(rep.c.deployment_id)
                )
            ).all()
            await conn.execute(
                update(rep)
                .where(rep.c.node_id == node_id, rep.c.status.in_(_LIVE))
                .values(status=ReplicaStatus.FAILED.value, stopped_at=now)
            )
            await conn.execute(
                update(rep)
                .where(rep.c.node_id == node_id, rep.c.status == ReplicaStatus.STOPPING.value)
                .values(status=ReplicaStatus.STOPPED.value, stopped_at=now)
            )
        return {row[0]: int(row[1]) for row in rows}

    @retrying
    async def register_node_if_none(
        self, name: str, docker_url: str, info: EngineInfo | None
    ) -> bool:
        """The embedded default: the local engine becomes the first node, only in an empty table."""
        n = NODES
        async with self._begin() as conn:
            count = (await conn.execute(select(func.count()).select_from(n))).scalar_one()
            if count:
                return False
            await conn.execute(
                insert(n).values(
                    id=uuid.uuid4(),
                    name=name,
                    docker_url=docker_url,
                    cpu_cores=info.cpu_cores if info else None,
                    memory_mb=info.memory_mb if info else None,
                )
            )
        return True

    @retrying
    async def set_engine_labels(
        self, node_id: uuid.UUID, labels: Mapping[str, str]
    ) -> dict[str, str] | None:
        """Merge `labels` (the engine's `fog.io/` ones) into the node's row, every other key
        kept as the operator wrote it; the values replaced, by key. Read and written in one
        transaction, the row locked on PostgreSQL: a label an operator sets meanwhile
        (`fogctl node label`) is merged, not lost to a stale copy. Labels that are no JSON
        object are left alone (None, as for a node that is gone): the loads already report
        them, and the scheduler puts the engine's labels over whatever the row holds
        (`model.node_labels`)."""
        n = NODES
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    select(type_coerce(n.c.labels, String))
                    .where(n.c.id == node_id)
                    .with_for_update()
                )
            ).first()
            current = None if row is None else _json_object(row[0])
            if current is None:  # gone, or no JSON object
                return None
            replaced = {
                k: str(current[k]) for k, v in labels.items() if k in current and current[k] != v
            }
            merged = {**current, **labels}
            if merged != current:
                await conn.execute(update(n).where(n.c.id == node_id).values(labels=merged))
        return replaced

    @retrying
    async def update_nodes(self, changes: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        """Heartbeats and status changes for several nodes in one transaction.

        Nodes given the same values (every heartbeat of one probe round shares its time) share
        one UPDATE: a thousand nodes cost a handful of statements per heartbeat, not 1,000."""
        if not changes:
            return
        n = NODES
        groups: dict[tuple[tuple[str, Any], ...], list[uuid.UUID]] = {}
        for node_id, values in changes:
            groups.setdefault(tuple(sorted(values.items())), []).append(node_id)
        async with self._begin() as conn:
            for values_key, ids in groups.items():
                for start in range(0, len(ids), IN_CHUNK):
                    chunk = ids[start : start + IN_CHUNK]
                    await conn.execute(update(n).where(n.c.id.in_(chunk)).values(dict(values_key)))
