"""The database itself refuses bad rows and keeps its bookkeeping, whoever writes the SQL.

Operators may edit the tables with psql or the sqlite3 shell, bypassing the Pydantic layer and
the ORM, so every rule below is exercised with plain statements against both backends.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import selectinload

from schema import api, models
from schema import engine as engine_mod
from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus
from tests.harness import database

users = models.Base.metadata.tables["users"]
nodes = models.Base.metadata.tables["nodes"]
deployments = models.Base.metadata.tables["deployments"]
resources = models.Base.metadata.tables["deployment_resources"]
replicas = models.Base.metadata.tables["deployment_replicas"]
history = models.Base.metadata.tables["deployment_status_history"]
specs = models.Base.metadata.tables["deployment_specs"]
credentials = models.Base.metadata.tables["registry_credentials"]

# SQLAlchemy's SQLite DateTime text form; SQL-side stamps (defaults, triggers) must match it.
SQLITE_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")

GOOD_RESOURCES = {"cpu_cores": 1.0, "memory_mb": 1024, "gpu_units": 0, "storage_gb": 10}


async def _insert(conn: AsyncConnection, table: Table, **values: Any) -> uuid.UUID:
    # Core insert: Python-side defaults (id, timestamps) apply, validation of the ORM does not.
    result = await conn.execute(insert(table).values(**values).returning(table.c.id))
    return uuid.UUID(str(result.scalar_one()))


async def _user(conn: AsyncConnection, name: str | None = None) -> uuid.UUID:
    return await _insert(conn, users, username=name or f"user-{uuid.uuid4().hex[:8]}")


async def _deployment(conn: AsyncConnection, user_id: uuid.UUID, **values: Any) -> uuid.UUID:
    row = {"name": f"web-{uuid.uuid4().hex[:8]}", "container_image": "nginx:1.27", **values}
    return await _insert(conn, deployments, user_id=user_id, **row)


async def _node(conn: AsyncConnection, **values: Any) -> uuid.UUID:
    row = {"name": f"node-{uuid.uuid4().hex[:8]}", "docker_url": "tcp://10.0.0.1:2375", **values}
    return await _insert(conn, nodes, **row)


async def _count(conn: AsyncConnection, table: Table, **where: Any) -> int:
    statement = select(func.count()).select_from(table)
    for column, value in where.items():
        statement = statement.where(table.c[column] == value)
    return int((await conn.execute(statement)).scalar_one())


def _raw(sql: str, **uuids: uuid.UUID) -> Any:
    """Hand-written SQL whose UUID parameters bind correctly on both backends."""
    return text(sql).bindparams(
        *(bindparam(name, value, type_=models.UUIDType()) for name, value in uuids.items())
    )


# --- CHECK constraints ---------------------------------------------------------------------------

RESOURCE_BOUNDS = [
    ("cpu_cores", models.CPU_CORES_MIN, models.CPU_CORES_MAX, 0.01),
    ("memory_mb", models.MEMORY_MB_MIN, models.MEMORY_MB_MAX, 1),
    ("gpu_units", models.GPU_UNITS_MIN, models.GPU_UNITS_MAX, 1),
    ("storage_gb", models.STORAGE_GB_MIN, models.STORAGE_GB_MAX, 1),
]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param(column, value, id=f"{column}={value:g}")
        for column, low, high, step in RESOURCE_BOUNDS
        for value in (low - step, high + step)
    ],
)
async def test_resource_value_just_outside_its_range_is_refused(
    engine: AsyncEngine, column: str, value: float
) -> None:
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
    with pytest.raises(IntegrityError, match=f"ck_deployment_resources_{column}_range"):
        async with engine.begin() as conn:
            await _insert(
                conn, resources, deployment_id=deployment_id, **{**GOOD_RESOURCES, column: value}
            )


@pytest.mark.parametrize("edge", ["low", "high"])
async def test_resource_bounds_themselves_are_accepted(engine: AsyncEngine, edge: str) -> None:
    values = {column: low if edge == "low" else high for column, low, high, _ in RESOURCE_BOUNDS}
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
        await _insert(conn, resources, deployment_id=deployment_id, **values)
        row = (await conn.execute(select(resources))).mappings().one()
    assert {column: row[column] for column in values} == values


BAD_ROWS = [
    ("deployments", {"target_replicas": -1}, "ck_deployments_target_replicas_non_negative"),
    ("deployments", {"name": ""}, "ck_deployments_name_not_empty"),
    ("deployments", {"container_image": ""}, "ck_deployments_container_image_not_empty"),
    ("users", {"username": ""}, "ck_users_username_not_empty"),
    ("nodes", {"name": ""}, "ck_nodes_name_not_empty"),
    ("nodes", {"docker_url": ""}, "ck_nodes_docker_url_not_empty"),
    ("nodes", {"cpu_cores": 0.0}, "ck_nodes_cpu_cores_positive"),
    ("nodes", {"memory_mb": 0}, "ck_nodes_memory_mb_positive"),
    ("nodes", {"gpu_units": -1}, "ck_nodes_gpu_units_non_negative"),
    ("nodes", {"storage_gb": 0}, "ck_nodes_storage_gb_positive"),
]


@pytest.mark.parametrize(
    ("table_name", "values", "constraint"),
    [pytest.param(*row, id=row[2].removeprefix("ck_")) for row in BAD_ROWS],
)
async def test_check_constraint_refuses_its_bad_row(
    engine: AsyncEngine, table_name: str, values: dict[str, Any], constraint: str
) -> None:
    async def write(conn: AsyncConnection) -> None:
        if table_name == "deployments":
            await _deployment(conn, await _user(conn), **values)
        elif table_name == "users":
            await _insert(conn, users, **values)
        else:
            await _node(conn, **values)

    with pytest.raises(IntegrityError, match=constraint):
        async with engine.begin() as conn:
            await write(conn)


async def test_zero_replicas_is_a_valid_target(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn), target_replicas=0)
        assert await _count(conn, deployments, id=deployment_id, target_replicas=0) == 1


@pytest.mark.parametrize(
    ("table_name", "type_name"),
    [
        ("deployments", "deployment_status"),
        ("deployment_replicas", "replica_status"),
        ("nodes", "node_status"),
    ],
)
async def test_unknown_status_written_by_hand_is_refused(
    engine: AsyncEngine, table_name: str, type_name: str
) -> None:
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
        await _insert(conn, replicas, deployment_id=deployment_id)
        await _node(conn)
    # A native PostgreSQL enum refuses the literal while parsing it, before any constraint runs:
    # SQLSTATE 22P02 (invalid_text_representation), which SQLAlchemy's asyncpg dialect raises
    # as a plain DBAPIError. SQLite has only the CHECK, hence an IntegrityError naming it.
    postgresql = engine.dialect.name == "postgresql"
    expected = DBAPIError if postgresql else IntegrityError
    message = (
        f'invalid input value for enum {type_name}: "bogus"'
        if postgresql
        else f"ck_{table_name}_{type_name}"
    )
    with pytest.raises(expected, match=re.escape(message)) as raised:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {table_name} SET status = 'bogus'"))
    if postgresql:
        assert getattr(raised.value.orig, "sqlstate", None) == "22P02"


# --- the partial unique index ------------------------------------------------------------------


async def test_live_names_are_unique_per_user_but_soft_deleted_ones_free_the_name(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        alice, bob = await _user(conn), await _user(conn)
        first = await _deployment(conn, alice, name="web")
        await _deployment(conn, bob, name="web")  # another user's namespace

    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await _deployment(conn, alice, name="web")

    async with engine.begin() as conn:
        await conn.execute(
            _raw(
                "UPDATE deployments SET deleted_at = CURRENT_TIMESTAMP, status = 'deleted' "
                "WHERE id = :id",
                id=first,
            )
        )
        second = await _deployment(conn, alice, name="web")
        # A name may be soft-deleted any number of times.
        await conn.execute(
            update(deployments)
            .where(deployments.c.id == second)
            .values(deleted_at=datetime.now(UTC), status=DeploymentStatus.DELETED)
        )
        await _deployment(conn, alice, name="web")
        assert await _count(conn, deployments, user_id=alice, name="web") == 3


# --- foreign keys ------------------------------------------------------------------------------


async def test_deleting_a_deployment_removes_its_replicas_resources_and_history(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        user_id = await _user(conn)
        doomed, kept = await _deployment(conn, user_id), await _deployment(conn, user_id)
        for deployment_id in (doomed, kept):
            await _insert(conn, resources, deployment_id=deployment_id, **GOOD_RESOURCES)
            await _insert(conn, replicas, deployment_id=deployment_id)
            await _insert(
                conn,
                history,
                deployment_id=deployment_id,
                old_status="pending",
                new_status="running",
            )

    async with engine.begin() as conn:
        await conn.execute(_raw("DELETE FROM deployments WHERE id = :id", id=doomed))

    async with engine.connect() as conn:
        for table in (resources, replicas, history):
            assert await _count(conn, table, deployment_id=doomed) == 0, table.name
            assert await _count(conn, table, deployment_id=kept) == 1, table.name


async def test_deleting_a_user_removes_their_deployments_and_clears_their_history_marks(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        owner, operator = await _user(conn), await _user(conn)
        owned = await _deployment(conn, operator)
        other = await _deployment(conn, owner)
        await _insert(conn, replicas, deployment_id=owned)
        await _insert(
            conn,
            history,
            deployment_id=other,
            old_status="pending",
            new_status="stopped",
            changed_by=operator,
        )

    async with engine.begin() as conn:
        await conn.execute(_raw("DELETE FROM users WHERE id = :id", id=operator))

    async with engine.connect() as conn:
        assert await _count(conn, deployments, user_id=operator) == 0
        assert await _count(conn, replicas, deployment_id=owned) == 0
        marks = (await conn.execute(select(history.c.changed_by))).scalars().all()
        assert marks == [None]
        assert await _count(conn, deployments, id=other) == 1


async def test_deleting_a_node_unassigns_its_replicas(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
        node_id = await _node(conn)
        replica_id = await _insert(conn, replicas, deployment_id=deployment_id, node_id=node_id)

    async with engine.begin() as conn:
        await conn.execute(_raw("DELETE FROM nodes WHERE id = :id", id=node_id))

    async with engine.connect() as conn:
        row = (await conn.execute(select(replicas).where(replicas.c.id == replica_id))).one()
    assert row.node_id is None
    assert row.deployment_id == deployment_id


# --- updated_at triggers -----------------------------------------------------------------------


async def _row_for(conn: AsyncConnection, table_name: str) -> tuple[Table, uuid.UUID, str]:
    """A fresh row in `table_name` and a harmless raw UPDATE for it."""
    deployment_id = await _deployment(conn, await _user(conn))
    if table_name == "deployments":
        return deployments, deployment_id, "target_replicas = target_replicas + 3"
    if table_name == "deployment_resources":
        row_id = await _insert(conn, resources, deployment_id=deployment_id, **GOOD_RESOURCES)
        return resources, row_id, "memory_mb = memory_mb + 1"
    if table_name == "deployment_specs":
        row_id = await _insert(conn, specs, deployment_id=deployment_id)
        return specs, row_id, "stop_grace_seconds = coalesce(stop_grace_seconds, 0) + 1"
    if table_name == "registry_credentials":
        user_id = await _user(conn)
        row_id = await _insert(
            conn,
            credentials,
            user_id=user_id,
            name="reg",
            registry_host="127.0.0.1:5000",
            username="fog",
            password_encrypted="x",
        )
        return credentials, row_id, "username = username || 'x'"
    assert table_name == "nodes", f"no row maker for {table_name}"
    return nodes, await _node(conn), "draining = NOT draining"


async def _stamps(
    conn: AsyncConnection, table: Table, row_id: uuid.UUID
) -> tuple[datetime, datetime]:
    row = (
        await conn.execute(
            select(table.c.created_at, table.c.updated_at).where(table.c.id == row_id)
        )
    ).one()
    return row.created_at, row.updated_at


@pytest.mark.parametrize("table_name", models.TABLES_WITH_UPDATED_AT)
async def test_updated_at_moves_on_every_raw_update(engine: AsyncEngine, table_name: str) -> None:
    async with engine.begin() as conn:
        table, row_id, assignment = await _row_for(conn, table_name)
        created, before = await _stamps(conn, table, row_id)

    # Back to back, well within one second and (on PostgreSQL) inside one transaction, where
    # now() would not move: each statement must still move the stamp forward.
    seen = [before]
    async with engine.begin() as conn:
        for _ in range(3):
            await conn.execute(
                _raw(f"UPDATE {table_name} SET {assignment} WHERE id = :id", id=row_id)
            )
            created_after, updated = await _stamps(conn, table, row_id)
            seen.append(updated)
            assert created_after == created

    assert seen == sorted(seen), seen
    assert len(set(seen)) == len(seen), seen
    assert seen[-1] - seen[0] < timedelta(seconds=5)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_stamps_never_run_backwards_past_a_stored_value(engine: AsyncEngine) -> None:
    # SQLite's clock has millisecond resolution and SQLAlchemy writes microseconds: a row the
    # ORM stamped at 12:00:00.123456 and updated by hand within that millisecond would have
    # been stamped 12:00:00.123000, earlier than before. A stamp ahead of the clock shows the
    # trigger's "previous + 1 ms" floor without racing the clock.
    ahead = datetime(2999, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn), updated_at=ahead)
        await conn.execute(
            _raw("UPDATE deployments SET target_replicas = 2 WHERE id = :id", id=deployment_id)
        )
        _, updated = await _stamps(conn, deployments, deployment_id)
        raw = (
            await conn.execute(
                _raw("SELECT updated_at FROM deployments WHERE id = :id", id=deployment_id)
            )
        ).scalar_one()
    assert updated > ahead
    assert updated - ahead <= timedelta(milliseconds=2)
    assert SQLITE_STAMP.match(raw), raw


async def test_an_update_that_sets_updated_at_itself_keeps_its_value(engine: AsyncEngine) -> None:
    # The ORM's onupdate (and the controller's status writes) stamp the row themselves; the
    # triggers only step in when a statement leaves updated_at alone, so the value in memory
    # and the one stored stay the same.
    chosen = datetime(2030, 5, 6, 7, 8, 9, 123_456, tzinfo=UTC)
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
        await conn.execute(
            update(deployments).where(deployments.c.id == deployment_id).values(updated_at=chosen)
        )
        _, updated = await _stamps(conn, deployments, deployment_id)
    assert updated == chosen


# --- defaults and types ------------------------------------------------------------------------


async def test_a_node_needs_only_id_name_and_docker_url(engine: AsyncEngine) -> None:
    node_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            _raw(
                "INSERT INTO nodes (id, name, docker_url) VALUES (:id, 'edge-1', 'tcp://10.0.0.9:2375')",
                id=node_id,
            )
        )
        row = (await conn.execute(select(nodes).where(nodes.c.id == node_id))).mappings().one()
    assert row["status"] == NodeStatus.UNKNOWN
    assert row["labels"] == {}
    assert row["unschedulable"] is False
    assert row["draining"] is False
    assert row["last_heartbeat_at"] is None
    assert row["created_at"] == row["updated_at"]
    _assert_recent_utc(row["created_at"])


async def test_server_defaults_fill_a_hand_written_deployment(engine: AsyncEngine) -> None:
    deployment_id = uuid.uuid4()
    async with engine.begin() as conn:
        user_id = await _user(conn)
        await conn.execute(
            _raw(
                "INSERT INTO deployments (id, name, user_id, container_image) "
                "VALUES (:id, 'api', :user_id, 'busybox:1.36')",
                id=deployment_id,
                user_id=user_id,
            )
        )
        row = (
            (await conn.execute(select(deployments).where(deployments.c.id == deployment_id)))
            .mappings()
            .one()
        )
        raw_stamp = (
            await conn.execute(
                _raw("SELECT created_at FROM deployments WHERE id = :id", id=deployment_id)
            )
        ).scalar_one()
    assert row["status"] == DeploymentStatus.PENDING
    assert row["target_replicas"] == 1
    assert row["deleted_at"] is None
    _assert_recent_utc(row["created_at"])
    if engine.dialect.name == "sqlite":
        # Same text form SQLAlchemy writes, so ORDER BY and comparisons on the text are right.
        assert SQLITE_STAMP.match(raw_stamp), raw_stamp


async def test_timestamps_come_back_aware_utc_from_python_and_sql_defaults(
    engine: AsyncEngine,
) -> None:
    moment = datetime(2025, 11, 25, 12, 30, 45, 654_321, tzinfo=timezone(timedelta(hours=2)))
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn))
        replica_id = await _insert(conn, replicas, deployment_id=deployment_id, started_at=moment)
        if engine.dialect.name == "postgresql":
            # The column type leaves asyncpg's values alone: they must be UTC whatever the
            # session's zone (asyncpg decodes timestamptz in UTC, not in the session's zone).
            await conn.execute(text("SET LOCAL TIME ZONE 'Asia/Kathmandu'"))
        row = (
            (await conn.execute(select(replicas).where(replicas.c.id == replica_id)))
            .mappings()
            .one()
        )
    assert row["started_at"] == moment
    assert row["started_at"].utcoffset() == timedelta(0)
    assert row["started_at"].hour == 10
    _assert_recent_utc(row["created_at"])


def _assert_recent_utc(value: datetime) -> None:
    assert value.tzinfo is not None, value
    assert value.utcoffset() == timedelta(0), value
    assert abs(datetime.now(UTC) - value) < timedelta(minutes=5), value


# --- ORM round trip ----------------------------------------------------------------------------


async def test_orm_rows_serialise_with_to_dict_and_the_api_schemas(engine: AsyncEngine) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        user = models.User(username="ops")
        node = models.Node(
            name="edge-2", docker_url="unix:///run/docker.sock", labels={"zone": "a"}
        )
        deployment = models.Deployment(
            name="web",
            user=user,
            container_image="nginx:1.27",
            target_replicas=2,
            resources=models.DeploymentResource(**GOOD_RESOURCES),
            replicas=[models.DeploymentReplica(node=node, status=ReplicaStatus.RUNNING)],
            spec=models.DeploymentSpec(
                network="bridge", command=["httpd", "-f"], image_pull_secret="company"
            ),
            env=[models.DeploymentEnv(name="SITE", value="north")],
            ports=[models.DeploymentPort(container_port=8080, host_port=18080)],
            volumes=[models.DeploymentVolume(name="data", mount_path="/data")],
        )
        session.add(deployment)
        await session.commit()

    async with AsyncSession(engine) as session:
        loaded = (
            await session.execute(
                select(models.Deployment)
                .options(
                    selectinload(models.Deployment.resources),
                    selectinload(models.Deployment.replicas),
                    selectinload(models.Deployment.spec),
                    selectinload(models.Deployment.env),
                    selectinload(models.Deployment.labels),
                    selectinload(models.Deployment.ports),
                    selectinload(models.Deployment.volumes),
                )
                .where(models.Deployment.id == deployment.id)
            )
        ).scalar_one()
        as_dict = loaded.to_dict()
        response = api.DeploymentResponse.model_validate(loaded)
        node_row = await session.get(models.Node, node.id)
        assert node_row is not None
        node_dict = node_row.to_dict()
        node_response = api.NodeResponse.model_validate(node_row)
        operation = api.DeploymentOperationResponse.of(loaded, "scaled to 2")

    assert set(as_dict) == {c.key for c in deployments.columns}
    assert as_dict["id"] == str(deployment.id)
    assert as_dict["status"] == "pending"
    assert datetime.fromisoformat(as_dict["created_at"]).utcoffset() == timedelta(0)
    json.dumps(as_dict)
    json.dumps(node_dict)
    assert node_dict["labels"] == {"zone": "a"}

    assert response.id == deployment.id
    assert response.resources is not None
    assert response.resources.memory_mb == 1024
    assert [r.status for r in response.replicas] == [ReplicaStatus.RUNNING]
    # The spec rows, flat under the names `fogctl apply` reads; defaults where no row says.
    assert (response.network, response.command) == ("bridge", ["httpd", "-f"])
    assert response.image_pull_secret == "company"
    assert response.env == {"SITE": "north"}
    assert [(p.container_port, p.host_port, p.protocol) for p in response.ports] == [
        (8080, 18080, "tcp")
    ]
    assert [(v.name, v.mount_path, v.read_only) for v in response.volumes] == [
        ("data", "/data", False)
    ]
    assert response.labels == {}
    assert response.entrypoint is None
    assert node_response.labels == {"zone": "a"}
    assert operation.deployment_id == deployment.id
    assert operation.message == "scaled to 2"


async def test_listing_rows_carry_a_running_replica_count(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        deployment_id = await _deployment(conn, await _user(conn), target_replicas=3)
        for status in (ReplicaStatus.RUNNING, ReplicaStatus.RUNNING, ReplicaStatus.FAILED):
            await _insert(conn, replicas, deployment_id=deployment_id, status=status)
        running = (
            select(func.count())
            .where(
                replicas.c.deployment_id == deployments.c.id,
                replicas.c.status == ReplicaStatus.RUNNING,
            )
            .scalar_subquery()
            .label("running_replicas")
        )
        row = (
            await conn.execute(
                select(deployments, running).where(deployments.c.id == deployment_id)
            )
        ).one()
    listing = api.DeploymentListResponse.model_validate(row)
    assert listing.running_replicas == 2
    assert listing.target_replicas == 3


async def test_delete_statement_cleans_up(engine: AsyncEngine) -> None:
    # Core delete() goes through the same ON DELETE rules as raw SQL.
    async with engine.begin() as conn:
        user_id = await _user(conn)
        deployment_id = await _deployment(conn, user_id)
        await _insert(conn, resources, deployment_id=deployment_id, **GOOD_RESOURCES)
        await conn.execute(delete(users).where(users.c.id == user_id))
        assert await _count(conn, resources) == 0


# --- ids ---------------------------------------------------------------------------------------

UUID_COLUMNS = [
    (table.name, column.name)
    for table in models.Base.metadata.sorted_tables
    for column in table.columns
    if isinstance(column.type, models.UUIDType)
]
MALFORMED_IDS = [
    pytest.param("8f0c2b1e4a5d4e6f9a1b2c3d4e5f6a7b", id="32-hex"),
    pytest.param("8f0c2b1e-4a5d-4e6f-9a1b-2c3d4e5f6a7", id="35-chars"),
    pytest.param("8f0c2b1e-4a5d-4e6f-9a1b-2c3d4e5f6a7g", id="non-hex"),
    pytest.param("8f0c2b1e4-a5d-4e6f-9a1b-2c3d4e5f6a7b", id="dash-misplaced"),
    pytest.param("{8f0c2b1e-4a5d-4e6f-9a1b-2c3d4e5f6a}", id="braces"),
]


async def _sqlite_fk_off(engine: AsyncEngine) -> AsyncConnection:
    """A connection as the sqlite3 shell gives one: foreign keys off."""
    conn = await engine.connect()
    # On the driver's connection: a statement through SQLAlchemy would begin a transaction,
    # inside which SQLite ignores the pragma.
    raw = await conn.get_raw_connection()
    await raw.driver_connection.execute("PRAGMA foreign_keys = OFF")
    return conn


@pytest.fixture
async def sqlite_engine(
    template_databases: database.TemplateDatabases, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """SQLite alone: PostgreSQL's uuid type refuses malformed text by itself (and accepts
    forms, such as 32 bare hex digits, that SQLite's canonical-text CHECK refuses)."""
    url = await template_databases.migrated_sqlite(tmp_path)
    created = engine_mod.create_engine(url)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.mark.parametrize("bad", MALFORMED_IDS)
