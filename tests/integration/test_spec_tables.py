"""The container spec's tables (migration 0007) against real PostgreSQL and SQLite, written
with plain SQL as an operator writes them: every rule refused by its named constraint, every
spec change a new generation, and every change one the controller hears of promptly."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.fogctl.errors import CONSTRAINTS, constraint_name
from controller.store import deployment_rows
from controller.watch import PgListener
from schema import models
from tests.harness.fleet import Operator, eventually

SPEC_TABLE_NAMES = (*models.SPEC_TABLES, "registry_credentials")
CRED = "INSERT INTO registry_credentials (user_id, name, registry_host, username, "
CRED_ROW = CRED + "password_encrypted) VALUES (:u, 'reg', '127.0.0.1:5000', 'fog', 'x')"


def _specs(columns: str, values: str) -> str:
    return f"INSERT INTO deployment_specs (deployment_id, {columns}) VALUES (:d, {values})"


def _port(values: str) -> str:
    return f"INSERT INTO deployment_ports (deployment_id, container_port, host_port, protocol) VALUES (:d, {values})"  # noqa: E501


def _selector(values: str) -> str:
    return (
        f"INSERT INTO deployment_node_selectors (deployment_id, key, value) VALUES (:d, {values})"
    )


def _volume(values: str) -> str:
    return f"INSERT INTO deployment_volumes (deployment_id, name, host_path, mount_path) VALUES (:d, {values})"  # noqa: E501


HC = "healthcheck_command, "
# (constraint, statements run in order: the last one is refused by that constraint)
REFUSED: list[tuple[str, tuple[str, ...]]] = [
    ("ck_deployment_specs_entrypoint_array", (_specs("entrypoint", """'"sh"'"""),)),
    ("ck_deployment_specs_command_array", (_specs("command", """'{"a": 1}'"""),)),
    ("ck_deployment_specs_healthcheck_command_array", (_specs("healthcheck_command", "'3'"),)),
    ("ck_deployment_specs_network_known", (_specs("network", "'overlay'"),)),
    ("ck_deployment_specs_stop_grace_seconds_range", (_specs("stop_grace_seconds", "3601"),)),
    ("ck_deployment_specs_stop_grace_seconds_range", (_specs("stop_grace_seconds", "-1"),)),
    (
        "ck_deployment_specs_healthcheck_interval_positive",
        (_specs(HC + "healthcheck_interval_seconds", """'["CMD", "true"]', 0"""),),
    ),
    (
        "ck_deployment_specs_healthcheck_timeout_positive",
        (_specs(HC + "healthcheck_timeout_seconds", """'["CMD", "true"]', 0"""),),
    ),
    (
        "ck_deployment_specs_healthcheck_retries_positive",
        (_specs(HC + "healthcheck_retries", """'["CMD", "true"]', 0"""),),
    ),
    (
        "ck_deployment_specs_healthcheck_start_period_non_negative",
        (_specs(HC + "healthcheck_start_period_seconds", """'["CMD", "true"]', -1"""),),
    ),
    ("ck_deployment_specs_healthcheck_needs_command", (_specs("healthcheck_retries", "3"),)),
    ("ck_deployment_specs_image_pull_secret_not_empty", (_specs("image_pull_secret", "''"),)),
    (
        "uq_deployment_specs_deployment_id",
        (_specs("network", "'host'"), _specs("network", "'bridge'")),
    ),
    (
        "ck_deployment_env_name_not_empty",
        ("INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, '', 'x')",),
    ),
    (
        "ck_deployment_env_name_without_equals",
        ("INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'A=B', 'x')",),
    ),
    (
        "pk_deployment_env",
        ("INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'A', 'x')",) * 2,
    ),
    (
        "ck_deployment_labels_key_not_empty",
        ("INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, '', 'x')",),
    ),
    (
        "ck_deployment_labels_key_not_reserved",
        ("INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, 'fog.x', 'y')",),
    ),
    (
        "pk_deployment_labels",
        ("INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, 'k', 'v')",) * 2,
    ),
    ("ck_deployment_ports_container_port_range", (_port("0, NULL, 'tcp'"),)),
    ("ck_deployment_ports_container_port_range", (_port("65536, NULL, 'tcp'"),)),
    ("ck_deployment_ports_host_port_range", (_port("80, 0, 'tcp'"),)),
    ("ck_deployment_ports_host_port_range", (_port("80, 65536, 'tcp'"),)),
    ("ck_deployment_ports_protocol_known", (_port("80, NULL, 'TCP'"),)),
    (
        "uq_deployment_ports_deployment_id_host_port_protocol",
        (_port("80, 18080, 'tcp'"), _port("81, 18080, 'tcp'")),
    ),
    (
        "uq_deployment_ports_deployment_id_container_port_protocol",
        (_port("80, NULL, 'udp'"), _port("80, 18080, 'udp'")),
    ),
    ("ck_deployment_volumes_name_or_host_path", (_volume("'data', '/srv', '/data'"),)),
    ("ck_deployment_volumes_name_or_host_path", (_volume("NULL, NULL, '/data'"),)),
    ("ck_deployment_volumes_mount_path_absolute", (_volume("'data', NULL, 'data'"),)),
    ("ck_deployment_volumes_host_path_absolute", (_volume("NULL, 'srv', '/data'"),)),
    ("ck_deployment_volumes_name_format", (_volume("'-data', NULL, '/data'"),)),
    ("ck_deployment_volumes_name_format", (_volume("'da/ta', NULL, '/data'"),)),
    (
        "uq_deployment_volumes_deployment_id_mount_path",
        (_volume("'a', NULL, '/data'"), _volume("NULL, '/srv', '/data'")),
    ),
    (
        "uq_deployment_volumes_deployment_id_name",
        (_volume("'a', NULL, '/one'"), _volume("'a', NULL, '/two'")),
    ),
    (
        "ck_registry_credentials_name_not_empty",
        (CRED + "password_encrypted) VALUES (:u, '', '127.0.0.1:5000', 'fog', 'x')",),
    ),
    (
        "ck_registry_credentials_registry_host_not_empty",
        (CRED + "password_encrypted) VALUES (:u, 'reg', '', 'fog', 'x')",),
    ),
    (
        "ck_registry_credentials_username_not_empty",
        (CRED + "password_encrypted) VALUES (:u, 'reg', '127.0.0.1:5000', '', 'x')",),
    ),
    ("uq_registry_credentials_user_id_name", (CRED_ROW, CRED_ROW)),
    # Placement (0008); the label syntax itself: tests/integration/test_placement_schema.py.
    ("ck_deployment_specs_spread_by_syntax", (_specs("spread_by", "'-zone'"),)),
    ("ck_deployment_specs_max_per_node_positive", (_specs("max_per_node", "0"),)),
    ("ck_deployment_node_selectors_key_syntax", (_selector("'Fog.IO/arch', 'arm64'"),)),
    ("ck_deployment_node_selectors_value_syntax", (_selector("'zone', 'a b'"),)),
    ("pk_deployment_node_selectors", (_selector("'zone', 'a'"), _selector("'zone', 'b'"))),
]


async def _owner(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    op = Operator(engine)
    user = await op.add_user(f"u-{uuid.uuid4().hex[:6]}")
    return user, await op.add_deployment(user, f"web-{uuid.uuid4().hex[:6]}")


async def _run(engine: AsyncEngine, statements: tuple[str, ...], **ids: uuid.UUID) -> None:
    params = {k: str(v) for k, v in ids.items()}
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(
                text(statement), {k: v for k, v in params.items() if f":{k}" in statement}
            )


@pytest.mark.parametrize(
    ("constraint", "statements"),
    [pytest.param(c, s, id=f"{c}-{i}") for i, (c, s) in enumerate(REFUSED)],
)
async def test_plain_sql_breaking_a_spec_rule_is_refused_by_its_named_constraint(
    engine: AsyncEngine, constraint: str, statements: tuple[str, ...]
) -> None:
    user, d = await _owner(engine)
    if len(statements) > 1:  # the first rows are fine on their own
        await _run(engine, statements[:-1], u=user, d=d)
    with pytest.raises(IntegrityError) as raised:
        await _run(engine, statements[-1:], u=user, d=d)
    # Named on both backends: PostgreSQL says it, SQLite's UNIQUE columns map to it.
    assert constraint_name(raised.value) == constraint
    assert constraint in CONSTRAINTS  # fogctl has words for it


def test_every_rule_of_the_spec_tables_has_a_refusal_above() -> None:
    """A CHECK or UNIQUE added to a spec table without a case here would go untested."""
    named = {
        str(c.name)
        for name in SPEC_TABLE_NAMES
        for c in models.Base.metadata.tables[name].constraints
        if type(c).__name__ in ("CheckConstraint", "UniqueConstraint")
        and not str(c.name).endswith("_uuid")  # SQLite's id checks: test_schema_constraints
    }
    named |= {
        "pk_deployment_env",
        "pk_deployment_labels",
        "pk_deployment_node_selectors",
    }  # keys that are rules
    assert named == {c for c, _ in REFUSED}


async def test_a_full_spec_in_plain_sql_is_accepted(engine: AsyncEngine) -> None:
    user, d = await _owner(engine)
    await _run(
        engine,
        (
            _specs(
                "entrypoint, command, network, stop_grace_seconds, healthcheck_command, "
                "healthcheck_interval_seconds, healthcheck_retries, image_pull_secret",
                """'["/bin/sh", "-c"]', '["exec httpd"]', 'bridge', 0, '["CMD", "true"]', """
                "0.5, 1, 'reg'",
            ),
            "INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'A', '')",
            "INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, 'fogx', 'y')",
            # The same number over tcp and udp; several ports left for the engine to pick.
            _port("53, 5353, 'tcp'"),
            _port("53, 5353, 'udp'"),
            _port("80, NULL, 'tcp'"),
            _port("81, NULL, 'tcp'"),
            _port(f"{models.PORT_MAX}, {models.PORT_MIN}, 'tcp'"),
            # Several host paths (no name) in one deployment.
            _volume("NULL, '/srv/a', '/a'"),
            _volume("NULL, '/srv/b', '/b'"),
            _volume("'Data_1.x-y', NULL, '/data'"),
            "UPDATE deployment_specs SET spread_by = 'topology.fog.io/zone', max_per_node = 1, "
            "rebalance = false",
            # Selectors may name the engine's own labels, and a value may be empty.
            _selector("'fog.io/arch', 'arm64'"),
            _selector("'zone', 'a'"),
            _selector("'gpu', ''"),
            CRED_ROW,
        ),
        u=user,
        d=d,
    )
    async with engine.connect() as conn:
        counts = [
            (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
            for t in SPEC_TABLE_NAMES
        ]
    assert counts == [1, 1, 1, 5, 3, 3, 1]


# --- generations and wake-ups ----------------------------------------------------------------


async def _generation(engine: AsyncEngine, d: uuid.UUID) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT generation FROM deployment_controller_state "
                        "WHERE deployment_id = :d"
                    ),
                    {"d": str(d)},
                )
            ).scalar_one()
        )


async def _updated_at(engine: AsyncEngine, d: uuid.UUID) -> datetime:
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                models.Deployment.__table__.select().where(models.Deployment.id == d)
            )
        ).one()
    assert isinstance(found.updated_at, datetime)
    return found.updated_at


# Rows each case starts from, then the statement under test and how many generations it adds.
SEED = (
    _specs("network", "'bridge'"),
    "INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'A', 'a')",
    "INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, 'team', 'edge')",
    _port("80, 18080, 'tcp'"),
    _volume("'data', NULL, '/data'"),
    _selector("'zone', 'a'"),
)
GENERATION_CASES = [
    ("spec-insert", (), _specs("command", """'["x"]'"""), 1),
    ("spec-update", SEED[:1], "UPDATE deployment_specs SET command = '[\"y\"]'", 1),
    ("spec-update-json", SEED[:1], "UPDATE deployment_specs SET entrypoint = '[\"sh\"]'", 1),
    ("spec-delete", SEED[:1], "DELETE FROM deployment_specs", 1),
    ("spec-same-value", SEED[:1], "UPDATE deployment_specs SET network = 'bridge'", 0),
    ("spec-touched", SEED[:1], "UPDATE deployment_specs SET updated_at = updated_at", 0),
    ("purge-volumes", SEED[:1], "UPDATE deployment_specs SET purge_volumes = true", 0),
    (
        "purge-volumes-done",
        (SEED[0], "UPDATE deployment_specs SET purge_volumes = true"),
        "UPDATE deployment_specs SET purge_volumes = false",
        0,
    ),
    ("env-insert", (), SEED[1], 1),
    ("env-update", SEED[1:2], "UPDATE deployment_env SET value = 'b'", 1),
    ("env-rename", SEED[1:2], "UPDATE deployment_env SET name = 'B'", 1),
    ("env-same", SEED[1:2], "UPDATE deployment_env SET value = 'a'", 0),
    ("env-delete", SEED[1:2], "DELETE FROM deployment_env", 1),
    ("label-insert", (), SEED[2], 1),
    ("label-update", SEED[2:3], "UPDATE deployment_labels SET value = 'core'", 1),
    ("label-delete", SEED[2:3], "DELETE FROM deployment_labels", 1),
    ("port-insert", (), SEED[3], 1),
    ("port-update", SEED[3:4], "UPDATE deployment_ports SET host_port = 18081", 1),
    ("port-delete", SEED[3:4], "DELETE FROM deployment_ports", 1),
    ("volume-insert", (), SEED[4], 1),
    ("volume-update", SEED[4:5], "UPDATE deployment_volumes SET read_only = true", 1),
    ("volume-delete", SEED[4:5], "DELETE FROM deployment_volumes", 1),
    ("spread-by", SEED[:1], "UPDATE deployment_specs SET spread_by = 'zone'", 1),
    ("max-per-node", SEED[:1], "UPDATE deployment_specs SET max_per_node = 2", 1),
    ("rebalance-off", SEED[:1], "UPDATE deployment_specs SET rebalance = false", 1),
    ("rebalance-same", SEED[:1], "UPDATE deployment_specs SET rebalance = true", 0),
    ("selector-insert", (), SEED[5], 1),
    ("selector-update", SEED[5:6], "UPDATE deployment_node_selectors SET value = 'b'", 1),
    ("selector-same", SEED[5:6], "UPDATE deployment_node_selectors SET value = 'a'", 0),
    ("selector-delete", SEED[5:6], "DELETE FROM deployment_node_selectors", 1),
]


@pytest.mark.parametrize(
    ("seed", "statement", "bumps"),
    [pytest.param(s, st, b, id=name) for name, s, st, b in GENERATION_CASES],
)
async def test_every_spec_change_is_a_new_generation_and_moves_the_deployment(
    engine: AsyncEngine, seed: tuple[str, ...], statement: str, bumps: int
) -> None:
    _, d = await _owner(engine)
    await _run(engine, seed, d=d)
    before, stamp = await _generation(engine, d), await _updated_at(engine, d)
    await _run(engine, (statement,), d=d)
    assert await _generation(engine, d) == before + bumps
    moved = await _updated_at(engine, d) > stamp
    # A purge request is no spec change but the controller must act on it: it moves too;
    # the controller clearing it when done does not.
    assert moved == (bumps > 0 or "purge_volumes = true" in statement)


async def test_a_spec_row_moved_to_another_deployment_bumps_both(engine: AsyncEngine) -> None:
    _, d = await _owner(engine)
    _, other = await _owner(engine)
    await _run(engine, (SEED[1],), d=d)
    before = (await _generation(engine, d), await _generation(engine, other))
    await _run(engine, ("UPDATE deployment_env SET deployment_id = :o",), o=other)
    assert (await _generation(engine, d), await _generation(engine, other)) == (
        before[0] + 1,
        before[1] + 1,
    )


async def test_deleting_a_deployment_takes_its_spec_rows_along(engine: AsyncEngine) -> None:
    _, d = await _owner(engine)
    await _run(engine, SEED, d=d)
    await _run(engine, ("DELETE FROM deployments WHERE id = :d",), d=d)
    async with engine.connect() as conn:
        left = [
            (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
            for t in models.SPEC_TABLES
        ]
    assert left == [0] * len(models.SPEC_TABLES)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_sqlite_poll_sees_a_spec_change_and_a_deleted_spec_row(
    engine: AsyncEngine,
) -> None:
    _, d = await _owner(engine)
    _, quiet = await _owner(engine)
    await _run(engine, SEED, d=d)
    for statement in ("UPDATE deployment_env SET value = 'z'", "DELETE FROM deployment_ports"):
        marks = dict(await deployment_rows.changed_since(engine, None))
        since = max(marks.values())
        await _run(engine, (statement,))
        changed = dict(await deployment_rows.changed_since(engine, since))
        assert set(changed) == {d}, statement
        assert quiet not in changed


async def test_postgresql_notifies_every_spec_table_change(
    pg_url: str, pg_engine: AsyncEngine
) -> None:
    keys: list[uuid.UUID] = []
    stop = asyncio.Event()
    listener = PgListener(pg_url, keys.append, lambda: None, probe_seconds=0.2)
    with capture_logs() as logs:
        task = asyncio.create_task(listener.run(stop))

        async def connected() -> bool:
            return any(e["event"] == "listener_connected" for e in logs)

        await eventually(connected, within=10)
    try:
        user, d = await _owner(pg_engine)

        async def heard() -> bool:
            return d in keys

        statements: list[str] = [
            *SEED,
            "UPDATE deployment_specs SET purge_volumes = true",
            "DELETE FROM deployment_labels",
            "UPDATE deployment_specs SET max_per_node = 3",
            "UPDATE deployment_node_selectors SET value = 'b'",
            CRED_ROW,  # no deployment: wakes nobody (checked with the barrier below)
        ]
        for statement in statements[:-1]:
            keys.clear()
            await _run(pg_engine, (statement,), d=d, u=user)
            await eventually(heard, within=5)
        keys.clear()
        await _run(pg_engine, (statements[-1],), u=user)
        # The controller's own write when the purge is done.
        await _run(pg_engine, ("UPDATE deployment_specs SET purge_volumes = false",))
        await _run(pg_engine, ("DELETE FROM deployment_env",), d=d)  # the barrier
        await eventually(heard, within=5)
        assert keys == [d]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
