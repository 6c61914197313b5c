"""Election and fencing against real PostgreSQL; the SQLite single-controller lock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller import errors
from controller.leader import AlreadyRunning, PgElector, SqliteLock
from controller.model import ReplicaStatus
from controller.store import Store, Transition
from tests.harness.fleet import Operator, eventually


async def _logged(logs: list[dict[str, Any]], event: str) -> bool:
    return any(e["event"] == event for e in logs)


async def test_one_leader_and_a_standby_that_takes_over(pg_url: str) -> None:
    stop = asyncio.Event()
    first = await PgElector(pg_url, "a", retry_seconds=0.1).acquire(stop)
    assert first is not None
    with capture_logs() as logs:
        standby = asyncio.create_task(PgElector(pg_url, "b", retry_seconds=0.1).acquire(stop))
        # The standby has tried the lock and lost: it says so once, on its first refusal.
        await eventually(lambda: _logged(logs, "leader_standby"), within=5)
    assert not standby.done(), "two leaders at once"
    await first.release()  # the leader dies: its session, and so its lock, ends
    second = await asyncio.wait_for(standby, 5)
    assert second is not None
    assert second.epoch == first.epoch + 1
    await second.release()


async def test_standby_gives_up_on_stop(pg_url: str) -> None:
    stop = asyncio.Event()
    leader = await PgElector(pg_url, "a", retry_seconds=0.1).acquire(stop)
    assert leader is not None
    waiting = asyncio.create_task(PgElector(pg_url, "b", retry_seconds=0.1).acquire(stop))
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is None
    await leader.release()


async def test_a_deposed_leader_cannot_write(pg_url: str, pg_engine: AsyncEngine) -> None:
    op = Operator(pg_engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "fenced", replicas=1)
    stop = asyncio.Event()
    old_lease = await PgElector(pg_url, "old").acquire(stop)
    assert old_lease is not None
    old = Store(pg_engine)
    old.fence(old_lease.epoch)
    [replica] = await old.create_replicas(d, 1, _now())
    # The old leader pauses; its session dies; a new leader is elected and bumps the epoch.
    await old_lease.release()
    new_lease = await PgElector(pg_url, "new").acquire(stop)
    assert new_lease is not None
    with pytest.raises(errors.Deposed):
        await old.transition(
            [Transition(replica.id, (ReplicaStatus.PENDING,), ReplicaStatus.STARTING)]
        )
    with pytest.raises(errors.Deposed):
        await old.create_replicas(d, 1, _now())
    assert len(await op.replicas(d)) == 1
    new = Store(pg_engine)
    new.fence(new_lease.epoch)
    moved = await new.transition(
        [Transition(replica.id, (ReplicaStatus.PENDING,), ReplicaStatus.STARTING)]
    )
    assert moved == {replica.id}
    await new_lease.release()


async def test_second_controller_on_one_sqlite_file_refuses(tmp_path: Path) -> None:
    stop = asyncio.Event()
    db = tmp_path / "fog.db"
    first = await SqliteLock(db).acquire(stop)
    with pytest.raises(AlreadyRunning, match="one controller per database file"):
        await SqliteLock(db).acquire(stop)
    await first.release()
    again = await SqliteLock(db).acquire(stop)
    await again.release()


def _now() -> datetime:
    return datetime.now(UTC)
