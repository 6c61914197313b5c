"""The daemon as an operator runs it: a child process configured by environment variables,
watched through its JSON log lines, stopped by signals; and the database as an operator edits
it: plain SQL text, never the ORM or the controller's own store.

In-process tests (tests/integration) cannot show what only a real process shows: that the CLI
reads its settings, migrates, installs its signal handlers and exits with the right code, that
a SIGKILL at any instant leaves a state the next process can finish, and that what reaches the
log is safe to ship. Everything here talks to the daemon the way a user does, so these helpers
import nothing from `controller` at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schema.engine import create_engine, is_sqlite, writer

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Fast timings: a resync pass and a heartbeat every half second, stops that do not linger.
# Debug logs: tests count resync passes by `resync_done`, which an idle pass logs at debug.
FAST_ENV: dict[str, str] = {
    "FOG_LOG_LEVEL": "debug",
    "FOG_RESYNC_SECONDS": "0.5",
    "FOG_NODE_HEARTBEAT_SECONDS": "0.5",
    "FOG_STOP_TIMEOUT_SECONDS": "2",
    "FOG_CRASH_BACKOFF_INITIAL_SECONDS": "0.5",
    "FOG_CRASH_BACKOFF_MAX_SECONDS": "4",
    "FOG_SHUTDOWN_GRACE_SECONDS": "5",
    "FOG_REGISTER_LOCAL_NODE": "false",
    "FOG_LOG_FORMAT": "json",
    "FOG_DOCKER_TIMEOUT_SECONDS": "20",
    "FOG_PULL_TIMEOUT_SECONDS": "20",
}
# Variables of the parent that would change the child's configuration behind the test's back.
_SCRUBBED = ("DOCKER_HOST", "STATE_DIRECTORY", "XDG_STATE_HOME")
# Log levels that must never appear in a healthy run.
BAD_LEVELS = frozenset({"error", "critical", "exception"})


def controller_command(*args: str) -> list[str]:
    """`fog-controller ARGS` from the virtualenv when installed, else `python -m controller`."""
    script = Path(sys.executable).with_name("fog-controller")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "controller", *args]


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """A one-shot `fog-controller ARGS` (e.g. `migrate`): exit code and stdout+stderr."""
    done = subprocess.run(
        controller_command(*args),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def daemon_env(
    state_home: Path, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The parent's environment minus every FOG_* and Docker/state variable, plus FAST_ENV and
    `overrides` (a None value removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOG_") and k not in _SCRUBBED}
    # `python -m controller` from a temporary working directory still finds the package.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Warnings (an unclosed socket, a deprecation) reach stderr as non-JSON lines, which the
    # log checks below refuse.
    env["PYTHONWARNINGS"] = "default"
    env["XDG_STATE_HOME"] = str(state_home)  # never the real ~/.local/state
    env.update(FAST_ENV)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Log:
    """One process's stderr, parsed: JSON events and anything else (tracebacks, warnings)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def named(self, event: str | tuple[str, ...], **match: Any) -> list[dict[str, Any]]:
        """Events called `event` (or any of several names) whose fields equal `match`."""
        names = (event,) if isinstance(event, str) else event
        return [
            e
            for e in self.events
            if e.get("event") in names and all(e.get(k) == v for k, v in match.items())
        ]


class DaemonExited(AssertionError):
    """The daemon died while a test waited on it: no point waiting any longer."""


