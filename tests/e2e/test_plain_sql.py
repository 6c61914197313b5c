"""The "Desired state in plain SQL" statements of docs/operations.md, run as an operator runs
them: through the real `psql` and `sqlite3` programs, against a running daemon.

The statements are read from the document itself (fenced blocks whose first line is
`-- plain-sql STEP BACKENDS`), so the document cannot drift from what works. Only the example
values change: the node URLs become the harness's engines and the nginx images the test image
(no registry here). Ids are typed as canonical text by the operator in one step and left to
the database in another.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import docker
import pytest
from sqlalchemy.engine import make_url

from controller.placement_rules import PlacementRules
from controller.runspec import PortSpec, RunSpec, VolumeSpec
from controller.store import Store
from schema.engine import is_sqlite, sqlite_path
from tests.e2e.daemon import REPO_ROOT, Daemon, Daemons, Sql
from tests.harness import database
from tests.harness.engines import API_VERSION, TEST_IMAGE, build_test_image
from tests.harness.fleet import managed_containers

DOC = REPO_ROOT / "docs" / "operations.md"
BLOCK = re.compile(r"```sql\n-- plain-sql (\S+) (both|postgresql|sqlite)\n(.*?)```", re.S)
WEB = uuid.UUID("8f0c2b1e-4a5d-4e6f-9a1b-2c3d4e5f6a7b")
EDGE_1 = uuid.UUID("0c6f1c9e-2b7d-4e3a-8f41-5d6e7f8a9b0c")
IMAGE_V2 = "fog-test/busybox:v2"
CONVERGE_STEPS = ("create", "add-node", "create-generated", "scale", "update-image", "soft-delete")
# The container spec's statements (issue 14): checked by what the store loads from them, not
# run against the daemon here (the controller's side of the spec is built separately).
SPEC_STEPS = ("set-env", "publish-port", "named-volume", "pull-secret")
# Placement (issue 15): checked the same way, by what the store loads.
PLACEMENT_STEPS = ("placement",)
DOCUMENTED_RUN = RunSpec(
    command=("httpd", "-f", "-p", "8080"),
    env=(("LOG_LEVEL", "debug"), ("SITE", "north")),
    network="bridge",
    ports=(PortSpec(8080, 18080, "tcp"),),
    volumes=(VolumeSpec("/data", name="data"),),
    image_pull_secret="company-registry",
)


def doc_statements(backend: str) -> dict[str, str]:
    """STEP -> the statements the document gives for `backend` ('postgresql' or 'sqlite')."""
    steps: dict[str, str] = {}
    for step, backends, body in BLOCK.findall(DOC.read_text()):
        if backends in ("both", backend):
            assert step not in steps, f"two '{step}' blocks for {backend}"
            steps[step] = body
    return steps


def run_shell(url: str, sql: str) -> None:
    """`sql` through psql or sqlite3, stopping at the first error, as a subprocess."""
    if is_sqlite(url):
        path = sqlite_path(url)
        assert path is not None
        # .timeout: wait for the controller's write lock instead of failing 'database is locked'.
        cmd = [shutil.which("sqlite3") or "sqlite3", "-bail", str(path)]
        script = ".timeout 30000\n" + sql
    else:
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        cmd = [shutil.which("psql") or "psql", libpq, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        script = sql
    result = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{cmd[0]} failed ({result.returncode}): {result.stderr}"
    assert "error" not in result.stderr.lower(), result.stderr


def _images(urls: list[str], deployment: uuid.UUID) -> Counter[str]:
    seen: Counter[str] = Counter()
    for box in managed_containers(urls, deployment):
        client = docker.APIClient(base_url=box.engine_url, version=API_VERSION, timeout=30)
        try:
            detail = client.inspect_container(box.id)
        except docker.errors.NotFound:
            continue  # removed since the list (a rollout or scale-down at work)
        finally:
            client.close()
        if detail["State"]["Running"]:
            seen[detail["Config"]["Image"]] += 1
    return seen


def runs(
    sql: Sql, urls: list[str], deployment: uuid.UUID, target: int, image: str
) -> Callable[[], Awaitable[bool]]:
    """`target` live rows, all running, and exactly `target` running containers of `image`."""

    async def check() -> bool:
        live = await sql.live_replicas(deployment)
        assert len(live) == target, live
        assert {r["status"] for r in live} == {"running"}, live
        images = await asyncio.to_thread(_images, urls, deployment)
        assert images == Counter({image: target}), images
        assert await sql.status(deployment) == "running"
        return True

    return check


async def test_the_documented_plain_sql_converges_on_both_backends(
    sql: Sql, engines: list[str], daemons: Daemons, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = "sqlite" if sql.sqlite else "postgresql"
    if sql.sqlite and shutil.which("sqlite3") is None:
        raise AssertionError("the sqlite3 shell is missing: `make services` installs it")
    await asyncio.to_thread(
        lambda: [build_test_image(docker.DockerClient(base_url=u), IMAGE_V2) for u in engines]
    )
    steps = doc_statements(backend)
    assert set(steps) == set(CONVERGE_STEPS) | set(SPEC_STEPS) | set(PLACEMENT_STEPS)
    swaps = {
        "unix:///run/fog/edge-1.sock": engines[0],
        "unix:///run/fog/edge-2.sock": engines[1],
        "nginx:1.27": TEST_IMAGE,
        "nginx:1.28": IMAGE_V2,
    }

    def step(name: str) -> None:
        body = steps[name]
        for example, real in swaps.items():
            body = body.replace(example, real)
        run_shell(sql.url, body)

    daemon = daemons.start(FOG_DATABASE_URL=sql.url)
    await daemon.wait_event("controller_started")

    # Ids typed by the operator, in canonical text; the node is new in the same transaction,
    # so the time includes its first probe.
    started = time.monotonic()
    await asyncio.to_thread(step, "create")
    await daemon.until(runs(sql, engines[:1], WEB, 3, TEST_IMAGE), what="web: 3 running")
    typed = time.monotonic() - started
    assert await sql.scalar(f"SELECT status FROM nodes WHERE id = '{EDGE_1}'") == "ready"

    # Ids left to the database.
    await asyncio.to_thread(step, "add-node")

    async def edge_2_ready() -> bool:
        rows = await sql.rows("SELECT id, status FROM nodes WHERE name = 'edge-2'")
        assert [r["status"] for r in rows] == ["ready"], rows
        assert uuid.UUID(str(rows[0]["id"])).version == 4
        return True

    await daemon.until(edge_2_ready, what="edge-2 ready")
    # Nodes ready, ids left to the database: INSERT -> 3 replicas running.
    started = time.monotonic()
    await asyncio.to_thread(step, "create-generated")
    api = uuid.UUID(str(await sql.scalar("SELECT id FROM deployments WHERE name = 'api'")))
    await daemon.until(runs(sql, engines[:2], api, 3, TEST_IMAGE), what="api: 3 running")
    generated = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nplain-sql INSERT -> 3 replicas running ({backend}): nodes ready, ids by the "
            f"database {generated:.2f} s; node in the same transaction, ids typed {typed:.2f} s"
        )

    await asyncio.to_thread(step, "scale")
    await daemon.until(runs(sql, engines[:2], WEB, 2, TEST_IMAGE), what="web scaled to 2")

    await asyncio.to_thread(step, "update-image")
    await daemon.until(runs(sql, engines[:2], WEB, 2, IMAGE_V2), what="web rolled to v2")

    await asyncio.to_thread(step, "soft-delete")

    async def deleted() -> bool:
        assert await sql.status(WEB) == "deleted"
        assert not await sql.live_replicas(WEB)
        assert not await asyncio.to_thread(managed_containers, engines, WEB)
        return True

    await daemon.until(deleted, what="web deleted")
    history = await sql.history(WEB)
    moves = [(h["old_status"], h["new_status"]) for h in history]
    # A new node is `unknown` until its first probe: a deployment typed in the same
    # transaction may first be told so (pending -> pending, with that reason).
    while moves and moves[0] == ("pending", "pending"):
        assert "nodes fit" in history[0]["reason"], history[0]
        moves, history = moves[1:], history[1:]
    assert moves[:2] == [("pending", "scheduled"), ("scheduled", "running")], moves
    assert moves[-1][1] == "deleted", moves
    assert history[-1]["reason"] == "deleted by operator"
    assert all(h["reason"] for h in history)
    # The other deployment is untouched by web's changes.
    await runs(sql, engines[:2], api, 3, TEST_IMAGE)()
    daemon.assert_clean_log()


def test_every_documented_step_exists_for_both_backends() -> None:
    for backend in ("postgresql", "sqlite"):
        steps = doc_statements(backend)
        expected = len(CONVERGE_STEPS) + len(SPEC_STEPS) + len(PLACEMENT_STEPS)
        assert len(steps) == expected, (backend, sorted(steps))
        assert all(body.strip() for body in steps.values())
    assert "now()" in doc_statements("postgresql")["soft-delete"]
    assert "strftime" in doc_statements("sqlite")["soft-delete"]


async def test_the_documented_spec_statements_load_into_the_runspec_they_describe(
    sql: Sql,
) -> None:
    """Only what the store loads: the statements run through psql and sqlite3, and the rows
    they leave become the RunSpec the document describes, one generation per row changed."""
    backend = "sqlite" if sql.sqlite else "postgresql"
    steps = doc_statements(backend)
    await asyncio.to_thread(run_shell, sql.url, steps["create"])

    async def generation() -> int:
        found = await sql.scalar(
            f"SELECT generation FROM deployment_controller_state WHERE deployment_id = '{WEB}'"
        )
        return int(found)

    created = await generation()
    for name in SPEC_STEPS:
        await asyncio.to_thread(run_shell, sql.url, steps[name])
    # Two env rows, the spec row and a port, a volume, the spec row changed again.
    assert await generation() == created + 6
    # Run again with the same values: upserts that change nothing are no new generation.
    await asyncio.to_thread(run_shell, sql.url, steps["set-env"])
    assert await generation() == created + 6

    store = Store(sql.engine)
    (loaded,) = await store.load_deployments([WEB])
    assert loaded.run == DOCUMENTED_RUN


async def test_the_documented_placement_loads_into_the_rules_it_describes(sql: Sql) -> None:
    backend = "sqlite" if sql.sqlite else "postgresql"
    steps = doc_statements(backend)
    await asyncio.to_thread(run_shell, sql.url, steps["create"])
    generations = []
    for _ in range(2):
        await asyncio.to_thread(run_shell, sql.url, steps["placement"])
        generations.append(
            await sql.scalar(
                f"SELECT generation FROM deployment_controller_state WHERE deployment_id = '{WEB}'"
            )
        )
    assert generations[0] == generations[1], "the upserts run again change nothing"
    store = Store(sql.engine)
    (loaded,) = await store.load_deployments([WEB])
    assert loaded.placement == PlacementRules.of(
        {"fog.io/arch": "amd64"}, spread_by="zone", max_per_node=1
    )


async def test_sqlite_an_unreadable_value_typed_in_the_shell_holds_one_deployment_with_a_reason(
    template_databases: database.TemplateDatabases,
    tmp_path: Path,
    engines: list[str],
    daemons: Daemons,
) -> None:
    """Before: 'now' in a DATETIME column failed every load, so the controller acted on no
    deployment at all, and said so only as a traceback per pass. Now that one deployment is
    held (containers kept), the log says `row_unusable` once, and its history says why."""
    url = await template_databases.migrated_sqlite(tmp_path)
    sql = Sql(url)
    try:
        steps = doc_statements("sqlite")

        def run(body: str) -> None:
            run_shell(
                url,
                body.replace("unix:///run/fog/edge-1.sock", engines[0]).replace(
                    "nginx:1.27", TEST_IMAGE
                ),
            )

        daemon = daemons.start(FOG_DATABASE_URL=url)
        await daemon.wait_event("controller_started")
        await asyncio.to_thread(run, steps["create"])
        await daemon.until(runs(sql, engines[:1], WEB, 3, TEST_IMAGE), what="web: 3 running")

        # The operator's mistake: SQLite stores 'now' as text in the DATETIME column.
        await asyncio.to_thread(
            run, f"UPDATE deployments SET deleted_at = 'now' WHERE id = '{WEB}';"
        )

        async def reasoned() -> bool:
            reasons = [h["reason"] for h in await sql.history(WEB)]
            assert any("unusable row: deployments.deleted_at = 'now'" in r for r in reasons)
            return True

        await daemon.until(reasoned, what="the held deployment's reason")
        passes = len(daemon.log().named("resync_done"))
        await daemon.until(
            lambda: _at_least(daemon, "resync_done", passes + 4), what="four more passes"
        )
        log = daemon.log()
        (warning,) = log.named("row_unusable")
        assert (warning["table"], warning["column"], warning["id"]) == (
            "deployments",
            "deleted_at",
            str(WEB),
        )
        assert not log.named(("resync_crashed", "resync_failed", "poll_failed"))
        # Held, not deleted: its containers run on.
        await runs(sql, engines[:1], WEB, 3, TEST_IMAGE)()

        # Fixed with the documented soft delete: taken back, and deleted.
        await asyncio.to_thread(run, steps["soft-delete"])

        async def deleted() -> bool:
            assert await sql.status(WEB) == "deleted"
            assert not await asyncio.to_thread(managed_containers, engines, WEB)
            return True

        await daemon.until(deleted, within=60, what="web deleted once the row is fixed")
        daemon.assert_clean_log()
    finally:
        await sql.close()


async def _at_least(daemon: Daemon, event: str, count: int) -> bool:
    seen = len(daemon.log().named(event))
    assert seen >= count, f"{seen} {event} events, want {count}"
    return True