@pytest.mark.parametrize(("table_name", "column"), UUID_COLUMNS)
async def test_sqlite_refuses_a_malformed_id_in_every_uuid_column_by_name(
    sqlite_engine: AsyncEngine, table_name: str, column: str, bad: str
) -> None:
    engine = sqlite_engine
    # Foreign keys off, as in the sqlite3 shell: only the CHECK stands between the operator
    # and a row the controller could not read. Every other column gets a valid value.
    table = models.Base.metadata.tables[table_name]
    values = {
        "users": "username, id",
        "nodes": "name, docker_url, id",
        "deployments": "name, container_image, id, user_id",
        "deployment_resources": "cpu_cores, memory_mb, storage_gb, id, deployment_id",
        "deployment_replicas": "id, deployment_id, node_id",
        "deployment_status_history": "old_status, new_status, id, deployment_id, changed_by",
        "deployment_controller_state": "id, deployment_id",
        "deployment_specs": "id, deployment_id",
        "deployment_env": "name, deployment_id",
        "deployment_labels": "key, deployment_id",
        "deployment_node_selectors": "key, deployment_id",
        "deployment_ports": "container_port, id, deployment_id",
        "deployment_volumes": "name, mount_path, id, deployment_id",
        "registry_credentials": "name, registry_host, username, password_encrypted, id, user_id",
    }[table_name].split(", ")
    plain = {
        "username": "'u'",
        "name": "'n'",
        "docker_url": "'unix:///x'",
        "container_image": "'busybox'",
        "cpu_cores": "1",
        "memory_mb": "1024",
        "storage_gb": "1",
        "old_status": "'pending'",
        "new_status": "'running'",
        "key": "'k'",
        "container_port": "80",
        "mount_path": "'/data'",
        "registry_host": "'127.0.0.1:5000'",
        "password_encrypted": "'x'",
    }
    literals = [f"'{bad}'" if c == column else plain.get(c, f"'{uuid.uuid4()}'") for c in values]
    assert column in values
    assert set(values) <= set(table.c.keys())
    conn = await _sqlite_fk_off(engine)
    try:
        with pytest.raises(IntegrityError, match=f"ck_{table_name}_{column}_uuid"):
            await conn.execute(
                text(
                    f"INSERT INTO {table_name} ({', '.join(values)}) VALUES ({', '.join(literals)})"
                )
            )
        await conn.rollback()
        # The same row with a canonical id is taken: the CHECK refused the id and nothing else.
        good = [lit if lit != f"'{bad}'" else f"'{uuid.uuid4()}'" for lit in literals]
        await conn.execute(
            text(f"INSERT INTO {table_name} ({', '.join(values)}) VALUES ({', '.join(good)})")
        )
        await conn.rollback()
    finally:
        await conn.close()


