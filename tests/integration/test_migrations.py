"""The migrations build exactly the schema the models describe, and take it all away again.

The daemon runs `upgrade` on whatever database it is pointed at, so a migration that differs
from the models (a missing index, a default the ORM relies on) would only show in production.
Autogenerate's comparison is the check; CHECK constraints and triggers, which autogenerate does
not compare, are checked by name here.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable

from schema import engine as engine_mod
from schema import migrate, models

HEAD = "0009_spec_lock_order"
TABLES = {
    "users",
    "nodes",
    "deployments",
    "deployment_resources",
    "deployment_replicas",
    "deployment_status_history",
    "control_plane",
    "deployment_controller_state",
    "deployment_specs",
    "deployment_env",
    "deployment_labels",
    "deployment_ports",
    "deployment_volumes",
    "registry_credentials",
    "deployment_node_selectors",
}
TRIGGERS = {f"trg_{table}_touch_updated_at" for table in models.TABLES_WITH_UPDATED_AT}
# PostgreSQL only: NOTIFY on changes of operator-owned columns.
NOTIFY_TRIGGERS = {f"trg_{table}_notify" for table in models.NOTIFY_TABLES}
NOTIFY_FUNCTIONS = {f"fog_notify_{table}" for table in models.NOTIFY_TABLES}
ENUM_TYPES = {"deployment_status", "replica_status", "node_status"}
# Triggers that count a deployment's generation (migration 0006), per backend.
GENERATION_TRIGGERS = {name: set(found) for name, found in models.GENERATION_TRIGGERS.items()}


async def _run(url: str, work: Any) -> Any:
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def _objects(connection: Connection) -> dict[str, set[str]]:
    """What a migration may leave behind, by kind, beyond Alembic's own version table."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    if connection.dialect.name == "sqlite":
        rows = connection.execute(
            text("SELECT type, name FROM sqlite_master WHERE tbl_name <> 'alembic_version'")
        ).all()
        return {
            "tables": tables,
            "triggers": {name for kind, name in rows if kind == "trigger"},
            "indexes": {name for kind, name in rows if kind == "index"},
        }
    triggers = connection.execute(
        text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    ).scalars()
    types = connection.execute(
        text(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE t.typtype = 'e' AND n.nspname = 'public'"
        )
    ).scalars()
    functions = connection.execute(
        text(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'"
        )
    ).scalars()
    return {
        "tables": tables,
        "triggers": set(triggers),
        "enum_types": set(types),
        "functions": set(functions),
    }


def _expected_check_names(dialect: Dialect) -> dict[str, set[str]]:
    """CHECK names as the models would create them on `dialect` (enum CHECKs only on SQLite)."""
    expected: dict[str, set[str]] = {}
    for table in models.Base.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        expected[table.name] = set(re.findall(r"CONSTRAINT (\w+) CHECK", ddl))
    return expected


def _reflected_check_names(connection: Connection) -> dict[str, set[str]]:
    inspector = inspect(connection)
    return {
        table: {c["name"] for c in inspector.get_check_constraints(table) if c["name"]}
        for table in TABLES
    }


def test_exactly_one_head() -> None:
    assert migrate.heads() == [HEAD]


async def test_upgrade_from_empty_matches_the_models(empty_db_url: str) -> None:
    assert await migrate.current_async(empty_db_url) is None

    await migrate.upgrade_async(empty_db_url)

    assert await migrate.current_async(empty_db_url) == HEAD
    assert await migrate.drift_async(empty_db_url) == []
    objects = await _run(empty_db_url, _objects)
    assert objects["tables"] == TABLES
    if "enum_types" in objects:
        assert objects["triggers"] == (
            TRIGGERS | NOTIFY_TRIGGERS | GENERATION_TRIGGERS["postgresql"]
        )
        assert objects["enum_types"] == ENUM_TYPES
        assert objects["functions"] == (
            {"fog_touch_updated_at"} | NOTIFY_FUNCTIONS | set(models.GENERATION_FUNCTIONS)
        )
    else:
        assert objects["triggers"] == TRIGGERS | GENERATION_TRIGGERS["sqlite"]