class Daemon:
    """One `fog-controller run` child process, its stdout and stderr captured to files."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.killed = False
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                controller_command("run"),
                env=dict(env),
                cwd=log_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def __repr__(self) -> str:
        return f"Daemon({self.name}, pid={self.proc.pid}, rc={self.proc.returncode})"

    # --- observation -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the process wrote, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def log(self) -> Log:
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        parsed = Log()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                # SIGKILL may cut the very last line short; only that one is forgiven.
                if not (self.killed and i == len(lines) - 1):
                    parsed.other.append(line)
                continue
            if isinstance(event, dict):
                parsed.events.append(event)
            else:
                parsed.other.append(line)
        return parsed

    def tail(self, lines: int = 30) -> str:
        text_ = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return (
            f"--- {self.name} (pid {self.proc.pid}, rc {self.proc.returncode}) stderr tail:\n"
            + ("\n".join(text_))
        )

    def assert_clean_log(self) -> Log:
        """Every stderr line is a JSON event and none is at error level (nothing crashed)."""
        log = self.log()
        assert not log.other, f"non-JSON output from {self.name}:\n" + "\n".join(log.other[:20])
        bad = [e for e in log.events if str(e.get("level", "")).lower() in BAD_LEVELS]
        assert not bad, f"error-level events from {self.name}: {bad[:5]}"
        return log

    def assert_alive(self) -> None:
        if not self.alive:
            raise DaemonExited(f"{self.name} exited unexpectedly\n{self.tail()}")

    async def until(
        self, check: Callable[[], Awaitable[T]], *, within: float = 30.0, what: str = ""
    ) -> T:
        """Poll `check` (truthy, or no AssertionError) while the daemon must stay alive."""

        async def guarded() -> T:
            self.assert_alive()
            return await check()

        try:
            return await eventually(guarded, within=within)
        except DaemonExited:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{what or 'condition'}: {exc}\n{self.tail()}") from exc

    async def wait_event(
        self,
        event: str | tuple[str, ...],
        *,
        count: int = 1,
        within: float = 30.0,
        interval: float = 0.02,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """The first `count` events named `event` (with fields equal to `match`)."""

        async def seen() -> list[dict[str, Any]]:
            self.assert_alive()
            found = self.log().named(event, **match)
            return found[:count] if len(found) >= count else []

        try:
            return await eventually(seen, within=within, interval=interval)
        except DaemonExited:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{count}x {event} {match}: {exc}\n{self.tail()}") from exc

    # --- signals ---------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL: a power cut for the controller (its containers are untouched)."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def terminate(self, within: float) -> tuple[int | None, float]:
        """SIGTERM, then wait up to `within` seconds; returns (exit code or None, seconds)."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(within)

    async def wait_exit(self, within: float) -> tuple[int | None, float]:
        """Wait up to `within` seconds for the process to end: (exit code or None, seconds)."""
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proc.wait, within)
        return self.proc.poll(), time.monotonic() - started

    def close(self) -> None:
        """Stop the process whatever state it is in: SIGTERM, wait, SIGKILL fallback."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.wait()


class Daemons:
    """Starts daemons for one test and stops every one of them at its end."""

    def __init__(self, log_dir: Path, state_home: Path) -> None:
        self.log_dir = log_dir
        self.state_home = state_home
        self.started: list[Daemon] = []

    def env(self, **overrides: str | None) -> dict[str, str]:
        # A port of its own for the metrics/health listener: the default one may be taken by
        # another daemon on this machine (a test running beside us, a developer's `make run`).
        return daemon_env(
            self.state_home, {"FOG_METRICS_ADDR": f"127.0.0.1:{free_port()}", **overrides}
        )

    def start(self, **env: str | None) -> Daemon:
        """A new daemon with FAST_ENV plus `env` (FOG_DATABASE_URL=..., say)."""
        name = f"daemon-{len(self.started) + 1}"
        daemon = Daemon(name, self.env(**env), self.log_dir)
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.close()


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 30.0, interval: float = 0.1
) -> T:
    """Poll `check` until it returns a truthy value without AssertionError; return it."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = await check()
            if value:
                return value
            failure: BaseException = AssertionError(f"still falsy: {value!r}")
        except DaemonExited:
            raise
        except AssertionError as exc:
            failure = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {within}s: {failure}") from failure
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def as_uuid(value: Any) -> uuid.UUID:
    """A UUID column as read back: a uuid.UUID (PostgreSQL) or canonical text (SQLite)."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class Sql:
    """An operator at a SQL prompt: text statements only, UUIDs spelt in canonical text, as
    both backends take them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.engine: AsyncEngine = create_engine(url)

    def uid(self, value: uuid.UUID) -> str:
        return str(value)

    async def execute(self, *statements: tuple[str, Mapping[str, Any]] | str) -> None:
        """Run the statements in one write transaction."""
        async with writer(self.engine).begin() as conn:
            for statement in statements:
                sql, params = (statement, {}) if isinstance(statement, str) else statement
                await conn.execute(text(sql), dict(params))

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(r._mapping) for r in result]

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def close(self) -> None:
        await self.engine.dispose()

    # --- what operators type ---------------------------------------------------------------

    async def add_user(self, username: str = "alice") -> uuid.UUID:
        uid = uuid.uuid4()
        await self.execute(
            (
                "INSERT INTO users (id, username) VALUES (:id, :name)",
                {"id": self.uid(uid), "name": username},
            )
        )
        return uid

    async def add_nodes(self, urls: Iterable[str]) -> dict[uuid.UUID, str]:
        """One node per engine URL, named node-0, node-1, ...; returns id -> URL."""
        nodes = {uuid.uuid4(): url for url in urls}
        await self.execute(
            *(
                (
                    "INSERT INTO nodes (id, name, docker_url) VALUES (:id, :name, :url)",
                    {"id": self.uid(nid), "name": f"node-{i}", "url": url},
                )
                for i, (nid, url) in enumerate(nodes.items())
            )
        )
        return nodes

    async def add_deployment(
        self,
        user: uuid.UUID,
        name: str,
        image: str,
        replicas: int,
        *,
        cpu_cores: float = 0.5,
        memory_mb: int = 512,
        storage_gb: int = 1,
    ) -> uuid.UUID:
        did = uuid.uuid4()
        await self.execute(
            (
                "INSERT INTO deployments (id, name, user_id, container_image, target_replicas) "
                "VALUES (:id, :name, :user, :image, :replicas)",
                {
                    "id": self.uid(did),
                    "name": name,
                    "user": self.uid(user),
                    "image": image,
                    "replicas": replicas,
                },
            ),
            (
                "INSERT INTO deployment_resources "
                "(id, deployment_id, cpu_cores, memory_mb, storage_gb) "
                "VALUES (:id, :deployment, :cpu, :memory, :storage)",
                {
                    "id": self.uid(uuid.uuid4()),
                    "deployment": self.uid(did),
                    "cpu": cpu_cores,
                    "memory": memory_mb,
                    "storage": storage_gb,
                },
            ),
        )
        return did

    async def scale(self, deployment: uuid.UUID, replicas: int) -> None:
        await self.execute(
            (
                "UPDATE deployments SET target_replicas = :n WHERE id = :id",
                {"n": replicas, "id": self.uid(deployment)},
            )
        )

    async def status(self, deployment: uuid.UUID) -> str:
        return str(
            await self.scalar(
                "SELECT status FROM deployments WHERE id = :id", id=self.uid(deployment)
            )
        )

    async def history(self, deployment: uuid.UUID) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT old_status, new_status, changed_by, reason FROM deployment_status_history "
            "WHERE deployment_id = :id ORDER BY changed_at, id",
            id=self.uid(deployment),
        )

    async def replicas(self, deployment: uuid.UUID, *statuses: str) -> list[dict[str, Any]]:
        rows = await self.rows(
            "SELECT id, status, node_id, container_id FROM deployment_replicas "
            "WHERE deployment_id = :id ORDER BY created_at, id",
            id=self.uid(deployment),
        )
        for r in rows:
            r["id"] = as_uuid(r["id"])
            r["node_id"] = None if r["node_id"] is None else as_uuid(r["node_id"])
        return [r for r in rows if not statuses or r["status"] in statuses]

    async def live_replicas(self, deployment: uuid.UUID) -> list[dict[str, Any]]:
        return await self.replicas(deployment, "pending", "starting", "running")