async def test_ids_typed_in_canonical_text_are_found_whatever_their_case(
    engine: AsyncEngine,
) -> None:
    user, deployment = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(f"INSERT INTO users (id, username) VALUES ('{str(user).upper()}', 'upper')")
        )
        await conn.execute(
            text(
                "INSERT INTO deployments (id, name, user_id, container_image) "
                f"VALUES ('{deployment}', 'web', '{user}', 'busybox')"
            )
        )
    async with engine.connect() as conn:
        # Bound as the controller binds: a uuid.UUID through the column's type.
        found = (
            await conn.execute(select(deployments.c.user_id).where(deployments.c.id == deployment))
        ).scalar_one()
        owner = (await conn.execute(select(users.c.username).where(users.c.id == user))).scalar()
    assert found == user
    assert owner == "upper"


@pytest.mark.parametrize("table_name", ["users", "nodes", "deployments", "deployment_resources"])
async def test_the_database_makes_the_id_when_plain_sql_leaves_it_out(
    engine: AsyncEngine, table_name: str
) -> None:
    async with engine.begin() as conn:
        user = (
            await conn.execute(text("INSERT INTO users (username) VALUES ('dbmade') RETURNING id"))
        ).scalar_one()
        statements = {
            "users": "INSERT INTO users (username) VALUES ('second')",
            "nodes": "INSERT INTO nodes (name, docker_url) VALUES ('edge', 'unix:///x')",
            "deployments": "INSERT INTO deployments (name, user_id, container_image) "
            f"VALUES ('web', '{user}', 'busybox')",
            "deployment_resources": "INSERT INTO deployments (name, user_id, container_image) "
            f"VALUES ('web', '{user}', 'busybox');"
            "INSERT INTO deployment_resources (deployment_id, cpu_cores, memory_mb, storage_gb) "
            "SELECT id, 1, 1024, 1 FROM deployments",
        }
        for statement in statements[table_name].split(";"):
            await conn.execute(text(statement))
        table = models.Base.metadata.tables[table_name]
        raw = (await conn.execute(text(f"SELECT id FROM {table_name}"))).scalars().all()
        typed = (await conn.execute(select(table.c.id))).scalars().all()
    assert len(raw) == (2 if table_name == "users" else 1)
    for value, parsed in zip(raw, typed, strict=True):
        assert isinstance(parsed, uuid.UUID)
        assert parsed.version == 4
        if engine.dialect.name == "sqlite":
            assert value == str(parsed), "canonical lower-case text"
    assert len(set(typed)) == len(typed)
    if table_name != "users":
        row = await _first_row(engine, table_name)
        assert row["created_at"] is not None
        if "status" in row:
            assert row["status"] in {"unknown", "pending"}


async def _first_row(engine: AsyncEngine, table_name: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table_name}"))
        return dict(result.mappings().first() or {})


async def test_sqlite_id_default_makes_distinct_version_4_uuids(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (username) SELECT 'u' || value FROM "
                + (
                    "json_each('[" + ",".join(str(i) for i in range(500)) + "]')"
                    if engine.dialect.name == "sqlite"
                    else "generate_series(1, 500) AS value"
                )
            )
        )
        ids = (await conn.execute(select(users.c.id))).scalars().all()
    assert len(set(ids)) == 500
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
