"""The store loads the container spec an operator wrote with plain SQL, on both backends.

A full spec becomes exactly the `RunSpec` it says; a spec row the controller cannot use is
reported and its deployment held, never run with a spec it silently got wrong; a change of
one child row alone reaches the PostgreSQL resync; the registry login and the volume purges
are read and written by the store alone.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.model import DeploymentStatus
from controller.placement_rules import NO_RULES, PlacementRules
from controller.runspec import EMPTY_RUN, HealthSpec, PortSpec, RunSpec, VolumeSpec
from controller.store import Store, deployment_rows
from schema import engine as engine_mod
from tests.harness.fleet import Operator
from tests.integration.test_store import counting

FULL_SPEC_SQL = (
    "INSERT INTO deployment_specs (deployment_id, entrypoint, command, network, "
    "stop_grace_seconds, healthcheck_command, healthcheck_interval_seconds, "
    "healthcheck_timeout_seconds, healthcheck_retries, healthcheck_start_period_seconds, "
    'image_pull_secret) VALUES (:d, \'["/bin/sh", "-c"]\', \'["exec httpd -f -p 8080"]\', '
    "'bridge', 10, '[\"CMD-SHELL\", \"wget -q -O- http://127.0.0.1:8080/ || exit 1\"]', "
    "5, 2, 3, 10, 'company-registry')",
    "INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'SITE', 'north')",
    "INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, 'LOG_LEVEL', 'debug')",
    "INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, 'team', 'edge')",
    "INSERT INTO deployment_ports (deployment_id, container_port, host_port, protocol) "
    "VALUES (:d, 8080, 18080, 'tcp')",
    "INSERT INTO deployment_ports (deployment_id, container_port) VALUES (:d, 53)",
    "INSERT INTO deployment_ports (deployment_id, container_port, host_port, protocol) "
    "VALUES (:d, 53, 5353, 'udp')",
    "INSERT INTO deployment_volumes (deployment_id, name, mount_path) VALUES (:d, 'data', '/data')",
    "INSERT INTO deployment_volumes (deployment_id, host_path, mount_path, read_only) "
    "VALUES (:d, '/srv/fog/cfg', '/cfg', true)",
    "UPDATE deployment_specs SET spread_by = 'zone', max_per_node = 2, rebalance = false "
    "WHERE deployment_id = :d",
    "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
    "VALUES (:d, 'fog.io/arch', 'arm64')",
    "INSERT INTO deployment_node_selectors (deployment_id, key, value) VALUES (:d, 'gpu', '')",
)
FULL_RUN = RunSpec(
    entrypoint=("/bin/sh", "-c"),
    command=("exec httpd -f -p 8080",),
    env=(("LOG_LEVEL", "debug"), ("SITE", "north")),
    network="bridge",
    ports=(PortSpec(53, None, "tcp"), PortSpec(53, 5353, "udp"), PortSpec(8080, 18080, "tcp")),
    volumes=(
        VolumeSpec("/cfg", host_path="/srv/fog/cfg", read_only=True),
        VolumeSpec("/data", name="data"),
    ),
    labels=(("team", "edge"),),
    stop_grace_seconds=10,
    healthcheck=HealthSpec(
        ("CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/ || exit 1"), 5.0, 2.0, 3, 10.0
    ),
    image_pull_secret="company-registry",
)
FULL_PLACEMENT = PlacementRules.of(
    {"fog.io/arch": "arm64", "gpu": ""}, spread_by="zone", max_per_node=2, rebalance=False
)


async def _sql(engine: AsyncEngine, *statements: str, **ids: uuid.UUID) -> None:
    async with engine_mod.writer(engine).begin() as conn:
        for statement in statements:
            params = {k: str(v) for k, v in ids.items() if f":{k}" in statement}
            await conn.execute(text(statement), params)


async def _history_reasons(engine: AsyncEngine, d: uuid.UUID) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT reason FROM deployment_status_history WHERE deployment_id = :d"),
            {"d": str(d)},
        )
        return [str(r[0]) for r in rows.all()]


async def test_a_full_spec_written_in_plain_sql_loads_as_its_runspec(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "web")
    bare = await op.add_deployment(user, "bare")
    await _sql(engine, *FULL_SPEC_SQL, d=d)

    loaded = {x.id: x for x in await store.load_deployments()}

    assert loaded[d].run == FULL_RUN
    assert loaded[d].run.canonical == FULL_RUN.canonical
    assert loaded[bare].run == EMPTY_RUN
    # The spec is part of the replica's spec hash: the same image, another hash.
    assert loaded[d].spec_hash != loaded[bare].spec_hash
    assert loaded[d].run.host_ports() == frozenset({(18080, "tcp"), (5353, "udp")})


async def test_a_spec_of_child_rows_alone_loads_with_the_images_own_settings(
    engine: AsyncEngine,
) -> None:
    op, store = Operator(engine), Store(engine)
    d = await op.add_deployment(await op.add_user(), "web")
    await _sql(engine, FULL_SPEC_SQL[1], d=d)
    loaded = await store.load_deployment(d)
    assert loaded is not None
    assert loaded.run == RunSpec(env=(("SITE", "north"),))


async def test_the_spec_load_is_a_fixed_number_of_queries(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "first")
    await _sql(engine, *FULL_SPEC_SQL, d=d)
    with counting(engine) as few:
        await store.load_deployments()
    for i in range(12):
        more = await op.add_deployment(user, f"d{i}")
        await _sql(engine, *FULL_SPEC_SQL, d=more)
    with counting(engine) as many:
        loaded = await store.load_deployments()
    assert [x.run for x in loaded] == [FULL_RUN] * 13
    assert [x.placement for x in loaded] == [FULL_PLACEMENT] * 13
    assert len(many) == len(few)


async def _good_and_bad(engine: AsyncEngine, statement: str) -> tuple[Store, uuid.UUID, uuid.UUID]:
    """A store, a deployment, and one whose spec `statement` writes (`:d` is its id)."""
    op = Operator(engine)
    user = await op.add_user()
    good = await op.add_deployment(user, "good")
    bad = await op.add_deployment(user, "bad")
    await _sql(engine, statement, d=bad)
    return Store(engine), good, bad


BAD_SPEC = [
    pytest.param(
        "INSERT INTO deployment_specs (deployment_id, entrypoint) VALUES (:d, '[\"sh\", 1]')",
        "deployment_specs",
        "entrypoint",
        "is not a JSON array of strings",
        id="entrypoint-number",
    ),
    pytest.param(
        "INSERT INTO deployment_specs (deployment_id, healthcheck_command) "
        'VALUES (:d, \'[["CMD"], "true"]\')',
        "deployment_specs",
        "healthcheck_command",
        "is not a JSON array of strings",
        id="healthcheck-nested",
    ),
]


@pytest.mark.parametrize(("statement", "table", "column", "problem"), BAD_SPEC)
async def test_a_spec_the_controller_cannot_use_holds_its_deployment_with_a_reason(
    engine: AsyncEngine, statement: str, table: str, column: str, problem: str
) -> None:
    store, good, bad = await _good_and_bad(engine, statement)

    with capture_logs() as logs:
        first = await store.load_active()
        again = await store.load_deployments()

    assert [x.id for x in first] == [good]
    assert [x.id for x in again] == [good]
    assert store.held == {bad}
    warnings = [e for e in logs if e["event"] == "row_unusable"]
    assert len(warnings) == 1, "reported once, not once per load"
    (w,) = warnings
    assert (w["table"], w["column"], w["deployment_id"]) == (table, column, str(bad))
    assert problem in w["problem"]
    (reason,) = await _history_reasons(engine, bad)
    assert f"{table}.{column}" in reason
    assert "held until the row is fixed" in reason

    await _sql(
        engine, f"UPDATE deployment_specs SET {column} = NULL WHERE deployment_id = :d", d=bad
    )
    await store.find_unusable()
    assert store.held == frozenset()
    assert {x.id for x in await store.load_deployments()} == {good, bad}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("statement", "column", "problem"),
    [
        pytest.param(
            "INSERT INTO deployment_specs (deployment_id, healthcheck_command, "
            "healthcheck_retries) VALUES (:d, '[\"CMD\", \"true\"]', 'three')",
            "healthcheck_retries",
            "is not an integer",
            id="retries-text",
        ),
        pytest.param(
            "INSERT INTO deployment_volumes (deployment_id, name, mount_path, read_only) "
            "VALUES (:d, 'data', '/data', 'false')",
            "read_only",
            "is not a boolean",
            id="read-only-text",
        ),
    ],
)
async def test_sqlite_a_spec_value_of_the_wrong_type_holds_its_deployment(
    engine: AsyncEngine, statement: str, column: str, problem: str
) -> None:
    # SQLite keeps 'three' in an INTEGER column (its CHECK `>= 1` compares text above any
    # number), and SQLAlchemy would read the text 'false' as True.
    store, good, bad = await _good_and_bad(engine, statement)
    with capture_logs() as logs:
        assert [x.id for x in await store.load_deployments()] == [good]
    (w,) = [e for e in logs if e["event"] == "row_unusable"]
    assert (w["column"], w["deployment_id"]) == (column, str(bad))
    assert problem in w["problem"]


async def test_placement_loads_with_or_without_a_spec_row(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    plain, selected, spread = [await op.add_deployment(user, n) for n in ("a", "b", "c")]
    # A selector alone (no deployment_specs row): rebalance keeps its default.
    await _sql(
        engine,
        "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
        "VALUES (:d, 'zone', 'a')",
        d=selected,
    )
    await _sql(
        engine,
        "INSERT INTO deployment_specs (deployment_id, spread_by) VALUES (:d, 'zone')",
        d=spread,
    )
    loaded = {x.id: x.placement for x in await store.load_deployments()}
    assert loaded == {
        plain: NO_RULES,
        selected: PlacementRules.of({"zone": "a"}),
        spread: PlacementRules.of(spread_by="zone"),
    }


PLACEMENT_PAST_THE_CHECKS = [
    pytest.param(
        "INSERT INTO deployment_specs (deployment_id, spread_by) VALUES (:d, 'zone a')",
        "deployment_specs",
        "spread_by",
        "is not a label key",
        id="spread-by",
    ),
    pytest.param(
        "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
        "VALUES (:d, 'Fog.IO/arch', 'arm64')",
        "deployment_node_selectors",
        "key",
        "is not a label key",
        id="selector-key",
    ),
    pytest.param(
        "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
        "VALUES (:d, 'zone', '-a')",
        "deployment_node_selectors",
        "value",
        "is not a label value",
        id="selector-value",
    ),
    pytest.param(
        "INSERT INTO deployment_specs (deployment_id, rebalance) VALUES (:d, 'yes')",
        "deployment_specs",
        "rebalance",
        "is not a boolean",
        id="rebalance-text",
    ),
    pytest.param(
        "INSERT INTO deployment_specs (deployment_id, max_per_node) VALUES (:d, 'two')",
        "deployment_specs",
        "max_per_node",
        "is not an integer",
        id="max-per-node-text",
    ),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("statement", "table", "column", "problem"), PLACEMENT_PAST_THE_CHECKS)
async def test_sqlite_placement_written_past_the_checks_holds_its_deployment(
    engine: AsyncEngine, statement: str, table: str, column: str, problem: str
) -> None:
    # The CHECKs turned off, as a tool or an old file may have them: the controller must not
    # place by a selector it reads differently from what the operator meant.
    op = Operator(engine)
    user = await op.add_user()
    good, bad = await op.add_deployment(user, "good"), await op.add_deployment(user, "bad")
    async with engine_mod.writer(engine).connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("PRAGMA ignore_check_constraints = ON")
        await conn.execute(text(statement), {"d": str(bad)})
        await conn.commit()
    store = Store(engine)
    with capture_logs() as logs:
        assert [x.id for x in await store.load_deployments()] == [good]
    assert store.held == {bad}
    (w,) = [e for e in logs if e["event"] == "row_unusable"]
    assert (w["table"], w["column"], w["deployment_id"]) == (table, column, str(bad))
    assert problem in w["problem"]
    (reason,) = await _history_reasons(engine, bad)
    assert f"{table}.{column}" in reason


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_resync_fingerprint_moves_when_only_a_child_spec_row_changes(
    engine: AsyncEngine,
) -> None:
    op, store = Operator(engine), Store(engine)
    d = await op.add_deployment(await op.add_user(), "web")
    await _sql(engine, *FULL_SPEC_SQL, d=d)
    await store.load_active()
    before = await deployment_rows.fingerprints(engine)
    await _sql(engine, "UPDATE deployment_env SET value = 'south' WHERE name = 'SITE'")
    after = await deployment_rows.fingerprints(engine)
    assert after[d] != before[d]
    (loaded,) = await store.load_active()
    assert dict(loaded.run.env)["SITE"] == "south"
    await _sql(engine, "DELETE FROM deployment_labels")
    assert (await deployment_rows.fingerprints(engine))[d] != after[d]
    (loaded,) = await store.load_active()
    assert loaded.run.labels == ()


async def test_a_registry_login_is_found_by_its_users_name_only(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    alice, bob = await op.add_user("alice"), await op.add_user("bob")
    await _sql(
        engine,
        "INSERT INTO registry_credentials (user_id, name, registry_host, username, "
        "password_encrypted) VALUES (:u, 'company', '127.0.0.1:5000', 'fog', 'gAAAA-sealed')",
        u=alice,
    )
    assert await store.registry_credential(alice, "company") == (
        "127.0.0.1:5000",
        "fog",
        "gAAAA-sealed",
    )
    assert await store.registry_credential(bob, "company") is None
    assert await store.registry_credential(alice, "other") is None


async def test_purges_are_listed_for_deleted_deployments_until_done(engine: AsyncEngine) -> None:
    op, store = Operator(engine), Store(engine)
    user = await op.add_user()
    soft, gone, live, unasked = [
        await op.add_deployment(user, name) for name in ("soft", "gone", "live", "unasked")
    ]
    for d in (soft, gone, live):
        await _sql(
            engine,
            "INSERT INTO deployment_specs (deployment_id, purge_volumes) VALUES (:d, true)",
            d=d,
        )
    await _sql(
        engine, "UPDATE deployments SET deleted_at = CURRENT_TIMESTAMP WHERE id = :d", d=soft
    )
    await _sql(
        engine, "UPDATE deployments SET deleted_at = CURRENT_TIMESTAMP WHERE id = :d", d=unasked
    )
    ok = await store.record_status(
        gone, DeploymentStatus.PENDING, DeploymentStatus.DELETED, "deleted", datetime.now(UTC)
    )
    assert ok

    assert sorted(await store.deployments_to_purge()) == sorted([soft, gone])
    before = await _generation(engine, soft)
    await store.volumes_purged(soft)
    assert await store.deployments_to_purge() == [gone]
    # The controller's own write is no operator's change.
    assert await _generation(engine, soft) == before


async def _generation(engine: AsyncEngine, d: uuid.UUID) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT generation FROM deployment_controller_state WHERE deployment_id = :d"),
            {"d": str(d)},
        )
        return int(found.scalar_one())
