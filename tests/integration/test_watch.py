"""Wake-ups: PostgreSQL NOTIFY from the migration's triggers, and the SQLite updated_at poll."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.readmodel import NODES, RESOURCES
from controller.store import Store
from controller.watch import PgListener, SqlitePoller, parse
from schema import engine as engine_mod
from schema import migrate
from tests.harness.fleet import Operator, eventually


def _collector() -> tuple[
    list[uuid.UUID], list[int], Callable[[uuid.UUID], None], Callable[[], None]
]:
    keys: list[uuid.UUID] = []
    resyncs: list[int] = []
    return keys, resyncs, keys.append, lambda: resyncs.append(1)


async def test_notify_on_operator_edits_only(pg_url: str, pg_engine: AsyncEngine) -> None:
    op = Operator(pg_engine)
    keys, resyncs, on_key, on_resync = _collector()
    stop = asyncio.Event()
    listener = PgListener(pg_url, on_key, on_resync, probe_seconds=0.2)
    with capture_logs() as logs:
        task = asyncio.create_task(listener.run(stop))
        await eventually(lambda: _logged(logs, "listener_connected"), within=10)
    try:
        user = await op.add_user()
        d = await op.add_deployment(user, "notified")
        await eventually(lambda: _has(keys, d), within=5)
        keys.clear()
        await op.scale(d, 3)
        await eventually(lambda: _has(keys, d), within=5)
        keys.clear()
        async with pg_engine.begin() as conn:
            await conn.execute(
                update(RESOURCES).where(RESOURCES.c.deployment_id == d).values(memory_mb=1024)
            )
        await eventually(lambda: _has(keys, d), within=5)
        # The controller's own status writes and node heartbeats wake nobody.
        keys.clear()
        await op.update(d, status="running")
        node = await op.add_node("n1", "unix:///nowhere.sock")
        await eventually(lambda: _count(resyncs, 1), within=5)
        async with pg_engine.begin() as conn:
            await conn.execute(update(NODES).where(NODES.c.id == node).values(status="ready"))
        # A barrier, not a pause: notifications arrive in commit order, so once the next
        # operator edit's key is here, one for the status write above would have been too.
        await op.scale(d, 4)
        await eventually(lambda: _has(keys, d), within=5)
        assert keys == [d]
        assert len(resyncs) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _has(keys: list[uuid.UUID], key: uuid.UUID) -> bool:
    return key in keys


async def _count(items: list[int], n: int) -> bool:
    return len(items) >= n


async def _logged(logs: list[dict[str, Any]], event: str) -> bool:
    return any(e["event"] == event for e in logs)


@dataclass
class Polled:
    """A SQLite database with one deployment, and a poller that has taken its first look."""

    op: Operator
    user: uuid.UUID
    first: uuid.UUID
    keys: list[uuid.UUID]
    poller: SqlitePoller


@pytest.fixture
async def polled(tmp_path: Path) -> AsyncIterator[Polled]:
    url = f"sqlite+aiosqlite:///{tmp_path}/fog.db"
    await migrate.upgrade_async(url)
    engine = engine_mod.create_engine(url)
    try:
        op = Operator(engine)
        user = await op.add_user()
        first = await op.add_deployment(user, "old")
        keys: list[uuid.UUID] = []
        poller = SqlitePoller(Store(engine), keys.append)
        assert await poller.poll() == 0  # the first look only sets the mark
        yield Polled(op, user, first, keys, poller)
    finally:
        await engine.dispose()


async def test_sqlite_poll_finds_edits_since_last_look(polled: Polled) -> None:
    op, keys, poller = polled.op, polled.keys, polled.poller
    d = await op.add_deployment(polled.user, "new")
    assert await poller.poll() == 1
    assert keys == [d]
    await op.scale(polled.first, 5)
    assert await poller.poll() == 1
    assert keys == [d, polled.first]
    assert await poller.poll() == 0


async def test_sqlite_poll_passes_over_a_row_it_cannot_read(polled: Polled) -> None:
    """Plain SQL can write any text into SQLite's `updated_at`: the poll leaves that row out
    (the store's scan reports it) and still wakes the deployments it can read."""
    async with polled.op.engine.begin() as conn:
        result = await conn.execute(
            text("UPDATE deployments SET updated_at = 'not a time' WHERE id = :id"),
            {"id": str(polled.first)},
        )
    assert result.rowcount == 1
    good = await polled.op.add_deployment(polled.user, "good")
    assert await polled.poller.poll() == 1
    assert polled.keys == [good]


def test_payload_parsing() -> None:
    d = uuid.uuid4()
    assert parse(f'{{"table": "deployments", "deployment_id": "{d}"}}') == ("deployments", d)
    assert parse('{"table": "nodes", "deployment_id": null}') == ("nodes", None)
    assert parse("garbage") == ("", None)