# --- the fault suite's invariants (tests/e2e/test_faults.py) ----------------------------------

# The controller's container labels, spelt out here because these helpers import nothing from
# `controller` (a renamed label must break these tests, not silently follow).
LABEL_MANAGED = "fog.managed-by=fog-controller"
LABEL_DEPLOYMENT = "fog.deployment-id"
LABEL_REPLICA = "fog.replica-id"
LIVE_STATUSES = ("pending", "starting", "running")


@dataclass(frozen=True)
class Box:
    """One container carrying our managed-by label, as an engine lists it."""

    engine_url: str
    id: str
    state: str
    deployment_id: str
    replica_id: str


def labelled_containers(urls: Iterable[str]) -> list[Box]:
    """Every container (any state) with our managed-by label on these engines."""
    import docker  # the daemon helpers above need no Docker client

    found: list[Box] = []
    for url in urls:
        client = docker.APIClient(base_url=url, version="1.41", timeout=30)
        try:
            for c in client.containers(all=True, filters={"label": [LABEL_MANAGED]}):
                labels = c.get("Labels") or {}
                found.append(
                    Box(
                        engine_url=url,
                        id=c["Id"],
                        state=c["State"],
                        deployment_id=labels.get(LABEL_DEPLOYMENT, ""),
                        replica_id=labels.get(LABEL_REPLICA, ""),
                    )
                )
        finally:
            client.close()
    return found


