"""Group commit: writes asked for while a round is being written share the next round.

One transaction, one fencing check and (on PostgreSQL) one statement per kind of write for
every caller of a round (see controller/coalesce.py); a round that fails on one caller's row
is written again one by one, so only that caller hears of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from controller.coalesce import Coalescer
from controller.model import DeploymentStatus, ProgressState, Replica, ReplicaStatus
from controller.ports import Transition
from controller.store.pg_writes import pg_transitions, pg_writes
from controller.store.retry import retrying
from controller.store.writes import (
    NewReplicas,
    StateWrite,
    StatusWrite,
    Write,
    clip,
    clip_state,
    isolating,
    sqlite_transitions,
    sqlite_write,
)


class GroupCommit:
    """The coalesced writes of one store: new replica rows, transitions, status and progress."""

    def __init__(self, begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]]) -> None:
        # One fenced write transaction (`Store._write`).
        self._begin = begin
        self._transitions: Coalescer[tuple[Transition, ...], set[uuid.UUID]] = Coalescer(
            self._transition_rounds
        )
        self._writes: Coalescer[Write, object] = Coalescer(self._write_rounds)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(rounds, items) per kind of write."""
        return {
            "transitions": (self._transitions.rounds, self._transitions.items),
            "writes": (self._writes.rounds, self._writes.items),
        }

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
        await self._writes.submit(NewReplicas(tuple(new)))
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
        return await isolating(calls, self._transition_together)

    async def _write_rounds(self, writes: Sequence[Write]) -> list[object | Exception]:
        return await isolating(writes, self._write_together)

    @retrying
    async def _write_together(self, writes: Sequence[Write]) -> list[object]:
        async with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                return await pg_writes(conn, writes)
            return [await sqlite_write(conn, one) for one in writes]

    @retrying
    async def _transition_together(
        self, calls: Sequence[tuple[Transition, ...]]
    ) -> list[set[uuid.UUID]]:
        flat = [change for call in calls for change in call]
        async with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                moved = await pg_transitions(conn, flat)
            else:
                moved = await sqlite_transitions(conn, flat)
        return [{c.replica_id for c in call if c.replica_id in moved} for call in calls]

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
        state = clip_state(state) if state is not None else None
        write = StatusWrite(deployment_id, old, new, clip(reason), now, uuid.uuid4(), state)
        return bool(await self._writes.submit(write))

    async def save_progress(self, deployment_id: uuid.UUID, state: ProgressState) -> None:
        """Persist progress that changed without a status change (a backoff step, say)."""
        await self._writes.submit(StateWrite(deployment_id, clip_state(state)))
