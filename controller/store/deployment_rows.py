"""Reading deployments: the queries behind `Store.load_deployments` and `load_active`.

A read loads whole deployments (resources, live replicas, newest history row, persisted
progress, the container spec and placement) in nine queries whatever the count; a resync pass
on PostgreSQL fingerprints every deployment and re-reads only the ones whose row versions moved
(`ResyncSnapshot`). Also the SQLite poller's `changed_since`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    column,
    func,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import NullType

from controller import readmodel
from controller.model import Deployment, DeploymentStatus, ProgressState, Replica, ReplicaStatus
from controller.placement_rules import NO_RULES, PlacementRules
from controller.readmodel import DEPLOYMENTS, REPLICAS, RESOURCES, STATE
from controller.runspec import EMPTY_RUN, RunSpec
from controller.store.spec_rows import read_specs
from controller.store.unusable import check_numbers
from schema.models import UUIDType

_NOT_TERMINAL = readmodel.NOT_TERMINAL
_NOT_TERMINAL_SQL = ", ".join(f"'{status}'" for status in _NOT_TERMINAL)
# `load_active`: every this many passes, a full reload whatever the fingerprints say.
FULL_RELOAD_EVERY = 12
# Most ids in one IN list (well under SQLite's bound-parameter limit).
IN_CHUNK = 500
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


async def read_deployments(
    engine: AsyncEngine,
    ids: Sequence[uuid.UUID] | None,
    skip: Callable[[Table], ColumnElement[bool]],
) -> list[Deployment]:
    """Deployments not yet `deleted` (all of them, or `ids`), whole: resources, non-terminal
    replicas, newest history row, persisted progress, the container spec (`run`) and the
    placement, in nine queries whatever the count (the progress joins the first; one per spec
    table, see `spec_rows`). `skip` leaves out rows the loads cannot read."""
    d, rep, st = DEPLOYMENTS, REPLICAS, STATE
    scope: ColumnElement[bool]
    if ids is not None:
        ids = list(ids)
        if not ids:
            return []
        scope = d.c.id.in_(ids)
    else:
        scope = d.c.status != DeploymentStatus.DELETED.value
    scope = and_(scope, skip(d))
    async with engine.connect() as conn:
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
        specs = await read_specs(conn, scope, skip)
    replicas: dict[uuid.UUID, list[Replica]] = {}
    # PostgreSQL's column types already guarantee numbers: the check costs it nothing.
    checked = engine.dialect.name == "sqlite"
    for r in replica_rows:
        if checked:
            check_numbers(r, _REPLICA_NUMBERS)
        replicas.setdefault(r.deployment_id, []).append(_replica(r))
    last = {row.deployment_id: row.reason for row in last_rows}
    out = []
    for row in rows:
        if checked:
            check_numbers(row, _DEPLOYMENT_NUMBERS)
            check_numbers(row, _STATE_NUMBERS)
        out.append(
            _deployment(
                row,
                tuple(replicas.get(row.id, ())),
                last.get(row.id),
                specs.runs.get(row.id, EMPTY_RUN),
                specs.placements.get(row.id, NO_RULES),
            )
        )
    return out


async def fingerprints(engine: AsyncEngine) -> dict[uuid.UUID, str]:
    """Each live deployment's fingerprint (PostgreSQL): the row versions (`xmin`) of its
    deployment, resources, state and live replica rows. Any write makes a new row version.
    The spec tables need no join of their own: every change of a spec row also updates its
    deployment's row (the generation triggers of migration 0007 move `updated_at`)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_FINGERPRINTS)).all()
    return {row.id: row.fp for row in rows}


class ResyncSnapshot:
    """`Store.load_active`'s previous pass: fingerprint and deployment per id, and which
    pass this is (every `FULL_RELOAD_EVERY`-th reloads everything, as an informer relists)."""

    def __init__(self) -> None:
        self._snapshot: dict[uuid.UUID, tuple[str, Deployment]] = {}
        self._passes = 0

    def begin(
        self, prints: dict[uuid.UUID, str]
    ) -> tuple[dict[uuid.UUID, tuple[str, Deployment]], list[uuid.UUID]]:
        """A new pass: what it may reuse, and the ids whose fingerprint moved (to load)."""
        self._passes += 1
        cached = self._snapshot if self._passes % FULL_RELOAD_EVERY else {}
        stale = [i for i, fp in prints.items() if i not in cached or cached[i][0] != fp]
        return cached, stale

    def end(
        self,
        prints: dict[uuid.UUID, str],
        cached: dict[uuid.UUID, tuple[str, Deployment]],
        stale: list[uuid.UUID],
        fresh: dict[uuid.UUID, Deployment],
    ) -> list[Deployment]:
        """The pass's deployments: the loaded ones, and the cached ones that did not move."""
        snapshot: dict[uuid.UUID, tuple[str, Deployment]] = {}
        for deployment_id, fp in prints.items():
            loaded = fresh.get(deployment_id)
            if loaded is not None:
                snapshot[deployment_id] = (fp, loaded)
            elif deployment_id in cached and deployment_id not in stale:
                snapshot[deployment_id] = cached[deployment_id]
        self._snapshot = snapshot
        return [d for _, d in snapshot.values()]


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


_DEPLOYMENT_NUMBERS = (
    ("target_replicas", int),
    ("cpu_cores", (int, float)),
    ("memory_mb", int),
    ("gpu_units", int),
    ("storage_gb", int),
)
_REPLICA_NUMBERS = (("restart_count", int), ("last_exit_code", int))
_STATE_NUMBERS = (("generation", int), ("observed_generation", int), ("crash_failures", int))


def _deployment(
    row: Any,
    replicas: tuple[Replica, ...],
    last_reason: str | None,
    run: RunSpec = EMPTY_RUN,
    placement: PlacementRules = NO_RULES,
) -> Deployment:
    """A loaded deployment row (resources and progress joined) as the model's value."""
    return Deployment(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        image=row.container_image,
        target_replicas=row.target_replicas,
        resources=readmodel.resources_of(row),
        status=DeploymentStatus(row.status),
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
        replicas=replicas,
        last_reason=last_reason,
        generation=row.generation or 1,
        progress=_progress(row),
        run=run,
        placement=placement,
    )


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


async def changed_since(
    engine: AsyncEngine, since: datetime | None
) -> list[tuple[uuid.UUID, datetime]]:
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
    async with engine.connect() as conn:
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