async def assert_invariants(
    sql: Sql, urls: Iterable[str], *, skip: Iterable[uuid.UUID] = ()
) -> None:
    """The system at rest, checked from the database and the engines alone:

    - per deployment, exactly `target_replicas` live rows (0 once soft-deleted), all running,
      each with exactly one running container on its own node whose id the row records;
    - no managed container without a live row (orphans, twins, strays, stopped leftovers);
    - no row stuck in `stopping`;
    - every status change has a history row: the history chains (each row's old status is the
      previous row's new one, the first starts from `pending`) and ends at `deployments.status`
      (a deployment without history is still `pending`).

    `skip` leaves deployments out of the per-deployment counts (their containers still must
    belong to live rows of theirs)."""
    urls = list(urls)
    skipped = {str(as_uuid(s)) for s in skip}
    deployments = await sql.rows(
        "SELECT id, name, target_replicas, status, deleted_at FROM deployments"
    )
    replicas = await sql.rows(
        "SELECT r.id, r.deployment_id, r.status, r.node_id, r.container_id, n.docker_url "
        "FROM deployment_replicas r LEFT JOIN nodes n ON n.id = r.node_id"
    )
    history = await sql.rows(
        "SELECT deployment_id, old_status, new_status, reason FROM deployment_status_history "
        "ORDER BY changed_at, id"
    )
    boxes = await asyncio.to_thread(labelled_containers, urls)

    live: dict[str, dict[str, Any]] = {}
    per_deployment: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for r in replicas:
        did, rid = str(as_uuid(r["deployment_id"])), str(as_uuid(r["id"]))
        if r["status"] == "stopping":
            problems.append(f"replica {rid} of {did} still stopping")
        if r["status"] in LIVE_STATUSES:
            live[rid] = r
            per_deployment.setdefault(did, []).append(r)

    by_replica: dict[str, list[Box]] = {}
    for box in boxes:
        by_replica.setdefault(box.replica_id, []).append(box)
        if box.replica_id not in live:
            problems.append(f"container without a live row: {box}")
        elif str(as_uuid(live[box.replica_id]["deployment_id"])) != box.deployment_id:
            problems.append(f"container labelled for another deployment than its row: {box}")

    chains: dict[str, list[dict[str, Any]]] = {}
    for h in history:
        chains.setdefault(str(as_uuid(h["deployment_id"])), []).append(h)

    for d in deployments:
        did = str(as_uuid(d["id"]))
        chain = chains.get(did, [])
        previous = "pending"
        for h in chain:
            if h["old_status"] != previous:
                problems.append(f"{d['name']}: history jumps {previous} -> {h}: {chain}")
            previous = h["new_status"]
        if d["status"] != previous:
            problems.append(f"{d['name']}: status {d['status']}, history ends at {previous}")
        if did in skipped:
            continue
        want = 0 if d["deleted_at"] is not None else int(d["target_replicas"])
        rows = per_deployment.get(did, [])
        if len(rows) != want:
            problems.append(f"{d['name']}: {len(rows)} live rows, want {want}")
        for r in rows:
            rid = str(as_uuid(r["id"]))
            mine = by_replica.get(rid, [])
            if r["status"] != "running":
                problems.append(f"{d['name']}: replica {rid} is {r['status']}")
            if len(mine) != 1:
                problems.append(f"{d['name']}: replica {rid} has {len(mine)} containers")
                continue
            (box,) = mine
            if box.state != "running":
                problems.append(f"{d['name']}: container of {rid} is {box.state}")
            if box.engine_url != r["docker_url"] or box.id != r["container_id"]:
                problems.append(f"{d['name']}: row {rid} and its container disagree: {r} {box}")
        if d["deleted_at"] is not None and d["status"] != "deleted":
            problems.append(f"{d['name']}: soft-deleted but status {d['status']}")
        if d["deleted_at"] is None and want == 0 and d["status"] != "stopped":
            problems.append(f"{d['name']}: target 0 but status {d['status']}")
        if d["deleted_at"] is None and want > 0 and d["status"] != "running":
            problems.append(f"{d['name']}: status {d['status']} at {want} replicas")
    assert not problems, "invariants broken:\n  " + "\n  ".join(problems[:30])


async def settle(
    daemon: Daemon,
    sql: Sql,
    urls: Iterable[str],
    *,
    within: float = 45.0,
    skip: Iterable[uuid.UUID] = (),
    what: str = "",
) -> None:
    """Wait (the daemon alive throughout) until `assert_invariants` holds."""
    urls, skip = list(urls), list(skip)

    async def holds() -> bool:
        await assert_invariants(sql, urls, skip=skip)
        return True

    await daemon.until(holds, within=within, what=what or "invariants")
