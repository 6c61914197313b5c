"""The store against real PostgreSQL and SQLite: constant query counts, guarded transitions,
status writes with their history row, pruning of terminal replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.model import DeploymentStatus, NodeStatus, ReplicaStatus
from controller.readmodel import DEPLOYMENTS, REPLICAS, RUN_TABLES
from controller.store import ReplicaChange, Store, Transition
from tests.harness.fleet import Operator


@contextmanager
def counting(engine: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _deployments(op: Operator, user: uuid.UUID, count: int, replicas: int) -> list[uuid.UUID]:
    store = Store(op.engine)
    ids = []
    for i in range(count):
        d = await op.add_deployment(user, f"d{i}-{uuid.uuid4().hex[:6]}", replicas=replicas)
        await store.create_replicas(d, replicas, datetime.now(UTC))
        ids.append(d)
    return ids


async def test_a_pass_loads_any_number_of_deployments_in_a_fixed_number_of_queries(
    engine: AsyncEngine,
) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    await _deployments(op, user, 2, 2)
    with counting(engine) as few:
        loaded = await store.load_deployments()
    assert len(loaded) == 2
    await _deployments(op, user, 30, 3)
    with counting(engine) as many:
        loaded = await store.load_deployments()
    assert len(loaded) == 32
    assert all(len(d.replicas) == d.target_replicas for d in loaded)
    assert all(d.resources is not None for d in loaded)
    selects = [s for s in many if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    # Deployments, replicas, newest history; one per spec table (controller.store.spec_rows).
    assert len(selects) == 3 + len(RUN_TABLES)
    assert len(many) == len(few)


async def test_transitions_are_guarded_by_the_expected_status(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    [d] = await _deployments(op, user, 1, 1)
    [replica] = (await store.load_deployment(d)).replicas  # type: ignore[union-attr]
    to_starting = Transition(replica.id, (ReplicaStatus.PENDING,), ReplicaStatus.STARTING)
    assert await store.transition([to_starting]) == {replica.id}
    # A second writer working from the same stale read changes nothing.
    assert await store.transition([to_starting]) == set()
    row = (await op.replicas(d))[0]
    assert row["status"] == "starting"


async def test_status_write_records_history_and_keeps_its_stamp(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "hist")
    now = datetime.now(UTC)
    ok = await store.record_status(
        d, DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED, "x" * 600, now
    )
    assert ok
    # Stale `old` status: nothing written.
    assert not await store.record_status(
        d, DeploymentStatus.PENDING, DeploymentStatus.RUNNING, "nope", now
    )
    [h] = await op.history(d)
    assert (h["old_status"], h["new_status"], h["changed_by"]) == ("pending", "scheduled", None)
    assert len(h["reason"]) == 500  # clipped to the column, not rejected
    row = await op.deployment(d)
    assert row["status"] == "scheduled"
    # The controller's own write does not look like an operator edit.
    assert row["updated_at"] == h["changed_at"]
    loaded = await store.load_deployment(d)
    assert loaded is not None
    assert loaded.last_reason == h["reason"]
    await op.scale(d, 4)  # an operator edit moves updated_at past the last status write
    assert (await op.deployment(d))["updated_at"] > h["changed_at"]


async def test_prune_keeps_the_newest_terminal_rows(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    [d] = await _deployments(op, user, 1, 6)
    replicas = (await store.load_deployment(d)).replicas  # type: ignore[union-attr]
    base = datetime.now(UTC)
    for i, r in enumerate(replicas):
        await store.transition(
            [
                Transition(
                    r.id,
                    (ReplicaStatus.PENDING,),
                    ReplicaStatus.STOPPED if i % 2 else ReplicaStatus.FAILED,
                    ReplicaChange(stopped_at=base + timedelta(seconds=i)),
                )
            ]
        )
    assert await store.prune_terminal_replicas(keep=2) == 4
    async with engine.connect() as conn:
        left = (
            await conn.execute(select(REPLICAS.c.id).where(REPLICAS.c.deployment_id == d))
        ).all()
    assert {row.id for row in left} == {replicas[4].id, replicas[5].id}
    assert await store.prune_terminal_replicas(keep=2) == 0


async def test_deleted_deployments_leave_the_pass(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    keep, gone = await _deployments(op, user, 2, 1)
    async with engine.begin() as conn:
        await conn.execute(
            DEPLOYMENTS.update().where(DEPLOYMENTS.c.id == gone).values(status="deleted")
        )
    assert [d.id for d in await store.load_deployments()] == [keep]


async def test_heartbeats_of_many_nodes_share_one_update(engine: AsyncEngine) -> None:
    """A heartbeat round over a thousand nodes was a thousand UPDATEs every 5 s (found by
    `python -m bench scale`); nodes given the same values now share one statement."""
    op, store = Operator(engine), Store(engine)
    ids = [
        await op.add_node(f"n{i}-{uuid.uuid4().hex[:6]}", f"unix:///tmp/n{i}.sock")
        for i in range(12)
    ]
    now = datetime.now(UTC)
    beat: dict[str, Any] = {"last_heartbeat_at": now}
    changes = [
        *((node_id, beat) for node_id in ids[:10]),
        (ids[10], {"last_heartbeat_at": now, "status": NodeStatus.READY.value}),
        (ids[11], {"status": NodeStatus.NOT_READY.value}),
    ]
    with counting(engine) as statements:
        await store.update_nodes(changes)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 3
    rows = {r.id: r for r in await store.nodes()}
    assert all(rows[i].last_heartbeat_at == now for i in ids[:11])
    assert rows[ids[10]].status is NodeStatus.READY
    assert rows[ids[11]].status is NodeStatus.NOT_READY
    assert rows[ids[11]].last_heartbeat_at is None


async def test_concurrent_transitions_share_one_transaction_and_keep_their_guards(
    engine: AsyncEngine,
) -> None:
    """Group commit: many callers at once, one round; each caller learns only its own moves,
    a stale guard still moves nothing, and per-row values land on their own rows."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    ids = await _deployments(op, user, 6, 3)
    loaded = await store.load_deployments(ids)
    replicas = [r for d in loaded for r in d.replicas]
    stale = replicas[0]
    assert await store.transition(
        [Transition(stale.id, (ReplicaStatus.PENDING,), ReplicaStatus.STARTING)]
    ) == {stale.id}
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    def running(r_id: uuid.UUID, n: int) -> Transition:
        return Transition(
            r_id,
            (ReplicaStatus.PENDING,),
            ReplicaStatus.RUNNING,
            ReplicaChange(container_id=f"c{n:03d}", started_at=when + timedelta(seconds=n)),
        )

    calls = [
        [running(r.id, i * 10 + j) for j, r in enumerate(d.replicas)] for i, d in enumerate(loaded)
    ]
    rounds_before = store.group_commit["transitions"][0]
    with counting(engine) as statements:
        results = await asyncio.gather(*(store.transition(call) for call in calls))
    assert store.group_commit["transitions"][0] - rounds_before <= 2
    for call, moved in zip(calls, results, strict=True):
        assert moved == {c.replica_id for c in call} - {stale.id}
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    if engine.dialect.name == "postgresql":
        assert len(updates) < len(replicas)  # not one statement per replica
    for i, d in enumerate(loaded):
        rows = {row["id"]: row for row in await op.replicas(d.id)}
        for j, r in enumerate(d.replicas):
            if r.id == stale.id:
                assert rows[r.id]["status"] == "starting"
                assert rows[r.id]["container_id"] is None
                continue
            assert rows[r.id]["status"] == "running"
            assert rows[r.id]["container_id"] == f"c{i * 10 + j:03d}"
            assert rows[r.id]["started_at"] == when + timedelta(seconds=i * 10 + j)


