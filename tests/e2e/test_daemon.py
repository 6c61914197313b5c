"""`fog-controller run` as a separate process, driven as an operator drives it.

Why a process and not the in-process Controller of tests/integration: what an operator relies
on lives at the edges that an in-process test skips. Settings come from environment variables;
the schema is created by the daemon itself; rows are typed by hand in SQL (UUIDs spelt the way
each backend stores them); the daemon is stopped by SIGTERM and must leave the containers
running, or is killed by SIGKILL at an arbitrary instant and must finish the job after a
restart without twins or orphans; and its only output, the JSON log, must never carry a
password. Each test checks the result where an operator would: in the database and on the
Docker engines, and in the log lines the process wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from schema import migrate
from schema.engine import create_engine, mask_url
from tests.e2e.daemon import FAST_ENV, Daemon, Daemons, Sql, free_port, run_cli
from tests.harness import database
from tests.harness.engines import API_VERSION, TEST_IMAGE
from tests.harness.fleet import Seen, managed_containers

pytestmark = pytest.mark.docker

MIB = 1024 * 1024
# Events that show what a restarted daemon found and finished.
INTERESTING = (
    "replicas_created",
    "replica_started",
    "replica_adopted",
    "container_adopted",
    "replica_stopping",
    "replica_stopped",
    "replica_failed",
    "container_removed",
)


# --- observation helpers -------------------------------------------------------------------


async def containers(urls: list[str], deployment: uuid.UUID | None = None) -> list[Seen]:
    return await asyncio.to_thread(managed_containers, urls, deployment)


def _inspect(url: str, container: str) -> dict[str, Any]:
    client = docker.APIClient(base_url=url, version=API_VERSION, timeout=30)
    try:
        detail: dict[str, Any] = client.inspect_container(container)
        return detail
    finally:
        client.close()


def _engine_info(url: str) -> dict[str, Any]:
    client = docker.APIClient(base_url=url, version=API_VERSION, timeout=30)
    try:
        info: dict[str, Any] = client.info()
        return info
    finally:
        client.close()


def status_is(sql: Sql, deployment: uuid.UUID, expected: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = await sql.status(deployment)
        assert got == expected, f"status {got!r}, want {expected!r}"
        return True

    return check


def converged(
    sql: Sql, nodes: dict[uuid.UUID, str], deployment: uuid.UUID, target: int
) -> Callable[[], Awaitable[bool]]:
    """Exactly `target` live rows, all running, each with its one running container, no row
    left stopping, and no other managed container on any engine."""

    async def check() -> bool:
        live = await sql.live_replicas(deployment)
        seen = await containers(list(nodes.values()))
        assert len(live) == target, f"{len(live)} live rows, want {target}"
        assert all(r["status"] == "running" for r in live), Counter(r["status"] for r in live)
        assert len(seen) == target, f"{len(seen)} containers, want {target}"
        assert all(s.state == "running" for s in seen), Counter(s.state for s in seen)
        assert sorted(s.replica_id for s in seen) == sorted(str(r["id"]) for r in live)
        stopping = await sql.replicas(deployment, "stopping")
        assert not stopping, f"{len(stopping)} rows still stopping"
        return True

    return check


async def assert_exactly(
    sql: Sql, nodes: dict[uuid.UUID, str], deployment: uuid.UUID, target: int
) -> None:
    """The crash-safety invariant, spelt out: `target` live rows, one running container per
    row on the row's own node with the row's container id, no twins and no orphans."""
    live = await sql.live_replicas(deployment)
    seen = await containers(list(nodes.values()))
    assert len(live) == target, f"{len(live)} rows in pending/starting/running, want {target}"
    assert {r["status"] for r in live} <= {"running"}, [r["status"] for r in live]
    twins = {rid: n for rid, n in Counter(s.replica_id for s in seen).items() if n > 1}
    assert not twins, f"several containers for one replica: {twins}"
    by_id = {str(r["id"]): r for r in live}
    orphans = [s for s in seen if s.replica_id not in by_id]
    assert not orphans, f"containers without a live replica row: {orphans}"
    for s in seen:
        row = by_id[s.replica_id]
        assert s.deployment_id == str(deployment), s
        assert s.state == "running", s
        assert nodes[row["node_id"]] == s.engine_url, f"{s} is not on its row's node"
        assert row["container_id"] == s.id, f"row says {row['container_id']}, engine {s.id}"
    assert len(seen) == target
    assert not await sql.replicas(deployment, "stopping")


def transitions(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(h["old_status"], h["new_status"]) for h in history]


async def start_fleet(sql: Sql, engines: list[str]) -> tuple[uuid.UUID, dict[uuid.UUID, str]]:
    """The operator's first rows: a user and the three engines as nodes."""
    return await sql.add_user(), await sql.add_nodes(engines)


