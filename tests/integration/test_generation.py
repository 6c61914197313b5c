"""Generations against real PostgreSQL and SQLite (migration 0006): the database counts the
operator's spec changes, plain SQL included, and nothing the controller writes; the
controller's persisted progress goes in and out with the status it belongs to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.model import DeploymentStatus, ProgressState
from controller.store import Store
from tests.harness.engines import Cluster
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)


async def _generation(engine: AsyncEngine, d: uuid.UUID) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT generation, observed_generation FROM deployment_controller_state "
                    "WHERE deployment_id = :d"
                ),
                {"d": str(d)},
            )
        ).one()
    return int(row[0]), int(row[1])


def _clipped(reason: str | None) -> str:
    """A reason as the 500-character column keeps it: cut, with an ellipsis."""
    assert reason is not None
    return reason[:499] + "…"


async def _sql(engine: AsyncEngine, statement: str, d: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), {"d": str(d)})


@pytest.mark.parametrize(
    ("statement", "bumps"),
    [
        pytest.param(
            "UPDATE deployments SET container_image = 'nginx:2' WHERE id = :d", 1, id="image"
        ),
        pytest.param("UPDATE deployments SET target_replicas = 7 WHERE id = :d", 1, id="scale"),
        pytest.param(
            "UPDATE deployments SET deleted_at = CURRENT_TIMESTAMP WHERE id = :d",
            1,
            id="soft-delete",
        ),
        pytest.param(
            "UPDATE deployment_resources SET memory_mb = 1024 WHERE deployment_id = :d",
            1,
            id="resources",
        ),
        pytest.param(
            "DELETE FROM deployment_resources WHERE deployment_id = :d", 1, id="resources-gone"
        ),
        pytest.param(
            "UPDATE deployments SET container_image = container_image, target_replicas = 1 "
            "WHERE id = :d",
            0,
            id="same-values",
        ),
        pytest.param("UPDATE deployments SET name = 'renamed' WHERE id = :d", 0, id="name"),
        pytest.param(
            "UPDATE deployments SET status = 'running' WHERE id = :d", 0, id="status-by-hand"
        ),
        pytest.param(
            "UPDATE deployment_resources SET updated_at = updated_at WHERE deployment_id = :d",
            0,
            id="resources-touched",
        ),
    ],
)
async def test_plain_sql_spec_changes_bump_the_generation(
    engine: AsyncEngine, statement: str, bumps: int
) -> None:
    op = Operator(engine)
    d = await op.add_deployment(await op.add_user(), "web", replicas=1)
    # Inserting the deployment made its row; inserting its resources was a change.
    before, observed = await _generation(engine, d)
    assert (before, observed) == (2, 0)
    await _sql(engine, statement, d)
    assert await _generation(engine, d) == (before + bumps, 0)


async def test_a_deployment_without_resources_starts_at_generation_one(
    engine: AsyncEngine,
) -> None:
    op = Operator(engine)
    user = await op.add_user()
    d = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO deployments (id, name, user_id, container_image) "
                "VALUES (:d, 'bare', :u, 'nginx:1')"
            ),
            {"d": str(d), "u": str(user)},
        )
    assert await _generation(engine, d) == (1, 0)
    await _sql(
        engine,
        "INSERT INTO deployment_resources (deployment_id, cpu_cores, memory_mb, storage_gb) "
        "VALUES (:d, 1, 512, 1)",
        d,
    )
    assert await _generation(engine, d) == (2, 0)


async def test_the_controllers_writes_do_not_bump_the_generation(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    d = await op.add_deployment(await op.add_user(), "web", replicas=2)
    generation, _ = await _generation(engine, d)
    now = datetime.now(UTC)
    state = ProgressState(observed_generation=generation, progress_since=now)
    assert await store.record_status(
        d, DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED, "0/2 replicas running", now, state
    )
    await store.create_replicas(d, 2, now)
    await store.save_progress(d, ProgressState(generation, failures=1, retry_at=now))
    assert await _generation(engine, d) == (generation, generation)
    # The operator's next edit is seen as one.
    await op.scale(d, 3)
    loaded = await store.load_deployment(d)
    assert loaded is not None
    assert (loaded.generation, loaded.observed_generation) == (generation + 1, generation)


async def test_progress_round_trips_with_the_status(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    d = await op.add_deployment(await op.add_user(), "web", replicas=1)
    fresh = await store.load_deployment(d)
    assert fresh is not None
    assert fresh.progress is None  # the controller never wrote any
    now = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)
    state = ProgressState(
        observed_generation=fresh.generation,
        failures=3,
        retry_at=now + timedelta(seconds=40),
        progress_since=now,
        stable_since=None,
        error="image pull failed: " + "x" * 600,
    )
    assert await store.record_status(
        d, DeploymentStatus.PENDING, DeploymentStatus.FAILED, "no progress", now, state
    )
    loaded = await store.load_deployment(d)
    assert loaded is not None
    assert loaded.progress is not None
    assert loaded.progress == ProgressState(
        fresh.generation, 3, now + timedelta(seconds=40), now, None, _clipped(state.error)
    )
    # A status write from a stale read writes neither the status nor its progress.
    other = ProgressState(fresh.generation, failures=9)
    assert not await store.record_status(
        d, DeploymentStatus.PENDING, DeploymentStatus.SCHEDULED, "stale", now, other
    )
    again = await store.load_deployment(d)
    assert again is not None
    assert again.progress == loaded.progress
    # Progress alone (a backoff step without a status change).
    calm = ProgressState(fresh.generation, stable_since=now)
    await store.save_progress(d, calm)
    last = await store.load_deployment(d)
    assert last is not None
    assert last.progress == calm
    assert [d.progress for d in await store.load_active()] == [calm]


async def test_a_missing_state_row_is_made_again_by_the_next_write(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    d = await op.add_deployment(await op.add_user(), "web", replicas=1)
    await _sql(engine, "DELETE FROM deployment_controller_state WHERE deployment_id = :d", d)
    loaded = await store.load_deployment(d)
    assert loaded is not None
    assert (loaded.generation, loaded.progress) == (1, None)
    await store.save_progress(d, ProgressState(observed_generation=1, failures=2))
    assert await _generation(engine, d) == (1, 1)
    await op.scale(d, 2)
    assert await _generation(engine, d) == (2, 1)


async def test_a_deployment_deleted_outright_takes_its_state_row_along(
    engine: AsyncEngine,
) -> None:
    op = Operator(engine)
    d = await op.add_deployment(await op.add_user(), "web", replicas=1)
    # Its resources row goes by cascade too: that row's trigger must not fail the delete.
    await _sql(engine, "DELETE FROM deployments WHERE id = :d", d)
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM deployment_controller_state) + "
                    "(SELECT count(*) FROM deployment_resources)"
                )
            )
        ).scalar_one()
    assert left == 0


async def test_a_state_row_that_holds_text_holds_its_deployment(engine: AsyncEngine) -> None:
    """SQLite stores 'many' in an INTEGER column (and its CHECK compares text as greater than
    any number): the deployment is held and reported, the others load. PostgreSQL refuses
    the value itself."""
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    good = await op.add_deployment(user, "good", replicas=1)
    bad = await op.add_deployment(user, "bad", replicas=1)
    junk = "UPDATE deployment_controller_state SET crash_failures = 'many' WHERE deployment_id = :d"
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="invalid input syntax"):
            await _sql(engine, junk, bad)
        return
    await _sql(engine, junk, bad)
    assert [d.id for d in await store.load_active()] == [good]
    assert store.held == frozenset({bad})
    [h] = await op.history(bad)
    assert "deployment_controller_state.crash_failures = 'many'" in h["reason"]


async def test_the_controller_records_the_generation_it_acted_on_when_no_status_changes(
    engine: AsyncEngine, db_url: str, cluster: Cluster
) -> None:
    """A scale-down ends `running` as it began, with no new status to write; the controller
    still records the generation it acted on, which `fogctl rollout status` waits for."""
    cluster.ensure_running()
    urls = list(cluster.urls)[:1]
    op = Operator(engine)
    await op.add_node("node-0", urls[0])
    user = await op.add_user()
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "web", replicas=3)
        await eventually(lambda: converged(op, urls, d, 3))

        async def observed(status: str) -> bool:
            generation, seen = await _generation(engine, d)
            assert (await op.status(d), seen) == (status, generation)
            return True

        await eventually(lambda: observed("running"))
        before, _ = await _generation(engine, d)
        await op.scale(d, 2)
        after, _ = await _generation(engine, d)
        assert after == before + 1
        await eventually(lambda: converged(op, urls, d, 2))
        await eventually(lambda: observed("running"))
    remove_managed_containers(urls)
