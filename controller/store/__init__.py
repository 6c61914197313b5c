"""Every SQL statement the daemon runs, returning frozen model values.

One class owns the database so that the rest of the controller never sees a row, a session or
a driver exception. Reads load whole deployments in a constant number of queries (no N+1);
each write method is one transaction. Replica transitions are guarded by the status they
expect, so a write based on a stale read changes nothing instead of clobbering a newer state.
Transient failures (connection lost, server restarting) are retried here with tenacity, with
a bounded number of attempts, and then surface as `errors.StoreUnavailable`.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import structlog
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    String,
    Table,
    and_,
    column,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.types import NullType
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller import errors, readmodel
from controller.coalesce import Coalescer
from controller.model import (
    Deployment,
    DeploymentStatus,
    EngineInfo,
    NodeRecord,
    NodeStatus,
    ProgressState,
    Replica,
    ReplicaStatus,
    Resources,
)
from controller.ports import ReplicaChange, Transition
from controller.readmodel import (
    CONTROL_PLANE,
    DEPLOYMENTS,
    HISTORY,
    NODES,
    REPLICAS,
    RESOURCES,
    STATE,
)
from controller.storage import StorageLimits
from schema.engine import writer
from schema.enums import TERMINAL_REPLICA_STATUSES
from schema.models import REASON_MAX_LENGTH, UUIDType

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

_NOT_TERMINAL = readmodel.NOT_TERMINAL
_LIVE = readmodel.LIVE
DB_RETRY_ATTEMPTS = 5
# Most ids in one IN list (well under SQLite's bound-parameter limit).
_IN_CHUNK = 500


# SQLSTATEs that mean "this connection or server is going or gone", whatever exception class
# the driver maps them to: connection exceptions (class 08), and the server shutting down or
# starting up (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, seen as
# a plain DBAPIError from asyncpg when a connect meets a stopping server).
_GONE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return bool(exc.connection_invalidated) or sqlstate.startswith(_GONE_SQLSTATES)
    return isinstance(exc, OSError | ConnectionError)


def _retrying(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Retry one store call on connection-level failures: 5 tries, jittered, then give up."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_transient),
                stop=stop_after_attempt(DB_RETRY_ATTEMPTS),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
                reraise=False,
            ):
                with attempt:
                    return await fn(*args, **kwargs)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise errors.StoreUnavailable(f"database unavailable: {cause}") from cause
        raise AssertionError("unreachable: tenacity either returns or raises")

    return wrapper


def _clip(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX_LENGTH else reason[: REASON_MAX_LENGTH - 1] + "…"


_NOT_TERMINAL_SQL = ", ".join(f"'{status}'" for status in _NOT_TERMINAL)
# `load_active`: every this many passes, a full reload whatever the fingerprints say.
FULL_RELOAD_EVERY = 12
# While rows are unusable (SQLite), a scan this often sees whether they were fixed.
_RESCAN_SECONDS = 5.0
_FINGERPRINTS = text(
    f"""
        SELECT d.id AS id,
               md5(min(d.xmin::text) || '/' || coalesce(min(res.xmin::text), '-') || '/' ||
                   coalesce(min(st.xmin::text), '-') || '/' ||
                   coalesce(string_agg(r.id::text || ':' || r.xmin::text, ',' ORDER BY r.id), ''))
               AS fp
        FROM {DEPLOYMENTS.name} AS d
        LEFT JOIN {RESOURCES.name} AS res ON res.deployment_id = d.id
        LEFT JOIN {STATE.name} AS st ON st.deployment_id = d.id
        LEFT JOIN {REPLICAS.name} AS r
               ON r.deployment_id = d.id AND r.status IN ({_NOT_TERMINAL_SQL})
        WHERE d.status <> '{DeploymentStatus.DELETED.value}'
        GROUP BY d.id
        """
).columns(column("id", UUIDType()), column("fp", String))


@dataclass(frozen=True, slots=True)
class _NewReplicas:
    """Rows to insert as `pending`: one write of a group-committed round."""

    rows: tuple[Replica, ...]


@dataclass(frozen=True, slots=True)
class _StatusWrite:
    """A deployment's status change and its history row (see `Store.record_status`)."""

    deployment_id: uuid.UUID
    old: DeploymentStatus
    new: DeploymentStatus
    reason: str
    now: datetime
    history_id: uuid.UUID
    state: ProgressState | None = None  # written with the status, only if the status is


@dataclass(frozen=True, slots=True)
class _StateWrite:
    """The controller's persisted progress alone (backoff moved, status unchanged)."""

    deployment_id: uuid.UUID
    state: ProgressState


_Write = _NewReplicas | _StatusWrite | _StateWrite