# --- 1. plain SQL in, containers and history out ---------------------------------------------


async def test_operator_sql_rows_become_running_containers(
    sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    user, nodes = await start_fleet(sql, engines)
    daemon = daemons.start(FOG_DATABASE_URL=sql.url)
    await daemon.wait_event("controller_started", nodes=3)
    d = await sql.add_deployment(user, "web", TEST_IMAGE, 3)

    await daemon.until(converged(sql, nodes, d, 3), what="3 running replicas")
    await daemon.until(status_is(sql, d, "running"))
    await assert_exactly(sql, nodes, d, 3)
    seen = await containers(engines, d)
    assert sorted(s.engine_url for s in seen) == sorted(engines), "not spread one per node"

    history = await sql.history(d)
    assert transitions(history) == [("pending", "scheduled"), ("scheduled", "running")]
    assert all(h["changed_by"] is None for h in history)
    assert all(h["reason"] for h in history)
    assert history[-1]["reason"] == "3/3 replicas running"

    log = daemon.assert_clean_log()
    changed = log.named("deployment_status_changed", deployment_id=str(d))
    assert [(e["old_status"], e["new_status"]) for e in changed] == transitions(history)
    assert len(log.named("replica_started", deployment_id=str(d))) == 3


# --- 2. SIGKILL at arbitrary moments ----------------------------------------------------------


async def test_sigkill_mid_scaling_converges_after_restart(
    sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    seed = int(os.environ.get("FOG_E2E_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FOG_E2E_SEED={seed}")
    rng = random.Random(seed)
    env = {"FOG_DATABASE_URL": sql.url}
    user, nodes = await start_fleet(sql, engines)
    d = await sql.add_deployment(user, "crashy", TEST_IMAGE, 0)
    key = str(d)

    daemon = daemons.start(**env)
    await daemon.until(status_is(sql, d, "stopped"), what="the deployment seen at 0")
    await sql.scale(d, 12)

    # Kill 1: as soon as the intent is committed (replica rows), or as the first create returns
    # (on these engines the first create per node is refused for its storage limit and
    # retried without; elsewhere the first start is the first sign).
    first = rng.choice([("replicas_created",), ("storage_limit_unenforced", "replica_started")])
    await daemon.wait_event(first, deployment_id=key)
    daemon.kill()

    # Kill 2: after this process has started k containers (and is starting more).
    k = rng.randint(1, 4)
    daemon = daemons.start(**env)
    await daemon.wait_event("replica_started", count=k, deployment_id=key)
    daemon.kill()

    # Kill 3: once N containers exist on the engines, whoever made them.
    have = len(await containers(engines, d))
    daemon = daemons.start(**env)
    if have < 11:
        n = rng.randint(have + 1, 11)

        async def at_least_n() -> bool:
            return len(await containers(engines, d)) >= n

        await daemon.until(at_least_n, what=f"{n} containers (seed {seed})")
        daemon.kill()
        daemon = daemons.start(**env)

    await daemon.until(converged(sql, nodes, d, 12), within=60, what=f"12 up (seed {seed})")
    await assert_exactly(sql, nodes, d, 12)
    await daemon.until(status_is(sql, d, "running"))

    # Scale down 12 -> 3, killed while the stops are in flight.
    await sql.scale(d, 3)
    await daemon.wait_event(rng.choice(["replica_stopping", "replica_stopped"]), deployment_id=key)
    daemon.kill()
    daemon = daemons.start(**env)
    await daemon.until(converged(sql, nodes, d, 3), within=60, what=f"3 left (seed {seed})")
    await assert_exactly(sql, nodes, d, 3)
    await daemon.until(status_is(sql, d, "running"))

    await sql.scale(d, 0)
    await daemon.until(converged(sql, nodes, d, 0), what=f"0 left (seed {seed})")
    await daemon.until(status_is(sql, d, "stopped"))
    assert await containers(engines) == []
    assert not await sql.replicas(d, "pending", "starting", "running", "stopping")

    for each in daemons.started:
        log = each.assert_clean_log()
        counts = {e: len(log.named(e)) for e in INTERESTING}
        print(f"{each.name}: {'killed' if each.killed else 'alive'} {counts}")


# --- 3. SIGTERM -------------------------------------------------------------------------------


async def test_sigterm_exits_zero_and_restart_adopts(
    sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    grace = 5.0
    env = {"FOG_DATABASE_URL": sql.url, "FOG_SHUTDOWN_GRACE_SECONDS": f"{grace:g}"}
    user, nodes = await start_fleet(sql, engines)

    async def sigterm(daemon: Daemon) -> None:
        # Only once it runs: a SIGTERM during start-up is another test's subject.
        await daemon.wait_event("controller_started")
        code, waited = await daemon.terminate(within=grace + 10)
        assert code == 0, f"exit code {code}\n{daemon.tail()}"
        assert waited < grace, f"took {waited:.2f}s to exit, grace is {grace}s"
        log = daemon.assert_clean_log()
        assert log.named("controller_stopped", abandoned=0), daemon.tail()

    # SIGTERM while a rollout is in flight: the reconcile under way finishes, then exit 0.
    daemon = daemons.start(**env)
    d = await sql.add_deployment(user, "steady", TEST_IMAGE, 6)
    await daemon.wait_event("replica_started", deployment_id=str(d))
    await sigterm(daemon)
    assert all(s.state == "running" for s in await containers(engines, d))

    daemon = daemons.start(**env)
    await daemon.until(converged(sql, nodes, d, 6), what="6 running replicas")
    await daemon.until(status_is(sql, d, "running"))
    before = {(s.engine_url, s.id) for s in await containers(engines, d)}
    started_at = {c: _inspect(url, c)["State"]["StartedAt"] for url, c in before}
    rows_before = await sql.replicas(d)

    # SIGTERM at rest: the engines still run exactly the same containers, never restarted.
    await sigterm(daemon)
    after = await containers(engines, d)
    assert {(s.engine_url, s.id) for s in after} == before
    assert all(s.state == "running" for s in after), after
    for url, c in before:
        assert _inspect(url, c)["State"]["StartedAt"] == started_at[c]

    # A new process adopts them: several full passes, nothing created, stopped or removed.
    daemon = daemons.start(**env)
    await daemon.wait_event("resync_done", count=3, deployments=1)
    await assert_exactly(sql, nodes, d, 6)
    assert {(s.engine_url, s.id) for s in await containers(engines, d)} == before
    assert await sql.replicas(d) == rows_before
    assert await sql.status(d) == "running"
    log = daemon.assert_clean_log()
    for event in ("replicas_created", "replica_started", "replica_stopping", "container_removed"):
        assert not log.named(event), f"{event} after restart: {log.named(event)}"
    await sigterm(daemon)


# --- 4. the embedded default ------------------------------------------------------------------


def _sqlite_rows(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        rows: list[tuple[Any, ...]] = conn.execute(query, params).fetchall()
        return rows


def _sqlite_write(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        for query, params in statements:
            conn.execute(query, params)


async def test_embedded_default_registers_local_node_and_runs(
    engines: list[str], daemons: Daemons
) -> None:
    url = engines[0]
    daemon = daemons.start(FOG_DATABASE_URL=None, FOG_REGISTER_LOCAL_NODE="true", DOCKER_HOST=url)
    db = daemons.state_home / "fog-controller" / "fog.db"
    (ready,) = await daemon.wait_event("schema_ready")
    assert ready["database"] == f"sqlite+aiosqlite:///{db}"
    (registered,) = await daemon.wait_event("node_registered", node="local")
    assert db.is_file()

    # The daemon made the schema itself, at the packaged head.
    (version,) = await asyncio.to_thread(
        _sqlite_rows, db, "SELECT version_num FROM alembic_version"
    )
    assert [version[0]] == migrate.heads()

    info = await asyncio.to_thread(_engine_info, url)
    cpu, memory = float(info["NCPU"]), int(info["MemTotal"]) // MIB
    assert (registered["cpu_cores"], registered["memory_mb"]) == (cpu, memory)
    nodes = await asyncio.to_thread(
        _sqlite_rows, db, "SELECT id, name, docker_url, cpu_cores, memory_mb FROM nodes"
    )
    assert [n[1:] for n in nodes] == [("local", url, cpu, memory)]
    assert str(uuid.UUID(nodes[0][0])) == nodes[0][0], "SQLite UUIDs are canonical text"

    async def node_ready() -> bool:
        rows = await asyncio.to_thread(_sqlite_rows, db, "SELECT status FROM nodes")
        return rows == [("ready",)]

    await daemon.until(node_ready, what="node local ready")

    user, d = uuid.uuid4(), uuid.uuid4()
    await asyncio.to_thread(
        _sqlite_write,
        db,
        ("INSERT INTO users (id, username) VALUES (?, ?)", (str(user), "alice")),
        (
            "INSERT INTO deployments (id, name, user_id, container_image, target_replicas) "
            "VALUES (?, ?, ?, ?, ?)",
            (str(d), "web", str(user), TEST_IMAGE, 2),
        ),
        (
            "INSERT INTO deployment_resources "
            "(id, deployment_id, cpu_cores, memory_mb, storage_gb) VALUES (?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), str(d), 0.5, 512, 1),
        ),
    )

    async def running() -> bool:
        seen = await containers(engines, d)
        assert len(seen) == 2, seen
        assert all(s.state == "running" for s in seen), seen
        assert {s.engine_url for s in seen} == {url}, seen
        rows = await asyncio.to_thread(
            _sqlite_rows, db, "SELECT status FROM deployments WHERE id = ?", (str(d),)
        )
        assert rows == [("running",)], rows
        return True

    await daemon.until(running, what="2 replicas on node local")
    live = await asyncio.to_thread(
        _sqlite_rows,
        db,
        "SELECT count(*) FROM deployment_replicas WHERE deployment_id = ? AND status = 'running'",
        (str(d),),
    )
    assert live == [(2,)]
    daemon.assert_clean_log()


# --- 5. no credentials in the output ----------------------------------------------------------

SECRET_USER = "fog_secret_user"
SECRET_PASSWORD = "s3cr3t-Pa55"


async def _admin(admin_url: str, *statements: str) -> None:
    engine = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
async def secret_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """An empty database owned by a role with a password; the URL carries the password."""
    name = database.unique_name("secret")
    await _admin(
        pg_admin_url,
        "DO $$ BEGIN "
        f"CREATE ROLE {SECRET_USER} LOGIN PASSWORD '{SECRET_PASSWORD}'; "
        "EXCEPTION WHEN duplicate_object THEN "
        f"ALTER ROLE {SECRET_USER} LOGIN PASSWORD '{SECRET_PASSWORD}'; "
        "END $$",
        f'CREATE DATABASE "{name}" OWNER {SECRET_USER}',
    )
    url = (
        make_url(pg_admin_url)
        .set(username=SECRET_USER, password=SECRET_PASSWORD, database=name)
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        await database.drop_pg_database(url, admin_url=pg_admin_url)
        await _admin(pg_admin_url, f"DROP ROLE IF EXISTS {SECRET_USER}")


async def test_password_never_reaches_the_output(
    secret_pg_url: str, engines: list[str], daemons: Daemons
) -> None:
    assert SECRET_PASSWORD in secret_pg_url
    daemon = daemons.start(FOG_DATABASE_URL=secret_pg_url)
    (ready,) = await daemon.wait_event("schema_ready")  # it migrated the empty database
    assert ready["database"] == mask_url(secret_pg_url)
    assert f"{SECRET_USER}:***@" in ready["database"]

    sql = Sql(secret_pg_url)
    try:
        user, nodes = await start_fleet(sql, engines)
        d = await sql.add_deployment(user, "quiet", TEST_IMAGE, 2)
        await daemon.until(converged(sql, nodes, d, 2), what="2 running replicas")
        await daemon.until(status_is(sql, d, "running"))
    finally:
        await sql.close()
    code, _ = await daemon.terminate(within=15)
    assert code == 0, daemon.tail()
    daemon.assert_clean_log()
    assert SECRET_PASSWORD not in daemon.output()

    # One-shot commands, and failure paths (where URLs end up in error messages), too.
    unreachable = make_url(secret_pg_url).set(port=free_port())
    for url, ok in ((secret_pg_url, True), (unreachable.render_as_string(False), False)):
        env = daemons.env(FOG_DATABASE_URL=url)
        code, output = await asyncio.to_thread(run_cli, env, "migrate")
        assert (code == 0) is ok, output
        assert SECRET_PASSWORD not in output, output


# --- 6. bad operator input --------------------------------------------------------------------


async def test_bad_images_fail_with_the_engines_reason_while_good_one_runs(
    pg_sql: Sql, engines: list[str], daemons: Daemons
) -> None:
    sql = pg_sql
    user, _ = await start_fleet(sql, engines)
    daemon = daemons.start(FOG_DATABASE_URL=sql.url, FOG_PROGRESS_DEADLINE_SECONDS="3")
    await daemon.wait_event("controller_started", nodes=3)
    invalid = await sql.add_deployment(user, "invalid-ref", "UPPER/Case::bad", 2)
    missing = await sql.add_deployment(user, "missing", "fog-test/does-not-exist:1", 2)
    good = await sql.add_deployment(user, "good", TEST_IMAGE, 3)

    def failed_with(d: uuid.UUID, *needles: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            assert await sql.status(d) == "failed", await sql.history(d)
            reasons = [str(h["reason"]) for h in await sql.history(d)]
            assert any(all(n in r for n in needles) for r in reasons), reasons
            return True

        return check

    await daemon.until(status_is(sql, good, "running"), what="good deployment running")
    await daemon.until(
        failed_with(invalid, "invalid reference format"), within=40, what="invalid image"
    )
    await daemon.until(
        failed_with(missing, "image pull failed", "fog-test/does-not-exist:1"),
        within=40,
        what="missing image",
    )
    for bad in (invalid, missing):
        assert all(h["changed_by"] is None for h in await sql.history(bad))
        assert await containers(engines, bad) == []
        assert not await sql.replicas(bad, "starting", "running")

    # The good one is untouched by its neighbours' failures, and the daemon is still there.
    seen = await containers(engines, good)
    assert len(seen) == 3, seen
    assert all(s.state == "running" for s in seen), seen
    daemon.assert_alive()
    daemon.assert_clean_log()


# --- 7. the database is down at boot --------------------------------------------------------


class Forwarder:
    """A TCP relay to PostgreSQL that can be switched on later: "the database came up"."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.append(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self.server is not None:
            await self.server.wait_closed()


async def test_database_down_at_boot_is_waited_for(
    pg_url: str, engines: list[str], daemons: Daemons
) -> None:
    """loop.py promises "the database may be down at boot: wait for it rather than exiting";
    with the default FOG_AUTO_MIGRATE=true the daemon must keep that promise too."""
    real = make_url(pg_url)
    port = free_port()
    relay = Forwarder(real.host or "127.0.0.1", real.port or 5432)
    # With a password (trust auth ignores it), so the "database unavailable" path is checked
    # for leaks as well.
    url = real.set(host="127.0.0.1", port=port, password=SECRET_PASSWORD)
    try:
        daemon = daemons.start(FOG_DATABASE_URL=url.render_as_string(hide_password=False))
        await daemon.wait_event("database_unavailable", within=20)
        daemon.assert_alive()
        await relay.start(port)  # the database comes up
        await daemon.wait_event("controller_started", within=30)
        code, _ = await daemon.terminate(within=15)
        assert code == 0, daemon.tail()
        daemon.assert_clean_log()
        assert SECRET_PASSWORD not in daemon.output()
    finally:
        for each in daemons.started:
            each.close()
        await relay.close()


# --- 8. SIGTERM during start-up ---------------------------------------------------------------


async def test_sigterm_during_startup_migration_exits_zero(
    pg_url: str, engines: list[str], daemons: Daemons
) -> None:
    """cli.py promises to turn SIGTERM into a graceful stop; that must hold from the moment
    the daemon touches the database, including a start-up migration that waits on a lock
    (another instance migrating, an operator's open transaction)."""
    name = make_url(pg_url).database
    holder = create_engine(pg_url, poolclass=NullPool)
    watcher = Sql(pg_url)
    try:
        async with holder.begin() as conn:
            await conn.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
            daemon = daemons.start(FOG_DATABASE_URL=pg_url)

            async def migration_blocked() -> bool:
                waiting = await watcher.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                    "AND wait_event_type = 'Lock'",
                    db=name,
                )
                return bool(waiting)

            await daemon.until(migration_blocked, what="the start-up migration waits on the lock")
            daemon.proc.send_signal(signal.SIGTERM)
        # The transaction is over, the lock gone: the migration can finish, then the daemon
        # must stop instead of starting.
        code, waited = await daemon.wait_exit(within=15)
        assert code == 0, f"exit code {code} after SIGTERM during start-up\n{daemon.tail()}"
        assert waited < float(FAST_ENV["FOG_SHUTDOWN_GRACE_SECONDS"])
        assert not daemon.log().named("controller_started"), "it went on starting after SIGTERM"
    finally:
        await watcher.close()
        await holder.dispose()
