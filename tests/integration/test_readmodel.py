"""The daemon (store) and fogctl answer the questions they share alike, on PostgreSQL and SQLite.

Both now build these queries from controller/readmodel.py; this keeps it so should either side
grow its own copy again. The rows include the cases where the old copies disagreed: a node
without replicas, and a live replica whose deployment lost its resources row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.fogctl import queries
from controller.model import ZERO, ReplicaStatus, Resources
from controller.readmodel import HISTORY, REPLICAS, RESOURCES
from controller.store import Store
from tests.harness.fleet import Operator

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _replica(
    op: Operator, deployment: uuid.UUID, node: uuid.UUID | None, status: ReplicaStatus
) -> None:
    async with op.engine.begin() as conn:
        await conn.execute(
            insert(REPLICAS).values(
                id=uuid.uuid4(),
                deployment_id=deployment,
                node_id=node,
                status=status.value,
                created_at=T0,
            )
        )


async def _history(
    op: Operator, deployment: uuid.UUID, rows: list[tuple[uuid.UUID, str]], at: datetime
) -> None:
    """History rows of one instant (as a status write makes them), `(id, reason)` each."""
    async with op.engine.begin() as conn:
        await conn.execute(
            insert(HISTORY),
            [
                {
                    "id": row_id,
                    "deployment_id": deployment,
                    "old_status": "pending",
                    "new_status": "pending",
                    "changed_at": at,
                    "reason": reason,
                }
                for row_id, reason in rows
            ],
        )


async def test_node_usage_agrees_and_counts_a_replica_without_resources(
    engine: AsyncEngine,
) -> None:
    op = Operator(engine)
    user = await op.add_user()
    busy = await op.add_node("busy", "unix:///busy.sock", cpu_cores=8, memory_mb=8192)
    idle = await op.add_node("idle", "unix:///idle.sock", cpu_cores=8, memory_mb=8192)
    bare = await op.add_node("bare", "unix:///bare.sock", cpu_cores=8, memory_mb=8192)
    sized = await op.add_deployment(
        user, "sized", cpu_cores=0.75, memory_mb=768, gpu_units=1, storage_gb=2
    )
    unsized = await op.add_deployment(user, "unsized")
    async with engine.begin() as conn:  # plain SQL can do this; both programs must cope
        await conn.execute(delete(RESOURCES).where(RESOURCES.c.deployment_id == unsized))
    await _replica(op, sized, busy, ReplicaStatus.RUNNING)
    await _replica(op, sized, busy, ReplicaStatus.STARTING)
    await _replica(op, sized, busy, ReplicaStatus.STOPPED)  # holds nothing any more
    await _replica(op, sized, None, ReplicaStatus.PENDING)  # on no node yet
    await _replica(op, unsized, bare, ReplicaStatus.RUNNING)

    daemon = await Store(engine).node_usage()
    async with engine.connect() as conn:
        shown = {n.id: n for n in await queries.list_nodes(conn)}

    expected = {
        busy: (2, Resources(1.5, 1536, 2, 4)),
        idle: (0, ZERO),
        bare: (1, ZERO),  # running, so counted (node delete refuses), but declares nothing
    }
    for node, (live, held) in expected.items():
        assert daemon.get(node, ZERO) == held, node
        allocated = shown[node].allocated
        assert Resources(**allocated.model_dump()) == held, node
        assert shown[node].live_replicas == live, node


async def test_newest_reason_and_resources_agree(engine: AsyncEngine) -> None:
    op = Operator(engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "told", cpu_cores=1.5, memory_mb=600, storage_gb=3)
    quiet = await op.add_deployment(user, "quiet")
    async with engine.begin() as conn:
        await conn.execute(delete(RESOURCES).where(RESOURCES.c.deployment_id == quiet))
    await _history(op, d, [(uuid.uuid4(), "first")], T0)
    # Two rows of one instant: both programs must pick the same one (the greater id).
    low, high = sorted([uuid.uuid4(), uuid.uuid4()])
    later = T0 + timedelta(seconds=5)
    await _history(op, d, [(low, "tie low"), (high, "tie high")], later)

    loaded = {x.id: x for x in await Store(engine).load_deployments([d, quiet])}
    async with engine.connect() as conn:
        told = await queries.find_deployment(conn, user, "told")
        untold = await queries.find_deployment(conn, user, "quiet")
    assert told is not None
    assert untold is not None

    assert loaded[d].last_reason == told.reason == "tie high"
    assert told.status_changed_at is not None
    assert told.status_changed_at.replace(tzinfo=UTC) == later.replace(tzinfo=UTC)
    assert loaded[d].resources == Resources(1.5, 600, 0, 3)
    assert told.resources is not None
    assert Resources(**told.resources.model_dump()) == loaded[d].resources
    assert loaded[quiet].last_reason is None
    assert untold.reason is None
    assert loaded[quiet].resources is None
    assert untold.resources is None
