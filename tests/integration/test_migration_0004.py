"""Migration 0004 converts a database made before it in place, on both backends.

The rows are written as the code before 0004 wrote them: SQLAlchemy's `Uuid` type (32 hex
digits on SQLite), plus one user an operator typed in canonical text, the form that code could
not find. After the upgrade every id is canonical text on SQLite, the foreign keys still hold,
and the controller's own reads find the rows; the downgrade gives the old form back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

from controller.store import Store
from schema import engine as engine_mod
from schema import migrate
from tests.harness import database

BEFORE = "0003_replica_observations"
REVISION = "0004_uuid_text_and_defaults"


def _sql(sql: str, **params: Any) -> Any:
    """Text SQL whose uuid parameters bind as the pre-0004 code bound them (`sa.Uuid`)."""
    return text(sql).bindparams(
        *(
            bindparam(k, v, type_=Uuid()) if isinstance(v, uuid.UUID) else bindparam(k, v)
            for k, v in params.items()
        )
    )


class Rows:
    def __init__(self) -> None:
        self.user, self.typed_user = uuid.uuid4(), uuid.uuid4()
        self.node, self.deployment, self.typed_deployment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.resources, self.replica, self.history = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


async def _fill(conn: AsyncConnection, r: Rows, sqlite: bool) -> None:
    now = datetime.now(UTC)
    await conn.execute(_sql("INSERT INTO users (id, username) VALUES (:id, 'old')", id=r.user))
    # An operator's row in canonical text, upper case: on SQLite before 0004, invisible.
    typed = str(r.typed_user).upper() if sqlite else str(r.typed_user)
    await conn.execute(text(f"INSERT INTO users (id, username) VALUES ('{typed}', 'typed')"))
    await conn.execute(
        _sql(
            "INSERT INTO nodes (id, name, docker_url) VALUES (:id, 'n1', 'unix:///x.sock')",
            id=r.node,
        )
    )
    for d, user, name in ((r.deployment, r.user, "web"), (r.typed_deployment, r.user, "api")):
        await conn.execute(
            _sql(
                "INSERT INTO deployments (id, name, user_id, container_image, target_replicas) "
                "VALUES (:id, :name, :user, 'nginx:1.27', 2)",
                id=d,
                name=name,
                user=user,
            )
        )
    await conn.execute(
        _sql(
            "INSERT INTO deployment_resources (id, deployment_id, cpu_cores, memory_mb, "
            "storage_gb) VALUES (:id, :d, 0.5, 512, 1)",
            id=r.resources,
            d=r.deployment,
        )
    )
    await conn.execute(
        _sql(
            "INSERT INTO deployment_replicas (id, deployment_id, node_id, status, created_at) "
            "VALUES (:id, :d, :n, 'running', :now)",
            id=r.replica,
            d=r.deployment,
            n=r.node,
            now=now,
        )
    )
    await conn.execute(
        _sql(
            "INSERT INTO deployment_status_history (id, deployment_id, old_status, new_status, "
            "changed_by, changed_at, reason) VALUES (:id, :d, 'pending', 'running', :u, :now, "
            "'kept')",
            id=r.history,
            d=r.deployment,
            u=r.user,
            now=now,
        )
    )


async def _raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def test_upgrade_converts_a_filled_database_in_place_and_downgrade_reverses(
    empty_db_url: str,
) -> None:
    url, sqlite = empty_db_url, engine_mod.is_sqlite(empty_db_url)
    await migrate.upgrade_async(url, BEFORE)
    r = Rows()
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine_mod.writer(engine).begin() as conn:
            await _fill(conn, r, sqlite)
    finally:
        await engine.dispose()
    schema_objects = "SELECT type, name FROM sqlite_master WHERE type IN ('index', 'trigger')"
    if sqlite:
        (stored,) = await _raw(url, "SELECT id FROM nodes")
        assert stored == (r.node.hex,), "the old form: 32 hex digits"
        before = set(await _raw(url, schema_objects))

    await migrate.upgrade_async(url, REVISION)

    if sqlite:
        # What 0004 itself did, before later revisions (0005 adds node columns) run.
        assert set(await _raw(url, schema_objects)) == before
    # The store and the drift check speak the head's schema.
    await migrate.upgrade_async(url)
    assert await migrate.drift_async(url) == []
    if sqlite:
        ids = {row[0] for row in await _raw(url, "SELECT id FROM users")}
        assert ids == {str(r.user), str(r.typed_user).upper()}
        assert await _raw(url, "SELECT id FROM nodes") == [(str(r.node),)]
        replica = await _raw(url, "SELECT id, deployment_id, node_id FROM deployment_replicas")
        assert replica == [(str(r.replica), str(r.deployment), str(r.node))]
        assert await _raw(url, "PRAGMA foreign_key_check") == []
        # Every index and update trigger the rebuilt tables had is back (0006 adds more).
        assert before <= set(await _raw(url, schema_objects))
    # Plain SQL by canonical text now finds the rows (on SQLite, whatever the case).
    found = await _raw(
        url,
        "SELECT count(*) FROM deployment_status_history "
        f"WHERE deployment_id = '{str(r.deployment).upper() if sqlite else r.deployment}' "
        f"AND changed_by = '{r.user}'",
    )
    assert found == [(1,)]
    typed = await _raw(url, f"SELECT username FROM users WHERE id = '{r.typed_user}'")
    assert typed == [("typed",)]

    # The controller's reads find the converted rows, ids and all.
    store = Store(engine_mod.create_engine(url, poolclass=NullPool))
    try:
        loaded = {d.id: d for d in await store.load_deployments([r.deployment])}
        assert set(loaded) == {r.deployment}
        d = loaded[r.deployment]
        assert d.user_id == r.user
        assert d.resources is not None
        assert [(x.id, x.node_id) for x in d.replicas] == [(r.replica, r.node)]
        assert d.last_reason == "kept"
        assert [n.id for n in await store.nodes()] == [r.node]
        assert set(await store.node_usage()) == {r.node}
    finally:
        await store.close()

    await migrate.downgrade_async(url, BEFORE)
    if sqlite:
        assert await _raw(url, "SELECT id FROM nodes") == [(r.node.hex,)]
        assert await _raw(url, "PRAGMA foreign_key_check") == []
    history = await _raw(url, "SELECT reason FROM deployment_status_history")
    assert history == [("kept",)]
    await migrate.upgrade_async(url)
    assert await migrate.drift_async(url) == []


@pytest.mark.parametrize("bad", ["not-a-uuid", "8f0c2b1e4a5d4e6f9a1b2c3d4e5f6a7"])
async def test_sqlite_upgrade_refuses_an_id_that_is_no_uuid_and_changes_nothing(
    tmp_path: Path, bad: str
) -> None:
    # SQLite only: PostgreSQL's uuid type never held such a value.
    url = database.sqlite_url(tmp_path / "old.db")
    await migrate.upgrade_async(url, BEFORE)
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine_mod.writer(engine).begin() as conn:
            await conn.execute(
                text(f"INSERT INTO nodes (id, name, docker_url) VALUES ('{bad}', 'n', 'u')")
            )
    finally:
        await engine.dispose()

    with pytest.raises(RuntimeError, match=rf"nodes\.id: 1 value\(s\), e\.g\. '{bad}'"):
        await migrate.upgrade_async(url, REVISION)

    assert await migrate.current_async(url) == BEFORE
    assert await _raw(url, "SELECT id FROM nodes") == [(bad,)]