async def test_a_bad_row_fails_only_its_own_call(engine: AsyncEngine) -> None:
    """A placement onto a node deleted meanwhile breaks a foreign key: that caller gets the
    error, the other callers of the same round still commit."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    ids = await _deployments(op, user, 3, 1)
    node = await op.add_node("n-good", "unix:///nowhere.sock")
    replicas = [d.replicas[0] for d in await store.load_deployments(ids)]

    def place(r_id: uuid.UUID, node_id: uuid.UUID) -> list[Transition]:
        return [
            Transition(
                r_id,
                (ReplicaStatus.PENDING,),
                ReplicaStatus.STARTING,
                ReplicaChange(node_id=node_id),
            )
        ]

    outcomes = await asyncio.gather(
        store.transition(place(replicas[0].id, node)),
        store.transition(place(replicas[1].id, uuid.uuid4())),  # no such node
        store.transition(place(replicas[2].id, node)),
        return_exceptions=True,
    )
    assert outcomes[0] == {replicas[0].id}
    assert isinstance(outcomes[1], Exception)
    assert "foreign key" in str(outcomes[1]).lower()
    assert outcomes[2] == {replicas[2].id}
    statuses = {}
    for d in ids:
        for row in await op.replicas(d):
            statuses[row["id"]] = row["status"]
    assert statuses == {
        replicas[0].id: "starting",
        replicas[1].id: "pending",
        replicas[2].id: "starting",
    }


async def test_a_resync_load_rereads_only_what_changed_and_misses_nothing(
    engine: AsyncEngine,
) -> None:
    """`load_active` (the resync pass's read) always equals a full load, whatever was edited
    in between, by us or by hand; on PostgreSQL an unchanged fog costs one statement."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    ids = await _deployments(op, user, 4, 2)

    async def same_as_full_load() -> list[str]:
        with counting(engine) as statements:
            got = {d.id: d for d in await store.load_active()}
        want = {d.id: d for d in await store.load_deployments()}
        assert got == want
        return statements

    await same_as_full_load()
    unchanged = await same_as_full_load()
    if engine.dialect.name == "postgresql":
        assert len(unchanged) == 1  # the fingerprints, nothing else

    first = (await store.load_deployment(ids[0])).replicas[0]  # type: ignore[union-attr]
    await store.transition([Transition(first.id, (ReplicaStatus.PENDING,), ReplicaStatus.STARTING)])
    await same_as_full_load()
    async with engine.begin() as conn:  # by hand: a replica row edited, another deleted
        await conn.execute(
            REPLICAS.update().where(REPLICAS.c.id == first.id).values(container_id="by-hand")
        )
        victim = (await op.replicas(ids[1]))[0]["id"]
        await conn.execute(REPLICAS.delete().where(REPLICAS.c.id == victim))
    await same_as_full_load()
    await op.update(ids[2], container_image="fog-test/other:1")
    await op.soft_delete(ids[3])
    fresh = await _deployments(op, user, 1, 1)
    await same_as_full_load()
    ok = await store.record_status(
        ids[2], DeploymentStatus.PENDING, DeploymentStatus.FAILED, "image gone", datetime.now(UTC)
    )
    assert ok
    statements = await same_as_full_load()
    loaded = {d.id: d for d in await store.load_active()}
    assert loaded[ids[3]].deleting
    assert fresh[0] in loaded
    assert loaded[ids[2]].image == "fog-test/other:1"
    assert loaded[ids[2]].last_reason == "image gone"
    assert {r.id: r.container_id for r in loaded[ids[0]].replicas}[first.id] == "by-hand"
    assert victim not in {r.id for r in loaded[ids[1]].replicas}
    if engine.dialect.name == "postgresql":
        assert len(statements) > 1  # the changed deployment was read again


async def test_status_writes_and_new_rows_of_many_callers_share_a_round(
    engine: AsyncEngine,
) -> None:
    """Group commit of writes: status changes and new replica rows asked for at once land
    in one round (on PostgreSQL one statement per kind); each caller learns its own outcome,
    and a stale status writes neither the status nor a history row."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    ids = [await op.add_deployment(user, f"w{i}-{uuid.uuid4().hex[:6]}") for i in range(6)]
    now = datetime.now(UTC)
    pending, scheduled = DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED
    stale = ids[0]
    assert await store.record_status(stale, pending, DeploymentStatus.FAILED, "bad image", now)
    history_before = len(await op.history(stale))
    rounds_before = store.group_commit["writes"][0]
    with counting(engine) as statements:
        results = await asyncio.gather(
            *(store.record_status(d, pending, scheduled, f"placed {d}", now) for d in ids),
            *(store.create_replicas(d, 2, now) for d in ids),
        )
    assert store.group_commit["writes"][0] - rounds_before <= 2
    assert results[:6] == [False, True, True, True, True, True]
    for d, new in zip(ids, results[6:], strict=True):
        rows = {row["id"]: row for row in await op.replicas(d)}
        assert set(rows) == {r.id for r in new}
        assert {row["status"] for row in rows.values()} == {"pending"}
    if engine.dialect.name == "postgresql":
        writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "WITH"))]
        assert len(writes) == 2, writes  # the new rows, then every status change
    assert (await op.deployment(stale))["status"] == "failed"
    assert len(await op.history(stale)) == history_before
    for d in ids[1:]:
        [h] = await op.history(d)
        assert (h["old_status"], h["new_status"]) == ("pending", "scheduled")
        assert h["reason"] == f"placed {d}"
        assert (await op.deployment(d))["status"] == "scheduled"


async def test_two_status_writes_of_one_deployment_in_a_round_apply_in_order(
    engine: AsyncEngine,
) -> None:
    """Not expected (a deployment's writes are serial), but if one round holds two changes
    of one deployment, the second must see the first, as one-by-one writes would."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    d = await op.add_deployment(user, f"twice-{uuid.uuid4().hex[:6]}")
    now = datetime.now(UTC)
    first, second = await asyncio.gather(
        store.record_status(d, DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED, "a", now),
        store.record_status(d, DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING, "b", now),
    )
    assert (first, second) == (True, True)
    assert (await op.deployment(d))["status"] == "running"
    assert sorted((h["old_status"], h["new_status"]) for h in await op.history(d)) == [
        ("pending", "scheduled"),
        ("scheduled", "running"),
    ]
