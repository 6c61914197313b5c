"""What a group-committed round writes, and how it is written on SQLite.

The write values are what `Store` queues for a round (controller/store/group_commit.py);
SQLite runs each as its own statements (a statement costs no round trip there), PostgreSQL
runs a whole round as a few array statements (controller/store/pg_writes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import errors
from controller.model import DeploymentStatus, ProgressState, Replica
from controller.ports import ReplicaChange, Transition
from controller.readmodel import DEPLOYMENTS, HISTORY, REPLICAS, STATE
from schema.models import REASON_MAX_LENGTH

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class NewReplicas:
    """Rows to insert as `pending`: one write of a group-committed round."""

    rows: tuple[Replica, ...]


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """A deployment's status change and its history row (see `Store.record_status`)."""

    deployment_id: uuid.UUID
    old: DeploymentStatus
    new: DeploymentStatus
    reason: str
    now: datetime
    history_id: uuid.UUID
    state: ProgressState | None = None  # written with the status, only if the status is


@dataclass(frozen=True, slots=True)
class StateWrite:
    """The controller's persisted progress alone (backoff moved, status unchanged)."""

    deployment_id: uuid.UUID
    state: ProgressState


Write = NewReplicas | StatusWrite | StateWrite


def replica_columns(change: ReplicaChange) -> tuple[tuple[str, Any], ...]:
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


def clip(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX_LENGTH else reason[: REASON_MAX_LENGTH - 1] + "…"


def clip_state(state: ProgressState) -> ProgressState:
    if state.error is None or len(state.error) <= REASON_MAX_LENGTH:
        return state
    return replace(state, error=clip(state.error))


def state_values(state: ProgressState) -> dict[str, Any]:
    return {
        "observed_generation": state.observed_generation,
        "crash_failures": state.failures,
        "retry_at": state.retry_at,
        "progress_since": state.progress_since,
        "stable_since": state.stable_since,
        "last_error": state.error,
    }


async def sqlite_save_state(
    conn: AsyncConnection, deployment_id: uuid.UUID, state: ProgressState
) -> None:
    """Update the deployment's state row; a missing row (deleted by hand) is made again, with
    the generation the controller saw. The generation itself is the database's to count."""
    values = state_values(state)
    stmt = sqlite.insert(STATE).values(
        deployment_id=deployment_id, generation=state.observed_generation, **values
    )
    await conn.execute(stmt.on_conflict_do_update(index_elements=["deployment_id"], set_=values))


async def isolating(
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


async def sqlite_write(conn: AsyncConnection, write: Write) -> object:
    """One write as its own statements (SQLite, where a statement costs no round trip)."""
    if isinstance(write, NewReplicas):
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
    if isinstance(write, StateWrite):
        await sqlite_save_state(conn, write.deployment_id, write.state)
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
        await sqlite_save_state(conn, write.deployment_id, write.state)
    return True


async def sqlite_transitions(conn: AsyncConnection, changes: list[Transition]) -> set[uuid.UUID]:
    """The guarded UPDATEs of `changes`, one statement each, in order (no round trips to
    save); returns the ids that moved."""
    rep = REPLICAS
    moved: set[uuid.UUID] = set()
    for c in changes:
        result = await conn.execute(
            update(rep)
            .where(rep.c.id == c.replica_id, rep.c.status.in_([s.value for s in c.expected]))
            .values(status=c.status.value, **dict(replica_columns(c.change)))
        )
        if result.rowcount:
            moved.add(c.replica_id)
    return moved