def _columns(change: ReplicaChange) -> tuple[tuple[str, Any], ...]:
    """The replica columns a typed change sets, in a fixed order (one UPDATE shape per kind)."""
    out: list[tuple[str, Any]] = []
    for name in ("node_id", "spec_hash", "container_id", "started_at", "stopped_at"):
        value = getattr(change, name)
        if value is not None:
            out.append((name, value))
    if change.crash is not None:
        out.append(("restart_count", change.crash.restart_count))
        out.append(("last_exit_code", change.crash.exit_code))
        out.append(("oom_killed", change.crash.oom_killed))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Unusable:
    """A row the controller cannot read: which, where, and why, in the operator's terms."""

    table: str
    rowid: int
    row_id: str  # the row's id as stored (text, perhaps malformed itself)
    column: str
    value: str
    problem: str
    deployment_id: uuid.UUID | None  # the deployment it belongs to, when that is readable

    @property
    def reason(self) -> str:
        return (
            f"unusable row: {self.table}.{self.column} = {self.value} {self.problem} "
            f"(row {self.row_id}); deployment held until the row is fixed"
        )


# What `Store.find_unusable` reads per table: the columns the loads read.
_SCANNED: dict[str, tuple[Table, str | None]] = {
    "deployments": (DEPLOYMENTS, "id"),
    "deployment_resources": (RESOURCES, "deployment_id"),
    "deployment_replicas": (REPLICAS, "deployment_id"),
    "deployment_status_history": (HISTORY, "deployment_id"),
    "deployment_controller_state": (STATE, "deployment_id"),
    "nodes": (NODES, None),
}


def _problem(col: Any, value: Any, processor: Any) -> str | None:
    """Why `value`, as the driver returned it, is no value of `col`'s type; None if it is."""
    if value is None:
        return None
    if isinstance(col.type, Integer) and not isinstance(value, int):
        return "is not an integer"
    if isinstance(col.type, Float) and not isinstance(value, int | float):
        return "is not a number"
    try:
        parsed = processor(value) if processor is not None else value
    except (ValueError, TypeError) as exc:
        return f"cannot be read ({type(exc).__name__}: {exc})"
    if col.name == "labels" and not isinstance(parsed, dict):
        return "is not a JSON object"
    return None


