"""Migration 0007 adds the spec tables to a database that holds deployments, on both backends.

The rows are written at 0006, as the controller of that revision wrote them. After the upgrade
they are untouched (no generation moved: adding the tables is no operator's change), the
controller loads them with the image's own settings, and plain SQL can give them a spec; the
downgrade removes every table, trigger and function 0007 made and leaves 0006's counting as it
was.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from controller.runspec import EMPTY_RUN, PortSpec, RunSpec
from controller.store import Store
from schema import engine as engine_mod
from schema import migrate, models

BEFORE = "0006_deployment_generation"
REVISION = "0007_deployment_spec"
# 0008 adds one more spec table (deployment_node_selectors).
NEW_TABLES = {*models.SPEC_TABLES, "registry_credentials"} - {"deployment_node_selectors"}


async def _sql(url: str, *statements: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run statements in one transaction; the rows of the last one."""
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine_mod.writer(engine).begin() as conn:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                result = await conn.execute(
                    text(statement),
                    {k: v for k, v in params.items() if f":{k}" in statement},
                )
                rows = [tuple(r) for r in result.all()] if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def _objects(url: str) -> set[str]:
    if engine_mod.is_sqlite(url):
        rows = await _sql(url, "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
    else:
        rows = await _sql(
            url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' UNION ALL "
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal UNION ALL "
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'",
        )
    return {str(r[0]) for r in rows}


async def _generation(url: str, d: str) -> int:
    rows = await _sql(
        url, "SELECT generation FROM deployment_controller_state WHERE deployment_id = :d", d=d
    )
    return int(rows[0][0])


async def test_upgrade_keeps_a_filled_database_and_downgrade_takes_only_its_own(
    empty_db_url: str,
) -> None:
    url = empty_db_url
    await migrate.upgrade_async(url, BEFORE)
    user, d, replica = (str(uuid.uuid4()) for _ in range(3))
    await _sql(
        url,
        "INSERT INTO users (id, username) VALUES (:u, 'old')",
        "INSERT INTO deployments (id, name, user_id, container_image, target_replicas) "
        "VALUES (:d, 'web', :u, 'nginx:1.27', 2)",
        "INSERT INTO deployment_resources (deployment_id, cpu_cores, memory_mb, storage_gb) "
        "VALUES (:d, 0.5, 512, 1)",
        "INSERT INTO deployment_replicas (id, deployment_id, status) VALUES (:r, :d, 'pending')",
        u=user,
        d=d,
        r=replica,
    )
    generation = await _generation(url, d)
    before = await _objects(url)
    updated = await _sql(url, "SELECT updated_at FROM deployments")

    await migrate.upgrade_async(url, REVISION)

    assert await _objects(url) - before >= NEW_TABLES
    assert await _generation(url, d) == generation
    assert await _sql(url, "SELECT updated_at FROM deployments") == updated
    # The store and the drift check speak the head's schema (0008 adds placement).
    await migrate.upgrade_async(url)
    assert await migrate.drift_async(url) == []
    store = Store(engine_mod.create_engine(url, poolclass=NullPool))
    try:
        (loaded,) = await store.load_deployments([uuid.UUID(d)])
        assert loaded.run == EMPTY_RUN  # no spec row: the image's own settings
        assert [r.id for r in loaded.replicas] == [uuid.UUID(replica)]
        # Plain SQL gives the old deployment a spec: one new generation per row.
        await _sql(
            url,
            "INSERT INTO deployment_specs (deployment_id, network) VALUES (:d, 'bridge')",
            "INSERT INTO deployment_ports (deployment_id, container_port, host_port) "
            "VALUES (:d, 80, 18080)",
            d=d,
        )
        assert await _generation(url, d) == generation + 2
        (loaded,) = await store.load_deployments([uuid.UUID(d)])
        assert loaded.run == RunSpec(network="bridge", ports=(PortSpec(80, 18080),))
    finally:
        await store.close()

    await migrate.downgrade_async(url, BEFORE)

    assert await _objects(url) == before
    assert await _sql(url, "SELECT name, target_replicas FROM deployments") == [("web", 2)]
    # 0006's own counting still works.
    await _sql(url, "UPDATE deployments SET container_image = 'nginx:2' WHERE id = :d", d=d)
    assert await _generation(url, d) == generation + 3
    await migrate.upgrade_async(url)
    assert await migrate.drift_async(url) == []
