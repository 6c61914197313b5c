"""Rows the controller cannot read are reported and left out, never a silent or endless failure.

Every row here is written with plain SQL, as an operator would. On SQLite a column holds
whatever is written (a DATETIME column takes 'now', an INTEGER column takes 'three'); before,
one such row failed every load, so the controller acted on no deployment at all. Now the row's
deployment is held (not loaded, its containers left alone), the log says `row_unusable` once,
and the deployment's history carries the reason; fixing the row brings it back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.model import Deployment
from controller.store import Store
from schema import engine as engine_mod
from tests.harness import database
from tests.harness.engines import Cluster
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)


@pytest.fixture
async def sqlite_engine(
    template_databases: database.TemplateDatabases, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    url = await template_databases.migrated_sqlite(tmp_path)
    created = engine_mod.create_engine(url)
    try:
        yield created
    finally:
        await created.dispose()


async def _sql(engine: AsyncEngine, *statements: str) -> None:
    async with engine_mod.writer(engine).begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


async def _history(engine: AsyncEngine, deployment: uuid.UUID) -> list[tuple[str, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT old_status, new_status, reason FROM deployment_status_history "
                f"WHERE deployment_id = '{deployment}' ORDER BY changed_at"
            )
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


BAD_VALUES = [
    pytest.param("deleted_at = 'now'", "deleted_at", "cannot be read", id="timestamp"),
    pytest.param("target_replicas = 'three'", "target_replicas", "is not an integer", id="int"),
]


@pytest.mark.parametrize(("assignment", "column", "problem"), BAD_VALUES)
async def test_sqlite_a_deployment_with_an_unreadable_value_is_held_with_a_reason(
    sqlite_engine: AsyncEngine, assignment: str, column: str, problem: str
) -> None:
    engine = sqlite_engine
    op = Operator(engine)
    user = await op.add_user()
    good = await op.add_deployment(user, "good", replicas=1)
    bad = await op.add_deployment(user, "bad", replicas=1)
    await _sql(engine, f"UPDATE deployments SET {assignment} WHERE id = '{bad}'")
    store = Store(engine)

    with capture_logs() as logs:
        first = await store.load_active()
        again = await store.load_active()

    assert [d.id for d in first] == [good]
    assert [d.id for d in again] == [good]
    assert store.held == {bad}
    warnings = [e for e in logs if e["event"] == "row_unusable"]
    assert len(warnings) == 1, "reported once, not once per pass"
    (w,) = warnings
    assert (w["table"], w["column"], w["deployment_id"], w["log_level"]) == (
        "deployments",
        column,
        str(bad),
        "warning",
    )
    assert problem in w["problem"]
    history = await _history(engine, bad)
    assert len(history) == 1
    old, new, reason = history[0]
    assert old == new == "pending"
    assert f"deployments.{column}" in reason
    assert "held until the row is fixed" in reason

    # Fixed: the next scan takes it back.
    await _sql(
        engine,
        f"UPDATE deployments SET deleted_at = NULL, target_replicas = 1 WHERE id = '{bad}'",
    )
    await store.find_unusable()
    assert store.held == frozenset()
    assert {d.id for d in await store.load_active()} == {good, bad}


async def _load_after(store: Store, delay: float, ids: list[uuid.UUID]) -> list[Deployment]:
    await asyncio.sleep(delay)
    return await store.load_deployments(ids)


async def test_sqlite_concurrent_loads_that_meet_one_bad_row_all_succeed(
    sqlite_engine: AsyncEngine,
) -> None:
    """Workers load concurrently: a load that failed on a row another load's scan had just
    found must run again without it, not fail (seen in CI as `reconcile_crashed`)."""
    engine = sqlite_engine
    op = Operator(engine)
    user = await op.add_user()
    good = [await op.add_deployment(user, f"good-{i}", replicas=1) for i in range(3)]
    bad = await op.add_deployment(user, "bad", replicas=1)
    await _sql(engine, f"UPDATE deployments SET deleted_at = 'now' WHERE id = '{bad}'")
    store = Store(engine)

    with capture_logs() as logs:
        for _ in range(10):
            # Starts spread over the time a scan takes, so some load begins before another's
            # scan ends and fails after it.
            loads = await asyncio.gather(
                *(_load_after(store, i * 0.002, [*good, bad]) for i in range(12)),
                return_exceptions=True,
            )
            failures = [r for r in loads if isinstance(r, BaseException)]
            assert not failures, failures
            for found in loads:
                assert isinstance(found, list)
                assert {d.id for d in found} == set(good)
            assert store.held == {bad}
            # Fixed and scanned, then broken again: each round starts from a clean set.
            await _sql(engine, f"UPDATE deployments SET deleted_at = NULL WHERE id = '{bad}'")
            await store.find_unusable()
            assert store.held == frozenset()
            await _sql(engine, f"UPDATE deployments SET deleted_at = 'now' WHERE id = '{bad}'")

    assert len([e for e in logs if e["event"] == "row_unusable"]) == 10


async def test_sqlite_an_id_written_past_the_checks_is_left_out_and_reported(
    sqlite_engine: AsyncEngine,
) -> None:
    # Only `PRAGMA ignore_check_constraints` lets such an id in now; a load must survive it.
    engine = sqlite_engine
    op = Operator(engine)
    user = await op.add_user()
    good = await op.add_deployment(user, "good", replicas=1)
    conn = await engine.connect()
    try:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("PRAGMA ignore_check_constraints = ON")
        await conn.execute(
            text(
                "INSERT INTO deployments (id, name, user_id, container_image) "
                f"VALUES ('not-a-uuid', 'broken', '{user}', 'busybox')"
            )
        )
        await conn.commit()
    finally:
        await conn.close()
    store = Store(engine)

    with capture_logs() as logs:
        loaded = await store.load_active()

    assert [d.id for d in loaded] == [good]
    reported = {(e["table"], e["column"]): e for e in logs if e["event"] == "row_unusable"}
    # The state row the insert trigger made for it names the same malformed id.
    assert set(reported) == {
        ("deployments", "id"),
        ("deployment_controller_state", "deployment_id"),
    }
    w = reported[("deployments", "id")]
    assert (w["id"], w["deployment_id"]) == ("not-a-uuid", None)


@pytest.mark.parametrize("labels", ["'[1, 2]'", "'\"zone\"'", "'zone=north'"])
async def test_node_labels_that_are_no_json_object_cost_the_labels_not_the_node(
    engine: AsyncEngine, labels: str
) -> None:
    if labels == "'zone=north'" and engine.dialect.name == "postgresql":
        labels = "'[\"zone=north\"]'"  # PostgreSQL's json type refuses text that is no JSON
    op = Operator(engine)
    node = await op.add_node("edge-1", "unix:///x.sock")
    other = await op.add_node("edge-2", "unix:///y.sock")
    await _sql(
        engine,
        f"UPDATE nodes SET labels = {labels} WHERE id = '{node}'",
        f"""UPDATE nodes SET labels = '{{"zone": "north"}}' WHERE id = '{other}'""",
    )
    store = Store(engine)

    with capture_logs() as logs:
        first = {n.id: n for n in await store.nodes()}
        await store.nodes()

    assert set(first) == {node, other}
    assert first[node].labels == ()
    assert first[other].labels == (("zone", "north"),)
    (w,) = [e for e in logs if e["event"] == "row_unusable"]
    assert (w["table"], w["node"], w["column"]) == ("nodes", "edge-1", "labels")


async def test_a_node_label_that_breaks_the_label_syntax_is_dropped_alone_with_a_warning(
    engine: AsyncEngine,
) -> None:
    op = Operator(engine)
    node = await op.add_node("edge-1", "unix:///x.sock")
    labels = '{"zone": "north", "rack": 7, "bad key": "x", "gpu": "-1", "cam": null}'
    await _sql(engine, f"UPDATE nodes SET labels = '{labels}' WHERE id = '{node}'")
    store = Store(engine)

    with capture_logs() as logs:
        (first,) = await store.nodes()
        await store.nodes()

    # A JSON number reads as its text; the rest is dropped, each label alone.
    assert first.labels == (("rack", "7"), ("zone", "north"))
    warnings = [e for e in logs if e["event"] == "row_unusable"]
    assert sorted(w["label"] for w in warnings) == ["bad key", "cam", "gpu"], "once each"
    assert {(w["table"], w["node"], w["column"]) for w in warnings} == {
        ("nodes", "edge-1", "labels")
    }
    by_label = {w["label"]: w for w in warnings}
    assert "must consist of" in by_label["bad key"]["problem"]
    assert "is not text" in by_label["cam"]["problem"]
    assert "'-1'" in by_label["gpu"]["problem"]

    # Fixed by the operator: back without a word; broken again: said again.
    await _sql(engine, f"""UPDATE nodes SET labels = '{{"gpu": "1"}}' WHERE id = '{node}'""")
    with capture_logs() as logs:
        assert (await store.nodes())[0].labels == (("gpu", "1"),)
    assert [e for e in logs if e["event"] == "row_unusable"] == []
    await _sql(engine, f"""UPDATE nodes SET labels = '{{"gpu": "-1"}}' WHERE id = '{node}'""")
    with capture_logs() as logs:
        assert (await store.nodes())[0].labels == ()
    assert [e["label"] for e in logs if e["event"] == "row_unusable"] == ["gpu"]


@pytest.mark.docker
async def test_sqlite_a_replica_whose_node_is_not_found_is_failed_with_the_reason_and_replaced(
    template_databases: database.TemplateDatabases, tmp_path: Path, cluster: Cluster
) -> None:
    # Foreign keys off, as in the sqlite3 shell: a node id typed wrong goes in unchecked.
    url = await template_databases.migrated_sqlite(tmp_path)
    engine = engine_mod.create_engine(url)
    cluster.ensure_running()
    urls = list(cluster.urls)[:1]
    op = Operator(engine)
    try:
        await op.add_node("node-0", urls[0])
        user = await op.add_user()
        async with running_controller(settings_for_tests(url)):
            d = await op.add_deployment(user, "web", replicas=2)
            await eventually(lambda: converged(op, urls, d, 2))
            victim = (await op.replicas(d, "running"))[0]["id"]
            nowhere = uuid.uuid4()
            conn = await engine.connect()
            try:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.execute("PRAGMA foreign_keys = OFF")
                await conn.execute(
                    text(
                        f"UPDATE deployment_replicas SET node_id = '{nowhere}' "
                        f"WHERE id = '{victim}'"
                    )
                )
                await conn.commit()
            finally:
                await conn.close()

            async def failed() -> bool:
                rows = {r["id"]: r["status"] for r in await op.replicas(d)}
                assert rows[victim] == "failed", rows
                return True

            await eventually(failed)
            await eventually(lambda: converged(op, urls, d, 2))
        reasons = [h["reason"] for h in await op.history(d)]
        assert any(f"node {nowhere} not found in nodes" in r for r in reasons), reasons
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)
        await engine.dispose()