def _labels(raw: Any) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """A node's labels from the stored JSON; a value that is not an object reads as no labels,
    with the problem (plain SQL can write any JSON there, and on SQLite any text)."""
    if raw is None:
        return (), None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return (), f"labels = {raw[:80]!r} is not JSON"
    if not isinstance(raw, dict):
        return (), f"labels = {json.dumps(raw)[:80]} is not a JSON object"
    return tuple(sorted((str(k), str(v)) for k, v in raw.items())), None


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        # The leader's fencing epoch; None: not fenced (SQLite, whose file lock already
        # guarantees a single controller, and tools).
        self._epoch: int | None = None
        self._transitions: Coalescer[tuple[Transition, ...], set[uuid.UUID]] = Coalescer(
            self._transition_rounds
        )
        self._loads: Coalescer[uuid.UUID, Deployment | None] = Coalescer(self._load_rounds)
        self._writes: Coalescer[_Write, object] = Coalescer(self._write_rounds)
        # `load_active`'s previous pass: fingerprint and deployment per id.
        self._snapshot: dict[uuid.UUID, tuple[str, Deployment]] = {}
        self._passes = 0
        # Rows the loads cannot read (SQLite, where a column holds whatever was written), found
        # when a load fails on one: left out of every load until fixed, each reported once.
        self._unusable: dict[tuple[str, int], Unusable] = {}
        self._reported: set[tuple[str, int, str, str]] = set()
        self._scanned_at = 0.0
        # Node label problems already logged, by node name.
        self._label_problems: dict[str, str] = {}

    def fence(self, epoch: int | None) -> None:
        """Check every later write against `epoch` (see controller/leader.py)."""
        self._epoch = epoch if self._engine.dialect.name == "postgresql" else None

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, refused once another leader's epoch is current.

        The share lock on the control_plane row makes a successor's epoch bump wait for this
        transaction, and every transaction after the bump sees the new epoch and fails."""
        async with self._writer.begin() as conn:
            if self._epoch is not None:
                current = (
                    await conn.execute(
                        select(CONTROL_PLANE.c.epoch)
                        .where(CONTROL_PLANE.c.id == 1)
                        .with_for_update(read=True)
                    )
                ).scalar_one_or_none()
                if current != self._epoch:
                    raise errors.Deposed(
                        f"fencing epoch {self._epoch} is stale (current: {current})"
                    )
            yield conn

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def group_commit(self) -> dict[str, tuple[int, int]]:
        """(rounds, items) per coalesced kind of call, for benchmarks: items/rounds is the
        batch size the load produced."""
        return {
            "transitions": (self._transitions.rounds, self._transitions.items),
            "loads": (self._loads.rounds, self._loads.items),
            "writes": (self._writes.rounds, self._writes.items),
        }

    async def close(self) -> None:
        await self._engine.dispose()

    @_retrying
    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(select(1))

    # --- rows the controller cannot read ------------------------------------------------------

    @property
    def held(self) -> frozenset[uuid.UUID]:
        """Deployments left out of every load because one of their rows is unusable: their
        containers are theirs all the same (not strays), and nothing is changed for them."""
        return frozenset(u.deployment_id for u in self._unusable.values() if u.deployment_id)

    def _skip(self, table: Table) -> ColumnElement[bool]:
        """Leave out `table`'s unusable rows, and every row of a held deployment."""
        if not self._unusable:
            return true()
        rowids = [u.rowid for u in self._unusable.values() if u.table == table.name]
        held = list(self.held)
        conditions: list[ColumnElement[bool]] = []
        if rowids:
            conditions.append(literal_column(f"{table.name}.rowid").not_in(rowids))
        key = _SCANNED.get(table.name, (table, None))[1]
        if held and key is not None:
            conditions.append(table.c[key].not_in(held))
        return and_(true(), *conditions)

    async def find_unusable(self) -> list[Unusable]:
        """Scan the tables the loads read for values their types cannot hold (SQLite only:
        PostgreSQL's types refuse them on write). Newly found rows are logged once as
        `row_unusable`, and the deployment each belongs to gets the reason in its history;
        fixed rows drop out of the set, so the loads take them again."""
        if self._engine.dialect.name != "sqlite":
            return []
        found: dict[tuple[str, int], Unusable] = {}
        dialect = self._engine.dialect
        async with self._engine.connect() as conn:
            for name, (table, key) in _SCANNED.items():
                cols = list(table.columns)
                rows: Sequence[Any] = (
                    await conn.execute(
                        select(
                            literal_column("rowid"),
                            *(type_coerce(c, NullType()).label(c.name) for c in cols),
                        ).select_from(table)
                    )
                ).all()
                processors = [c.type._cached_result_processor(dialect, None) for c in cols]
                id_processor = processors[cols.index(table.c.id)]
                for row in rows:
                    for col, processor, value in zip(cols, processors, row[1:], strict=True):
                        problem = _problem(col, value, processor)
                        if problem is None:
                            continue
                        owner: uuid.UUID | None = None
                        if key is not None:
                            raw_key = getattr(row, key)
                            if _problem(table.c[key], raw_key, id_processor) is None:
                                owner = uuid.UUID(str(raw_key))
                        found[(name, row[0])] = Unusable(
                            name, row[0], str(row.id), col.name, repr(value), problem, owner
                        )
                        break
        self._unusable = found
        self._scanned_at = time.monotonic()
        await self._report_unusable(list(found.values()))
        return list(found.values())

    async def _report_unusable(self, rows: list[Unusable]) -> None:
        keys = {(u.table, u.rowid, u.column, u.value) for u in rows}
        self._reported &= keys  # a fixed row that breaks again is reported again
        for u in rows:
            key = (u.table, u.rowid, u.column, u.value)
            if key in self._reported:
                continue
            self._reported.add(key)
            log.warning(
                "row_unusable",
                table=u.table,
                rowid=u.rowid,
                id=u.row_id,
                column=u.column,
                value=u.value,
                problem=u.problem,
                deployment_id=str(u.deployment_id) if u.deployment_id else None,
            )
            if u.deployment_id is not None:
                await self._note(u.deployment_id, u.reason)

    async def _note(self, deployment_id: uuid.UUID, reason: str) -> None:
        """A reason-only history row (status unchanged) for a held deployment."""
        d = DEPLOYMENTS
        async with self._engine.connect() as conn:
            status = (
                await conn.execute(
                    select(type_coerce(d.c.status, String)).where(d.c.id == deployment_id)
                )
            ).scalar_one_or_none()
        if status in {s.value for s in DeploymentStatus}:
            current = DeploymentStatus(status)
            await self.record_status(deployment_id, current, current, reason, datetime.now(UTC))

    async def _tolerant(self, load: Callable[[], Awaitable[T]]) -> T:
        """Run a load; on SQLite, a row it cannot read is found, reported and left out, and the
        load runs again without it, instead of failing every pass."""
        if self._engine.dialect.name != "sqlite":
            return await load()
        if self._unusable and time.monotonic() - self._scanned_at >= _RESCAN_SECONDS:
            await self.find_unusable()  # fixed rows come back
        # What this load leaves out: a concurrent load may find a bad row between here and
        # our failure, and then our own scan finds nothing new, yet our load did not skip it.
        before = set(self._unusable)
        try:
            return await load()
        except (ValueError, TypeError):
            await self.find_unusable()
            if set(self._unusable) <= before:
                raise
            return await load()

    # --- reads -----------------------------------------------------------------------------

    @_retrying
    async def load_deployments(self, ids: Sequence[uuid.UUID] | None = None) -> list[Deployment]:
        """Deployments not yet `deleted` (all of them, or `ids`), with resources, non-terminal
        replicas, newest history row and the controller's persisted progress: three queries
        whatever the count (the progress joins the first). Held deployments
        (see `held`) are left out."""
        return await self._tolerant(lambda: self._load_deployments(ids))

    async def _load_deployments(self, ids: Sequence[uuid.UUID] | None) -> list[Deployment]:
        d, rep, st = DEPLOYMENTS, REPLICAS, STATE
        scope: ColumnElement[bool]
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            scope = d.c.id.in_(ids)
        else:
            scope = d.c.status != DeploymentStatus.DELETED.value
        scope = and_(scope, self._skip(d))
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    readmodel.deployments_with_resources(scope)
                    .add_columns(*_STATE_COLUMNS)
                    .outerjoin(st, st.c.deployment_id == d.c.id)
                )
            ).all()
            replica_rows = (
                await conn.execute(
                    select(rep)
                    .join(d, d.c.id == rep.c.deployment_id)
                    .where(scope, rep.c.status.in_(_NOT_TERMINAL))
                    .order_by(rep.c.created_at, rep.c.id)
                )
            ).all()
            last_rows = (await conn.execute(readmodel.newest_history(scope))).all()
        replicas: dict[uuid.UUID, list[Replica]] = {}
        # PostgreSQL's column types already guarantee numbers: the check costs it nothing.
        checked = self._engine.dialect.name == "sqlite"
        for r in replica_rows:
            if checked:
                _numbers(r, _REPLICA_NUMBERS)
            replicas.setdefault(r.deployment_id, []).append(_replica(r))
        last = {row.deployment_id: row.reason for row in last_rows}
        out = []
        for row in rows:
            if checked:
                _numbers(row, _DEPLOYMENT_NUMBERS)
                _numbers(row, _STATE_NUMBERS)
            resources = readmodel.resources_of(row)
            out.append(
                Deployment(
                    id=row.id,
                    name=row.name,
                    user_id=row.user_id,
                    image=row.container_image,
                    target_replicas=row.target_replicas,
                    resources=resources,
                    status=DeploymentStatus(row.status),
                    updated_at=row.updated_at,
                    deleted_at=row.deleted_at,
                    replicas=tuple(replicas.get(row.id, ())),
                    last_reason=last.get(row.id),
                    generation=row.generation or 1,
                    progress=_progress(row),
                )
            )
        return out

    @_retrying
    async def load_active(self) -> list[Deployment]:
        """Every deployment not yet deleted, for a resync pass.

        On PostgreSQL a pass re-reads only what changed: one query fingerprints each
        deployment by the row versions (`xmin`) of its deployment, resources and live replica
        rows, and only deployments whose fingerprint moved are loaded again; the rest come
        from the previous pass. Any write makes a new row version, so nothing changed is
        missed; still, every `FULL_RELOAD_EVERY`-th pass reloads everything, as an informer
        relists. A fingerprint taken before its load can only make the next pass reload more.
        """
        if self._engine.dialect.name != "postgresql":
            return await self.load_deployments()
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_FINGERPRINTS)).all()
        prints = {row.id: row.fp for row in rows}
        self._passes += 1
        cached = self._snapshot if self._passes % FULL_RELOAD_EVERY else {}
        stale = [i for i, fp in prints.items() if i not in cached or cached[i][0] != fp]
        if len(stale) > len(prints) // 2:
            fresh = {d.id: d for d in await self.load_deployments()}
        else:
            fresh = {}
            for start in range(0, len(stale), _IN_CHUNK):
                for d in await self.load_deployments(stale[start : start + _IN_CHUNK]):
                    fresh[d.id] = d
        snapshot: dict[uuid.UUID, tuple[str, Deployment]] = {}
        for deployment_id, fp in prints.items():
            loaded = fresh.get(deployment_id)
            if loaded is not None:
                snapshot[deployment_id] = (fp, loaded)
            elif deployment_id in cached and deployment_id not in stale:
                snapshot[deployment_id] = cached[deployment_id]
        self._snapshot = snapshot
        return [d for _, d in snapshot.values()]

    async def load_deployment(self, deployment_id: uuid.UUID) -> Deployment | None:
        """One deployment; loads asked for at once share one read of three queries."""
        return await self._loads.submit(deployment_id)

    async def _load_rounds(self, ids: Sequence[uuid.UUID]) -> list[Deployment | None]:
        found = {d.id: d for d in await self.load_deployments(list(dict.fromkeys(ids)))}
        return [found.get(i) for i in ids]

    @_retrying
    async def nodes(self) -> list[NodeRecord]:
        return await self._tolerant(self._nodes)

    async def _nodes(self) -> list[NodeRecord]:
        n = NODES
        # Labels as the stored text: JSON that is no object (or, on SQLite, no JSON at all)
        # costs the node its labels, not the whole read.
        cols = [c for c in n.columns if c.name != "labels"]
        raw_labels = type_coerce(n.c.labels, String).label("labels")
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*cols, raw_labels).where(self._skip(n)).order_by(n.c.name)
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
        labels, problem = _labels(raw)
        if problem is None:
            self._label_problems.pop(node, None)
        elif self._label_problems.get(node) != problem:
            self._label_problems[node] = problem
            log.warning(
                "row_unusable",
                table="nodes",
                node=node,
                column="labels",
                problem=problem,
                effect="the node is used without labels until the value is a JSON object",
            )
        return labels

    @_retrying
    async def node_usage(self) -> dict[uuid.UUID, Resources]:
        """What live replicas hold on each node: the scheduler's `usage`."""
        return await self._tolerant(self._node_usage)

    async def _node_usage(self) -> dict[uuid.UUID, Resources]:
        query = readmodel.node_usage(self._skip(REPLICAS))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.node_id: readmodel.usage_of(row) for row in rows}

    async def changed_since(self, since: datetime | None) -> list[tuple[uuid.UUID, datetime]]:
        """Deployments whose row or resources row changed after `since` (every one when None),
        each with its newest change: the SQLite poller's question (controller/watch.py).

        Values are read raw and parsed one by one: a row an operator wrote that cannot be read
        (see `find_unusable`, which reports it) is left out, not a failure every second."""
        d, res = DEPLOYMENTS, RESOURCES
        changed = union_all(
            select(d.c.id.label("id"), d.c.updated_at.label("at")),
            select(res.c.deployment_id.label("id"), res.c.updated_at.label("at")),
        ).subquery()
        query = select(
            type_coerce(changed.c.id, NullType()), type_coerce(func.max(changed.c.at), NullType())
        ).group_by(changed.c.id)
        if since is not None:
            query = query.where(changed.c.at > since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            parse_at = d.c.updated_at.type._cached_result_processor(conn.dialect, None)
        out = []
        for raw_id, raw_at in rows:
            try:
                deployment_id = uuid.UUID(str(raw_id))
                at = parse_at(raw_at) if parse_at is not None else raw_at
            except (ValueError, TypeError):
                continue
            if isinstance(at, datetime):
                out.append((deployment_id, at))
        return out

    # --- writes ----------------------------------------------------------------------------

    async def create_replicas(
        self, deployment_id: uuid.UUID, count: int, now: datetime
    ) -> list[Replica]:
        new = [
            Replica(
                id=uuid.uuid4(),
                deployment_id=deployment_id,
                status=ReplicaStatus.PENDING,
                created_at=now,
            )
            for _ in range(count)
        ]
        if not new:
            return []
        await self._writes.submit(_NewReplicas(tuple(new)))
        return new

    async def transition(self, changes: Iterable[Transition]) -> set[uuid.UUID]:
        """Apply guarded replica transitions atomically; returns the ids that moved.

        Calls made while another is being written are group-committed: one transaction, one
        fencing check and (on PostgreSQL) one UPDATE per kind of transition for all of them."""
        batch = tuple(changes)
        if not batch:
            return set()
        return await self._transitions.submit(batch)

    async def _transition_rounds(
        self, calls: Sequence[tuple[Transition, ...]]
    ) -> list[set[uuid.UUID] | Exception]:
        return await _isolating(calls, self._transition_together)

    async def _write_rounds(self, writes: Sequence[_Write]) -> list[object | Exception]:
        return await _isolating(writes, self._write_together)

    @_retrying
    async def _write_together(self, writes: Sequence[_Write]) -> list[object]:
        async with self._write() as conn:
            if conn.dialect.name == "postgresql":
                return await _pg_writes(conn, writes)
            return [await _write_one(conn, one) for one in writes]

    @_retrying
    async def _transition_together(
        self, calls: Sequence[tuple[Transition, ...]]
    ) -> list[set[uuid.UUID]]:
        flat = [change for call in calls for change in call]
        async with self._write() as conn:
            moved = await _apply_transitions(conn, flat)
        return [{c.replica_id for c in call if c.replica_id in moved} for call in calls]

    @_retrying
    async def fail_replicas_on_node(
        self, node_id: uuid.UUID, now: datetime
    ) -> dict[uuid.UUID, int]:
        """Eviction: live replicas on a lost node become failed, stopping ones stopped (their
        container cannot be reached to stop). Returns the count per deployment touched."""
        rep = REPLICAS
        async with self._write() as conn:
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

    async def record_status(
        self,
        deployment_id: uuid.UUID,
        old: DeploymentStatus,
        new: DeploymentStatus,
        reason: str,
        now: datetime,
        state: ProgressState | None = None,
    ) -> bool:
        """Write the status, its history row and the progress `state` it belongs to in one
        transaction, only if the status is still `old` (else none of them).

        `updated_at` is set to the history row's time: the status is news for readers that
        poll `updated_at`. It bumps no generation (see `controller.generation`).
        """
        state = _clip_state(state) if state is not None else None
        write = _StatusWrite(deployment_id, old, new, _clip(reason), now, uuid.uuid4(), state)
        return bool(await self._writes.submit(write))

    async def save_progress(self, deployment_id: uuid.UUID, state: ProgressState) -> None:
        """Persist progress that changed without a status change (a backoff step, say)."""
        await self._writes.submit(_StateWrite(deployment_id, _clip_state(state)))

    @_retrying
    async def prune_terminal_replicas(self, keep: int) -> int:
        """Keep the newest `keep` stopped/failed rows per deployment; delete older ones."""
        rep = REPLICAS
        ranked = (
            select(
                rep.c.id,
                func.row_number()
                .over(
                    partition_by=rep.c.deployment_id,
                    order_by=(
                        func.coalesce(rep.c.stopped_at, rep.c.created_at).desc(),
                        rep.c.id.desc(),
                    ),
                )
                .label("rn"),
            )
            .where(rep.c.status.in_([s.value for s in TERMINAL_REPLICA_STATUSES]))
            .subquery()
        )
        async with self._write() as conn:
            result = await conn.execute(
                delete(rep).where(rep.c.id.in_(select(ranked.c.id).where(ranked.c.rn > keep)))
            )
        return int(result.rowcount or 0)

    @_retrying
    async def register_node_if_none(
        self, name: str, docker_url: str, info: EngineInfo | None
    ) -> bool:
        """The embedded default: the local engine becomes the first node, only in an empty table."""
        n = NODES
        async with self._write() as conn:
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

    @_retrying
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
        async with self._write() as conn:
            for values_key, ids in groups.items():
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    await conn.execute(update(n).where(n.c.id.in_(chunk)).values(dict(values_key)))

    async def run(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """For tests and tools: run `fn` in one transaction on this store's engine."""
        async with self._write() as conn:
            return await fn(conn)


async def _isolating(
    items: Sequence[T], together: Callable[[Sequence[T]], Awaitable[list[R]]]
) -> list[R | Exception]:
    """A group-committed round: all `items` in one transaction; should that fail on a row
    one of them got wrong (a node deleted under a placement, say), each runs alone, so the
    others still commit and only the culprit's caller hears of it."""
    try:
        return list(await together(items))
    except DBAPIError:
        if len(items) == 1:
            raise
    out: list[R | Exception] = []
    for one in items:
        try:
            out.extend(await together([one]))
        except (DBAPIError, errors.ControllerError) as exc:
            out.append(exc)
    return out


async def _write_one(conn: AsyncConnection, write: _Write) -> object:
    """One write as its own statements (SQLite, where a statement costs no round trip)."""
    if isinstance(write, _NewReplicas):
        rows = [
            {
                "id": r.id,
                "deployment_id": r.deployment_id,
                "status": r.status.value,
                "created_at": r.created_at,
            }
            for r in write.rows
        ]
        await conn.execute(insert(REPLICAS), rows)
        return None
    if isinstance(write, _StateWrite):
        await _sqlite_save_state(conn, write.deployment_id, write.state)
        return None
    d = DEPLOYMENTS
    result = await conn.execute(
        update(d)
        .where(d.c.id == write.deployment_id, d.c.status == write.old.value)
        .values(status=write.new.value, updated_at=write.now)
    )
    if not result.rowcount:
        return False
    await conn.execute(
        insert(HISTORY).values(
            id=write.history_id,
            deployment_id=write.deployment_id,
            old_status=write.old.value,
            new_status=write.new.value,
            changed_by=None,
            changed_at=write.now,
            reason=write.reason,
        )
    )
    if write.state is not None:
        await _sqlite_save_state(conn, write.deployment_id, write.state)
    return True


_STATE_COLUMNS = (
    STATE.c.generation,
    STATE.c.observed_generation,
    STATE.c.crash_failures,
    STATE.c.retry_at,
    STATE.c.progress_since,
    STATE.c.stable_since,
    STATE.c.last_error,
)


def _progress(row: Any) -> ProgressState | None:
    """The persisted progress of a loaded row; None when the controller never wrote any (or
    the state row is missing: the next write makes it again)."""
    if not row.observed_generation:
        return None
    return ProgressState(
        observed_generation=row.observed_generation,
        failures=row.crash_failures,
        retry_at=row.retry_at,
        progress_since=row.progress_since,
        stable_since=row.stable_since,
        error=row.last_error,
    )


def _clip_state(state: ProgressState) -> ProgressState:
    if state.error is None or len(state.error) <= REASON_MAX_LENGTH:
        return state
    return replace(state, error=_clip(state.error))


def _state_values(state: ProgressState) -> dict[str, Any]:
    return {
        "observed_generation": state.observed_generation,
        "crash_failures": state.failures,
        "retry_at": state.retry_at,
        "progress_since": state.progress_since,
        "stable_since": state.stable_since,
        "last_error": state.error,
    }


async def _sqlite_save_state(
    conn: AsyncConnection, deployment_id: uuid.UUID, state: ProgressState
) -> None:
    """Update the deployment's state row; a missing row (deleted by hand) is made again, with
    the generation the controller saw. The generation itself is the database's to count."""
    values = _state_values(state)
    stmt = sqlite.insert(STATE).values(
        deployment_id=deployment_id, generation=state.observed_generation, **values
    )
    await conn.execute(stmt.on_conflict_do_update(index_elements=["deployment_id"], set_=values))


# PostgreSQL statements of a group-committed round take arrays (`unnest`), so each has one
# shape whatever the batch size: compiled and prepared once, not once per row count.
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _pg_type(table: Table, name: str) -> str:
    """A column's type as PostgreSQL spells it (`replica_status`, `UUID`, ...), for casts."""
    return str(table.c[name].type.compile(dialect=_PG))


_REPLICA_STATUS = _pg_type(REPLICAS, "status")
_DEPLOYMENT_STATUS = _pg_type(DEPLOYMENTS, "status")
_PG_NEW_REPLICAS = text(
    f"""
    INSERT INTO {REPLICAS.name} (id, deployment_id, status, created_at)
    SELECT v.id, v.deployment_id, CAST(:status AS {_REPLICA_STATUS}), v.created_at
    FROM unnest(CAST(:ids AS UUID[]), CAST(:deployment_ids AS UUID[]),
                CAST(:created AS TIMESTAMPTZ[])) AS v (id, deployment_id, created_at)
    """
)
# A status change and its history row for many deployments in one statement. The stamp is
# the database's transaction time, the clock its trigger uses for operator edits, so a skewed
# controller clock cannot hide an edit; `updated_at` is set to it on purpose (see
# `Store.record_status`).
_PG_STATUS_WRITES = text(
    f"""
    WITH v AS (
        SELECT * FROM unnest(
            CAST(:ids AS UUID[]), CAST(:olds AS {_DEPLOYMENT_STATUS}[]),
            CAST(:news AS {_DEPLOYMENT_STATUS}[]), CAST(:history_ids AS UUID[]),
            CAST(:reasons AS TEXT[])
        ) AS v (id, old, new, history_id, reason)
    ), moved AS (
        UPDATE {DEPLOYMENTS.name} AS d SET status = v.new, updated_at = now()
        FROM v WHERE d.id = v.id AND d.status = v.old
        RETURNING d.id
    )
    INSERT INTO {HISTORY.name}
        (id, deployment_id, old_status, new_status, changed_by, changed_at, reason)
    SELECT v.history_id, v.id, CAST(v.old AS TEXT), CAST(v.new AS TEXT), NULL, now(), v.reason
    FROM v JOIN moved ON moved.id = v.id
    RETURNING deployment_id
    """
).columns(column("deployment_id", UUIDType()))


async def _pg_writes(conn: AsyncConnection, writes: Sequence[_Write]) -> list[object]:
    """A round's writes on PostgreSQL: one INSERT for every new replica row, one statement
    for every status change. A deployment named twice (not expected: its writes are
    serial) falls back to one status statement per write, in order."""
    new = [r for w in writes if isinstance(w, _NewReplicas) for r in w.rows]
    if new:
        await conn.execute(
            _PG_NEW_REPLICAS,
            {
                "status": ReplicaStatus.PENDING.value,
                "ids": [r.id for r in new],
                "deployment_ids": [r.deployment_id for r in new],
                "created": [r.created_at for r in new],
            },
        )
    changes = [w for w in writes if isinstance(w, _StatusWrite)]
    ids = [w.deployment_id for w in changes]
    batches = [changes] if len(set(ids)) == len(ids) else [[w] for w in changes]
    moved: dict[uuid.UUID, bool] = {}
    for batch in batches:
        if not batch:
            continue
        result = await conn.execute(
            _PG_STATUS_WRITES,
            {
                "ids": [w.deployment_id for w in batch],
                "olds": [w.old.value for w in batch],
                "news": [w.new.value for w in batch],
                "history_ids": [w.history_id for w in batch],
                "reasons": [w.reason for w in batch],
            },
        )
        done: set[uuid.UUID] = set(result.scalars())
        for w in batch:
            moved[w.history_id] = w.deployment_id in done
    # Progress: of the status writes that moved (same transaction), and the ones alone. One
    # row per deployment (an upsert may touch a row once); the latest write wins.
    states: dict[uuid.UUID, ProgressState] = {}
    for one in writes:
        if isinstance(one, _StatusWrite) and not moved[one.history_id]:
            continue
        if isinstance(one, _StateWrite | _StatusWrite) and one.state is not None:
            states[one.deployment_id] = one.state
    if states:
        await conn.execute(
            _PG_SAVE_STATES,
            {
                "ids": list(states),
                "observed": [s.observed_generation for s in states.values()],
                "failures": [s.failures for s in states.values()],
                "retry": [s.retry_at for s in states.values()],
                "progress": [s.progress_since for s in states.values()],
                "stable": [s.stable_since for s in states.values()],
                "errors": [s.error for s in states.values()],
            },
        )
    return [moved[w.history_id] if isinstance(w, _StatusWrite) else None for w in writes]


_STATE_SET = ", ".join(
    f"{c} = EXCLUDED.{c}"
    for c in (
        "observed_generation",
        "crash_failures",
        "retry_at",
        "progress_since",
        "stable_since",
        "last_error",
    )
)
# Progress of many deployments in one statement; see `_sqlite_save_state` for a missing row.
_PG_SAVE_STATES = text(
    f"""
    INSERT INTO {STATE.name} (deployment_id, generation, observed_generation, crash_failures,
                              retry_at, progress_since, stable_since, last_error)
    SELECT v.id, v.observed, v.observed, v.failures, v.retry, v.progress, v.stable, v.error
    FROM unnest(CAST(:ids AS UUID[]), CAST(:observed AS BIGINT[]),
                CAST(:failures AS INTEGER[]), CAST(:retry AS TIMESTAMPTZ[]),
                CAST(:progress AS TIMESTAMPTZ[]), CAST(:stable AS TIMESTAMPTZ[]),
                CAST(:errors AS TEXT[]))
         AS v (id, observed, failures, retry, progress, stable, error)
    ON CONFLICT (deployment_id) DO UPDATE SET {_STATE_SET}
    """
)


@functools.cache
def _pg_transition_sql(names: tuple[str, ...]) -> TextualSelect:
    """The guarded UPDATE of one kind of transition (the columns it sets), over arrays."""
    types = {c: _pg_type(REPLICAS, c) for c in ("id", *names)}
    arrays = ", ".join(f"CAST(:v_{c} AS {t}[])" for c, t in types.items())
    sets = "".join(f", {c} = v.{c}" for c in names)
    return text(
        f"""
        UPDATE {REPLICAS.name} AS r SET status = CAST(:status AS {_REPLICA_STATUS}){sets}
        FROM unnest({arrays}) AS v ({", ".join(types)})
        WHERE r.id = v.id AND r.status = ANY(CAST(:expected AS {_REPLICA_STATUS}[]))
        RETURNING r.id
        """
    ).columns(column("id", UUIDType()))


async def _apply_transitions(conn: AsyncConnection, changes: list[Transition]) -> set[uuid.UUID]:
    """The guarded UPDATEs of `changes`, in order; returns the ids that moved.

    On PostgreSQL, transitions of one kind (same expected statuses, target and columns) go
    in one UPDATE over arrays. A replica named twice keeps the one-by-one order, where the
    second change must see the first. SQLite runs one statement per change (no round trips
    to save)."""
    rep = REPLICAS
    moved: set[uuid.UUID] = set()
    if conn.dialect.name != "postgresql":
        for c in changes:
            result = await conn.execute(
                update(rep)
                .where(rep.c.id == c.replica_id, rep.c.status.in_([s.value for s in c.expected]))
                .values(status=c.status.value, **dict(_columns(c.change)))
            )
            if result.rowcount:
                moved.add(c.replica_id)
        return moved
    groups: list[list[Transition]]
    ids = [c.replica_id for c in changes]
    if len(set(ids)) != len(ids):
        groups = [[c] for c in changes]
    else:
        kinds: dict[tuple[Any, ...], list[Transition]] = {}
        for c in changes:
            key = (c.expected, c.status, tuple(name for name, _ in _columns(c.change)))
            kinds.setdefault(key, []).append(c)
        groups = list(kinds.values())
    for group in groups:
        first = group[0]
        values = [_columns(c.change) for c in group]
        names = tuple(name for name, _ in values[0])
        params: dict[str, Any] = {
            "status": first.status.value,
            "expected": [s.value for s in first.expected],
            "v_id": [c.replica_id for c in group],
        }
        for k, name in enumerate(names):
            params[f"v_{name}"] = [v[k][1] for v in values]
        result = await conn.execute(_pg_transition_sql(names), params)
        moved.update(result.scalars())
    return moved


_DEPLOYMENT_NUMBERS = (
    ("target_replicas", int),
    ("cpu_cores", (int, float)),
    ("memory_mb", int),
    ("gpu_units", int),
    ("storage_gb", int),
)
_REPLICA_NUMBERS = (("restart_count", int), ("last_exit_code", int))
_STATE_NUMBERS = (("generation", int), ("observed_generation", int), ("crash_failures", int))


def _numbers(row: Any, names: Sequence[tuple[str, Any]]) -> None:
    """Refuse a row whose number columns hold text: SQLite stores 'three' in an INTEGER column
    (and its CHECKs compare text as greater than any number). The load's tolerant path then
    finds the row and leaves it out (`Store._tolerant`)."""
    for name, kind in names:
        value = getattr(row, name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise TypeError(f"{name} = {value!r} is not a number")


def _replica(row: Any) -> Replica:
    return Replica(
        id=row.id,
        deployment_id=row.deployment_id,
        status=ReplicaStatus(row.status),
        node_id=row.node_id,
        container_id=row.container_id,
        created_at=row.created_at,
        started_at=row.started_at,
        stopped_at=row.stopped_at,
        spec_hash=row.spec_hash,
        restart_count=row.restart_count,
        last_exit_code=row.last_exit_code,
        oom_killed=bool(row.oom_killed),
    )


__all__ = ["ReplicaChange", "Store", "Transition"]
