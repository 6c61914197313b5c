"""Behaviour survives failover: a controller that takes over a deployment in crash backoff, or
failed, resumes from what its predecessor persisted with the status (migration 0006), against
real PostgreSQL / SQLite and real Docker engines.

Each controller is a reconciler with its own store, runtime and node monitor on the shared
database, driven reconcile by reconcile on one injected clock, so "B does what A would have
done at the same moment" is compared exactly and without waiting for real backoff times.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.nodes import NodeMonitor
from controller.reconciler import Reconciler
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings
from controller.store import Store
from schema.engine import create_engine
from tests.harness.engines import Cluster
from tests.harness.fleet import Operator, fleet_of, settings_for_tests

pytestmark = pytest.mark.docker

MISSING_IMAGE = "fog-test/does-not-exist:1"  # every start fails: crash backoff
BACKOFF_SECONDS = 30.0
DEADLINE_SECONDS = 5.0


class Clock:
    """The controllers' shared clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@asynccontextmanager
async def _controller(settings: Settings, clock: Clock) -> AsyncIterator[Reconciler]:
    """One controller's reconciler: its own connections, engine clients and memory."""
    store = Store(create_engine(settings.database_url))
    runtime = DockerRuntime(settings)
    nodes = NodeMonitor(store, runtime, settings, clock)
    try:
        await nodes.refresh()
        yield Reconciler(store, runtime, nodes, settings, clock)
    finally:
        await runtime.close()
        await store.close()


@pytest.fixture
async def fleet(
    engine: AsyncEngine, cluster: Cluster
) -> AsyncIterator[tuple[Operator, list[str], uuid.UUID]]:
    cluster.ensure_running()
    async with fleet_of(engine, list(cluster.urls)) as made:
        yield made


async def _state(engine: AsyncEngine, d: uuid.UUID) -> dict[str, Any]:
    """What is persisted for `d`, read as the next controller reads it."""
    loaded = await Store(engine).load_deployment(d)
    assert loaded is not None
    assert loaded.progress is not None
    return {
        "status": loaded.status.value,
        "generation": loaded.generation,
        "observed_generation": loaded.observed_generation,
        "crash_failures": loaded.progress.failures,
        "retry_at": loaded.progress.retry_at,
    }


async def _failed_replicas(op: Operator, d: uuid.UUID) -> int:
    return len(await op.replicas(d, "failed"))


async def test_a_standby_resumes_backoff_and_failed_status_and_an_edit_resets_them(
    db_url: str, engine: AsyncEngine, fleet: Any
) -> None:
    op, _, user = fleet
    settings = settings_for_tests(
        db_url,
        crash_backoff_initial_seconds=BACKOFF_SECONDS,
        crash_backoff_max_seconds=300.0,
        progress_deadline_seconds=DEADLINE_SECONDS,
    )
    clock = Clock()
    t0 = clock.now
    d = await op.add_deployment(user, "broken", image=MISSING_IMAGE, replicas=1)

    async with _controller(settings, clock) as a:
        await a.reconcile(d)  # the start fails: backoff until t0 + 30 s
        assert await _failed_replicas(op, d) == 1
        clock.advance(DEADLINE_SECONDS * 2)
        await a.reconcile(d)  # no progress past the deadline: failed
        clock.advance(2)
        a_would = await a.reconcile(d)
    persisted = await _state(engine, d)
    assert persisted["status"] == "failed"
    assert persisted["crash_failures"] == 1
    assert persisted["retry_at"] == t0 + timedelta(seconds=BACKOFF_SECONDS)
    assert persisted["observed_generation"] == persisted["generation"]
    history = await op.history(d)

    # A is gone; B takes over the same database at the same moment.
    async with _controller(settings, clock) as b:
        b_does = await b.reconcile(d)
        assert a_would.requeue_after is not None
        assert b_does.requeue_after == pytest.approx(a_would.requeue_after, abs=1e-3)
        assert b_does.requeue_after == pytest.approx(BACKOFF_SECONDS - 12, abs=0.1)
        # No start before the retry time, and failed stays failed without a new history row.
        assert await _failed_replicas(op, d) == 1
        assert await op.history(d) == history
        assert await _state(engine, d) == persisted

        # At the retry time B tries again, counting on from A's failures (the second
        # failure doubles the wait), and the deployment stays failed.
        clock.now = t0 + timedelta(seconds=BACKOFF_SECONDS + 1)
        await b.reconcile(d)
        assert await _failed_replicas(op, d) == 2
        after_retry = await _state(engine, d)
        assert after_retry["crash_failures"] == 2
        assert after_retry["retry_at"] == clock.now + timedelta(seconds=2 * BACKOFF_SECONDS)
        assert after_retry["status"] == "failed"
        statuses = [h["new_status"] for h in await op.history(d)]
        assert statuses[statuses.index("failed") :] == ["failed"] * (
            len(statuses) - statuses.index("failed")
        ), statuses  # never back to scheduled

        # The operator changes the spec with plain SQL: a fresh start at once.
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE deployments SET container_image = :i WHERE id = :d"),
                {"i": "fog-test/does-not-exist:2", "d": str(d)},
            )
        clock.advance(1)
        await b.reconcile(d)
        assert await _failed_replicas(op, d) == 3  # tried before the old retry time
        edited = await _state(engine, d)
        assert edited["generation"] == persisted["generation"] + 1
        assert edited["observed_generation"] == edited["generation"]
        assert edited["crash_failures"] == 1  # the count started again
        assert edited["status"] == "scheduled"  # a new generation is no longer failed
