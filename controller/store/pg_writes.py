"""A group-committed round on PostgreSQL: a few statements over arrays (`unnest`).

Each statement has one shape whatever the batch size, so it is compiled and prepared once,
not once per row count. The SQLite paths are in controller/store/writes.py.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, column, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import TextualSelect

from controller.model import ProgressState, ReplicaStatus
from controller.ports import Transition
from controller.readmodel import DEPLOYMENTS, HISTORY, REPLICAS, STATE
from controller.store.writes import NewReplicas, StateWrite, StatusWrite, Write, replica_columns
from schema.models import UUIDType

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


async def pg_writes(conn: AsyncConnection, writes: Sequence[Write]) -> list[object]:
    """A round's writes on PostgreSQL: one INSERT for every new replica row, one statement
    for every status change. A deployment named twice (not expected: its writes are
    serial) falls back to one status statement per write, in order."""
    new = [r for w in writes if isinstance(w, NewReplicas) for r in w.rows]
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
    changes = [w for w in writes if isinstance(w, StatusWrite)]
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
        if isinstance(one, StatusWrite) and not moved[one.history_id]:
            continue
        if isinstance(one, StateWrite | StatusWrite) and one.state is not None:
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
    return [moved[w.history_id] if isinstance(w, StatusWrite) else None for w in writes]


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
# Progress of many deployments in one statement; see `sqlite_save_state` for a missing row.
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


async def pg_transitions(conn: AsyncConnection, changes: list[Transition]) -> set[uuid.UUID]:
    """The guarded UPDATEs of `changes`, in order; returns the ids that moved.

    Transitions of one kind (same expected statuses, target and columns) go in one UPDATE
    over arrays. A replica named twice keeps the one-by-one order, where the second change
    must see the first."""
    moved: set[uuid.UUID] = set()
    groups: list[list[Transition]]
    ids = [c.replica_id for c in changes]
    if len(set(ids)) != len(ids):
        groups = [[c] for c in changes]
    else:
        kinds: dict[tuple[Any, ...], list[Transition]] = {}
        for c in changes:
            key = (c.expected, c.status, tuple(name for name, _ in replica_columns(c.change)))
            kinds.setdefault(key, []).append(c)
        groups = list(kinds.values())
    for group in groups:
        first = group[0]
        values = [replica_columns(c.change) for c in group]
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