async def test_check_constraints_carry_the_models_names(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        reflected = await connection.run_sync(_reflected_check_names)
    assert reflected == _expected_check_names(engine.dialect)


async def test_drift_check_sees_a_real_difference(db_url: str, engine: AsyncEngine) -> None:
    # Guards the guard: an empty diff must mean "same schema", not "compared nothing".
    async with engine.begin() as connection:
        await connection.execute(text("DROP INDEX ix_deployments_status"))
        if engine.dialect.name == "postgresql":
            # nodes.labels goes through the custom default comparison (json has no '=').
            await connection.execute(
                text("""ALTER TABLE nodes ALTER COLUMN labels SET DEFAULT '{"a": 1}'""")
            )
    diffs = await migrate.drift_async(db_url)
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in diffs}
    assert "add_index" in kinds
    if engine.dialect.name == "postgresql":
        assert "modify_default" in kinds


async def test_downgrade_to_base_removes_everything_and_upgrade_rebuilds(db_url: str) -> None:
    await migrate.downgrade_async(db_url, "base")

    assert await migrate.current_async(db_url) is None
    objects = await _run(db_url, _objects)
    assert all(not found for found in objects.values()), objects

    await migrate.upgrade_async(db_url)
    assert await migrate.current_async(db_url) == HEAD
    assert await migrate.drift_async(db_url) == []


async def test_sync_calls_inside_an_event_loop_point_to_the_async_twin(db_url: str) -> None:
    with pytest.raises(RuntimeError, match="upgrade_async"):
        migrate.upgrade(db_url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgresql+asyncpg://nobody@localhost/nothing",
            ["CREATE TYPE deployment_status", "CREATE FUNCTION fog_touch_updated_at"],
            id="pg",
        ),
        pytest.param(
            "sqlite+aiosqlite:///nothing.db",
            ["CONSTRAINT ck_deployments_deployment_status CHECK", "AFTER UPDATE ON nodes"],
            id="sqlite",
        ),
    ],
)
def test_offline_mode_writes_the_sql_without_connecting(url: str, expected: list[str]) -> None:
    config = migrate.make_config(url)
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    for fragment in expected:
        assert fragment in sql


def _uuid_columns(connection: Connection) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(table, column) -> (declared type, default) of every uuid column, as the database has it.

    Autogenerate compares neither a column's collation nor, on SQLite, reliably its default
    expression, so a later migration that rebuilds a table (Alembic's batch mode reflects it
    and drops `COLLATE NOCASE`) would pass the drift check; this catches it."""
    wanted = [
        (table.name, c.name)
        for table in models.Base.metadata.sorted_tables
        for c in table.columns
        if isinstance(c.type, models.UUIDType)
    ]
    out: dict[tuple[str, str], tuple[str, str | None]] = {}
    if connection.dialect.name == "sqlite":
        for table, column in wanted:
            ddl = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                {"t": table},
            ).scalar_one()
            line = next(
                part.strip() for part in ddl.split("\n") if part.strip().startswith(f"{column} ")
            )
            declared = re.sub(r" DEFAULT \(.*\)", "", line).removesuffix(",").strip()
            default = "random" if "randomblob" in line else None
            out[(table, column)] = (declared.removeprefix(f"{column} "), default)
        return out
    for table, column in wanted:
        row = connection.execute(
            text(
                "SELECT data_type, column_default FROM information_schema.columns "
                "WHERE table_name = :t AND column_name = :c"
            ),
            {"t": table, "c": column},
        ).one()
        out[(table, column)] = (row[0], "random" if row[1] == "gen_random_uuid()" else row[1])
    return out


async def test_uuid_columns_are_canonical_text_on_sqlite_and_ids_default_to_random(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        found = await connection.run_sync(_uuid_columns)
    assert len(found) == 25  # 11 ids, 14 foreign keys
    for (table, column), (declared, default) in found.items():
        if engine.dialect.name == "sqlite":
            nullable = column in {"node_id", "changed_by"}
            assert declared == 'VARCHAR(36) COLLATE "NOCASE"' + ("" if nullable else " NOT NULL")
        else:
            assert declared == "uuid"
        assert default == ("random" if column == "id" else None), (table, column)
