"""fogctl's deployment verbs, run as an operator runs them, on PostgreSQL and on SQLite.

Commands run in-process through Typer's CliRunner (the real app, the real database); one test
runs the installed `fogctl` script as a subprocess. Rows the controller would write (replicas,
history) are inserted here directly: these tests pin down what fogctl reads and writes, the
daemon's own behaviour is tested elsewhere. Tests are synchronous on purpose: each command
starts its own event loop, as it does for a user.

The helpers at the top are imported by the other test_fogctl_* modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from typer.testing import CliRunner, Result

from controller.fogctl import app
from controller.readmodel import (
    DEPLOYMENTS,
    HISTORY,
    NODES,
    REPLICAS,
    RESOURCES,
    STATE,
    USERS,
)
from schema.engine import create_engine, writer

T = TypeVar("T")

WEB = """\
name: web
container_image: nginx:1.27
target_replicas: 3
resources: {cpu_cores: 0.5, memory_mb: 512, gpu_units: 0, storage_gb: 1}
"""
API = """\
name: api
container_image: example/api:2
resources: {cpu_cores: 1, memory_mb: 1024, storage_gb: 2}
"""
ANSI = re.compile(r"\x1b\[")


def invoke(
    runner: CliRunner,
    db_url: str,
    args: Sequence[str],
    *,
    user: str | None,
    stdin: str | None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """fogctl in-process, as a user with FOG_DATABASE_URL (and FOG_USER) set, no colour."""
    settings: dict[str, str | None] = {
        "FOG_DATABASE_URL": db_url,
        "FOG_USER": user,
        "NO_COLOR": None,
        "FORCE_COLOR": None,
        **(env or {}),
    }
    return runner.invoke(app, list(args), env=settings, input=stdin)


class Fogctl:
    """The CLI against one database, as a user with FOG_DATABASE_URL (and FOG_USER) set."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.runner = CliRunner()

    def __call__(self, *args: str, user: str | None = None, stdin: str | None = None) -> Result:
        return invoke(self.runner, self.db_url, args, user=user, stdin=stdin)

    def ok(self, *args: str, user: str | None = None, stdin: str | None = None) -> str:
        result = self(*args, user=user, stdin=stdin)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    def json(self, *args: str, user: str | None = None) -> Any:
        return json.loads(self.ok(*args, "-o", "json", user=user))


class FogctlProcess:
    """The installed `fogctl` script run as a subprocess, as an operator runs it: its own
    process, environment and standard input. Every run is kept, so a test can search all
    that fogctl printed."""

    def __init__(self, db_url: str, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.env = {**os.environ, "FOG_DATABASE_URL": db_url, **(env or {})}
        for name in ("NO_COLOR", "FORCE_COLOR", "FOG_USER"):
            self.env.pop(name, None)
        self.runs: list[subprocess.CompletedProcess[str]] = []

    def __call__(
        self, *args: str, user: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = self.env if user is None else {**self.env, "FOG_USER": user}
        done = subprocess.run(
            [fogctl_script(), *args],
            input=stdin if stdin is not None else "",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.runs.append(done)
        return done

    def ok(self, *args: str, user: str | None = None, stdin: str | None = None) -> str:
        done = self(*args, user=user, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str, user: str | None = None) -> Any:
        return json.loads(self.ok(*args, "-o", "json", user=user))

    def printed(self) -> str:
        """Everything every run wrote to standard output and standard error."""
        return "".join(r.stdout + r.stderr for r in self.runs)


class FogctlInProcess(FogctlProcess):
    """`FogctlProcess` run in-process through CliRunner: for the many variants of one
    behaviour, where a process start per command (about 1 s of imports) would be most of the
    test; every behaviour keeps at least one test through the installed script."""

    def __init__(self, db_url: str, env: dict[str, str] | None = None) -> None:
        super().__init__(db_url, env)
        self.overrides = env or {}
        self.runner = CliRunner()

    def __call__(
        self, *args: str, user: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = invoke(
            self.runner, self.db_url, args, user=user, stdin=stdin or "", env=self.overrides
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        done = subprocess.CompletedProcess(
            ["fogctl", *args], result.exit_code, result.stdout, result.stderr
        )
        self.runs.append(done)
        return done


def sql(db_url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one write transaction on its own engine (as a second client would)."""

    async def go() -> T:
        engine = create_engine(db_url)
        try:
            async with writer(engine).begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def deployment_row(db_url: str, user: str, name: str) -> dict[str, Any]:
    """The user's live deployment `name` joined with its resources, as stored."""

    async def q(conn: AsyncConnection) -> dict[str, Any]:
        d, r, u = DEPLOYMENTS, RESOURCES, USERS
        row = (
            await conn.execute(
                select(d, r.c.cpu_cores, r.c.memory_mb, r.c.gpu_units, r.c.storage_gb)
                .join(u, u.c.id == d.c.user_id)
                .outerjoin(r, r.c.deployment_id == d.c.id)
                .where(u.c.username == user, d.c.name == name, d.c.deleted_at.is_(None))
            )
        ).one()
        return dict(row._mapping)

    return sql(db_url, q)


def add_node(db_url: str, name: str = "n1", **values: Any) -> uuid.UUID:
    node_id = uuid.uuid4()

    async def q(conn: AsyncConnection) -> None:
        await conn.execute(
            insert(NODES).values(id=node_id, name=name, docker_url=f"tcp://{name}:2375", **values)
        )

    sql(db_url, q)
    return node_id


def add_replicas(
    db_url: str,
    deployment_id: uuid.UUID,
    statuses: list[str],
    node_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Replica rows as the controller would write them (running ones with a container)."""
    ids = [uuid.uuid4() for _ in statuses]
    now = datetime.now(UTC)

    async def q(conn: AsyncConnection) -> None:
        for replica_id, status in zip(ids, statuses, strict=True):
            placed = status != "pending"
            await conn.execute(
                insert(REPLICAS).values(
                    id=replica_id,
                    deployment_id=deployment_id,
                    status=status,
                    node_id=node_id if placed else None,
                    container_id=replica_id.hex * 2 if status == "running" else None,
                    started_at=now if status == "running" else None,
                )
            )

    sql(db_url, q)
    return ids


def set_replicas(db_url: str, deployment_id: uuid.UUID, status: str) -> None:
    async def q(conn: AsyncConnection) -> None:
        r = REPLICAS
        await conn.execute(
            update(r).where(r.c.deployment_id == deployment_id).values(status=status)
        )

    sql(db_url, q)


def stop_replicas(db_url: str, replica_ids: list[uuid.UUID]) -> None:
    async def q(conn: AsyncConnection) -> None:
        r = REPLICAS
        await conn.execute(
            update(r)
            .where(r.c.id.in_(replica_ids))
            .values(status="stopped", stopped_at=datetime.now(UTC))
        )

    sql(db_url, q)


def set_replicas_where(db_url: str, deployment_id: uuid.UUID, old: str, new: str) -> None:
    async def q(conn: AsyncConnection) -> None:
        r = REPLICAS
        await conn.execute(
            update(r)
            .where(r.c.deployment_id == deployment_id, r.c.status == old)
            .values(status=new)
        )

    sql(db_url, q)


def record_status(
    db_url: str,
    deployment_id: uuid.UUID,
    new: str,
    reason: str,
    *,
    at: datetime | None = None,
) -> None:
    """What `controller.store.Store.record_status` writes: the status and a history row with
    the same stamp in `updated_at` and `changed_at` (the database clock on PostgreSQL), and
    the current generation as the one the status describes."""

    async def q(conn: AsyncConnection) -> None:
        d, h = DEPLOYMENTS, HISTORY
        old: Any = (
            await conn.execute(select(d.c.status).where(d.c.id == deployment_id))
        ).scalar_one()
        stamp: Any = at or (func.now() if conn.dialect.name == "postgresql" else datetime.now(UTC))
        await conn.execute(
            update(d).where(d.c.id == deployment_id).values(status=new, updated_at=stamp)
        )
        await conn.execute(
            insert(h).values(
                id=uuid.uuid4(),
                deployment_id=deployment_id,
                old_status=getattr(old, "value", old),
                new_status=new,
                changed_by=None,
                changed_at=stamp,
                reason=reason,
            )
        )
        await conn.execute(
            update(STATE)
            .where(STATE.c.deployment_id == deployment_id)
            .values(observed_generation=STATE.c.generation)
        )

    sql(db_url, q)


def observe_generation(db_url: str, deployment_id: uuid.UUID) -> None:
    """What the controller writes when acting on an edit changes no status (a scale-down that
    stays `running`): the deployment's generation as the one observed."""

    async def q(conn: AsyncConnection) -> None:
        await conn.execute(
            update(STATE)
            .where(STATE.c.deployment_id == deployment_id)
            .values(observed_generation=STATE.c.generation)
        )

    sql(db_url, q)


CliT = TypeVar("CliT", Fogctl, FogctlProcess)


def with_users(cli: CliT) -> CliT:
    """The CLI after adding the two users the tests act as."""
    for name in ("alice", "bob"):
        cli.ok("user", "add", name)
    return cli


@pytest.fixture
def fog(db_url: str) -> Fogctl:
    return with_users(Fogctl(db_url))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- apply -------------------------------------------------------------------------------------


def test_apply_creates_then_reports_unchanged_then_configured(fog: Fogctl, tmp_path: Path) -> None:
    both = write(tmp_path, "both.yaml", WEB + "---\n" + API)
    assert fog.ok("apply", "-f", both, user="alice").splitlines() == [
        "deployment/web created",
        "deployment/api created",
    ]
    assert fog.ok("apply", "-f", both, user="alice").splitlines() == [
        "deployment/web unchanged",
        "deployment/api unchanged",
    ]
    before = deployment_row(fog.db_url, "alice", "web")

    changed = write(
        tmp_path,
        "both.yaml",
        WEB.replace("nginx:1.27", "nginx:1.28").replace("memory_mb: 512", "memory_mb: 1024")
        + "---\n"
        + API,
    )
    assert fog.ok("apply", "-f", changed, user="alice").splitlines() == [
        "deployment/web configured (container_image, resources)",
        "deployment/api unchanged",
    ]
    after = deployment_row(fog.db_url, "alice", "web")
    assert (after["container_image"], after["memory_mb"], after["target_replicas"]) == (
        "nginx:1.28",
        1024,
        3,
    )
    # The trigger moved updated_at: that is how the controller sees an operator's change.
    assert after["updated_at"] > before["updated_at"]
    assert after["id"] == before["id"]
    # Defaults of the DeploymentCreate shape: one replica, no GPU.
    api_row = deployment_row(fog.db_url, "alice", "api")
    assert (api_row["target_replicas"], api_row["gpu_units"]) == (1, 0)


def test_unchanged_apply_writes_nothing(fog: Fogctl, tmp_path: Path) -> None:
    path = write(tmp_path, "web.yaml", WEB)
    fog.ok("apply", "-f", path, user="alice")
    before = deployment_row(fog.db_url, "alice", "web")
    assert fog.ok("apply", "-f", path, user="alice") == "deployment/web unchanged\n"
    assert deployment_row(fog.db_url, "alice", "web") == before


def test_apply_reads_json_lists_and_standard_input(fog: Fogctl) -> None:
    docs = [yaml.safe_load(WEB), yaml.safe_load(API)]
    out = fog.ok("apply", "-f", "-", user="alice", stdin=json.dumps(docs))
    assert out.splitlines() == ["deployment/web created", "deployment/api created"]
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB) == "deployment/web unchanged\n"


def test_reapplying_a_file_without_a_count_keeps_a_scale(fog: Fogctl, tmp_path: Path) -> None:
    path = write(tmp_path, "api.yaml", API)
    fog.ok("apply", "-f", path, user="alice")
    fog.ok("scale", "deployment", "api", "--replicas", "5", user="alice")
    assert fog.ok("apply", "-f", path, user="alice") == "deployment/api unchanged\n"
    assert deployment_row(fog.db_url, "alice", "api")["target_replicas"] == 5


def test_apply_gives_a_resources_row_to_a_deployment_made_by_hand(fog: Fogctl) -> None:
    async def q(conn: AsyncConnection) -> None:
        u = USERS
        uid: uuid.UUID = (
            await conn.execute(select(u.c.id).where(u.c.username == "alice"))
        ).scalar_one()
        await conn.execute(
            insert(DEPLOYMENTS).values(
                id=uuid.uuid4(),
                name="web",
                user_id=uid,
                container_image="nginx:1.27",
                target_replicas=3,
            )
        )

    sql(fog.db_url, q)
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB) == (
        "deployment/web configured (resources)\n"
    )
    assert deployment_row(fog.db_url, "alice", "web")["cpu_cores"] == 0.5


# --- bad input ---------------------------------------------------------------------------------


def _nothing_written(fog: Fogctl) -> None:
    assert fog.json("get", "deploy", user="alice") == []


def test_invalid_yaml_is_exit_2_with_the_place(fog: Fogctl, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: web\n  container_image: [nginx\n")
    result = fog("apply", "-f", path, user="alice")
    assert result.exit_code == 2
    assert f"{path}: invalid YAML at line 2" in result.stderr
    assert "Traceback" not in result.output
    _nothing_written(fog)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            ("cpu_cores: 0.5", "cpu_cores: 64"),
            "resources.cpu_cores: cpu_cores must be between 0.5 and 32 cores, got 64",
            id="cpu-too-high",
        ),
        pytest.param(
            ("memory_mb: 512", "memory_mb: 100"),
            "resources.memory_mb: memory_mb must be between 512 and 65536 MB, got 100",
            id="memory-too-low",
        ),
        pytest.param(
            ("gpu_units: 0", "gpu_units: 9"),
            "resources.gpu_units: gpu_units must be between 0 and 8 units, got 9",
            id="gpu-too-high",
        ),
        pytest.param(
            ("storage_gb: 1", "storage_gb: 2000"),
            "resources.storage_gb: storage_gb must be between 1 and 1024 GB, got 2000",
            id="storage-too-high",
        ),
        pytest.param(
            ("target_replicas: 3", "target_replicas: -1"),
            "target_replicas: target_replicas must be between 0 and 2147483647, got -1",
            id="negative-replicas",
        ),
        pytest.param(
            ("target_replicas: 3", "target_replicas: three"),
            "target_replicas: input should be a valid integer, unable to parse string as an "
            "integer (allowed: an integer from 0 to 2147483647), got 'three'",
            id="replicas-not-a-number",
        ),
        pytest.param(
            ("target_replicas: 3", "replicas: 3"),
            "replicas: unknown field (allowed: name, container_image, target_replicas, resources, "
            "entrypoint, command, env, network, ports, volumes, labels, stop_grace_seconds, "
            "healthcheck, image_pull_secret, placement)",
            id="misspelt-field",
        ),
        pytest.param(
            ("container_image: nginx:1.27\n", ""),
            "container_image: required field is missing",
            id="missing-image",
        ),
    ],
)
def test_out_of_range_values_are_exit_2_naming_field_range_and_value(
    fog: Fogctl, change: tuple[str, str], expected: str
) -> None:
    result = fog("apply", "-f", "-", user="alice", stdin=WEB.replace(*change))
    assert result.exit_code == 2, result.output
    assert f"fogctl: <stdin>: {expected}" in result.stderr
    _nothing_written(fog)


def test_one_bad_document_writes_none_of_them(fog: Fogctl) -> None:
    stream = API + "---\n" + WEB.replace("cpu_cores: 0.5", "cpu_cores: 0")
    result = fog("apply", "-f", "-", user="alice", stdin=stream)
    assert result.exit_code == 2
    assert "<stdin>, document 2: resources.cpu_cores:" in result.stderr
    _nothing_written(fog)


def test_a_name_twice_in_one_apply_is_refused(fog: Fogctl) -> None:
    result = fog("apply", "-f", "-", user="alice", stdin=WEB + "---\n" + WEB)
    assert result.exit_code == 2
    assert "name: deployment 'web' is also defined in <stdin>, document 1" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["apply", "-f", "-"], id="apply"),
        pytest.param(["get", "deploy"], id="get"),
        pytest.param(["get", "rs"], id="get-replicas"),
        pytest.param(["describe", "deployment", "web"], id="describe"),
        pytest.param(["scale", "deployment", "web", "--replicas", "2"], id="scale"),
        pytest.param(["delete", "deployment", "web"], id="delete"),
        pytest.param(["history", "deployment", "web"], id="history"),
        pytest.param(["rollout", "status", "deployment", "web"], id="rollout"),
    ],
)
def test_unknown_user_is_exit_2_naming_the_option(fog: Fogctl, args: list[str]) -> None:
    result = fog(*args, user="mallory", stdin=WEB)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "fogctl: --user: user 'mallory' does not exist (create it with `fogctl user add mallory`)\n"
    )


def test_no_user_at_all_is_exit_2(fog: Fogctl) -> None:
    result = fog("get", "deploy")
    assert result.exit_code == 2
    assert "--user: no user given: pass --user NAME or set FOG_USER" in result.stderr


def test_user_option_overrides_the_environment(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    assert fog.json("get", "deploy", "--user", "bob", user="alice") == []


# --- isolation ---------------------------------------------------------------------------------


def test_users_cannot_see_or_change_each_others_deployments(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    web_id = deployment_row(fog.db_url, "alice", "web")["id"]
    add_replicas(fog.db_url, web_id, ["running"], add_node(fog.db_url))
    record_status(fog.db_url, web_id, "scheduled", "1/3 replicas running")
    alice_web = deployment_row(fog.db_url, "alice", "web")

    assert fog.json("get", "deploy", user="bob") == []
    assert fog.json("get", "rs", user="bob") == []
    assert fog.json("get", "deploy", "web", user="bob") == []
    not_found = "fogctl: deployment 'web' not found for user 'bob'\n"
    for args in (
        ["describe", "deploy", "web"],
        ["history", "deploy", "web"],
        ["scale", "deploy", "web", "--replicas", "0"],
        ["delete", "deploy", "web"],
        ["rollout", "status", "deploy", "web", "--timeout", "1s"],
    ):
        result = fog(*args, user="bob")
        assert (result.exit_code, result.stderr) == (1, not_found), args

    # Not a byte of alice's row moved (not even updated_at).
    assert deployment_row(fog.db_url, "alice", "web") == alice_web

    # Bob may use the same name: his own deployment, invisible to alice.
    bob_doc = WEB.replace("nginx:1.27", "bob/app:1")
    assert fog.ok("apply", "-f", "-", user="bob", stdin=bob_doc) == "deployment/web created\n"
    assert [d["container_image"] for d in fog.json("get", "deploy", user="alice")] == ["nginx:1.27"]
    assert [d["container_image"] for d in fog.json("get", "deploy", user="bob")] == ["bob/app:1"]
    fog.ok("scale", "deploy", "web", "--replicas", "7", user="bob")
    fog.ok("delete", "deploy", "web", user="bob")
    assert deployment_row(fog.db_url, "alice", "web") == alice_web

    everyone = fog.json("get", "deploy", "--all-users", "--status", "pending", "-s", "scheduled")
    assert sorted((d["user"], d["name"]) for d in everyone) == [("alice", "web"), ("bob", "web")]
    table = fog.ok("get", "deploy", "-A")
    assert table.splitlines()[0].split() == ["USER", "NAME", "READY", "STATUS", "IMAGE", "AGE"]


# --- get ---------------------------------------------------------------------------------------

DEPLOYMENT_KEYS = [
    "id",
    "name",
    "container_image",
    "status",
    "target_replicas",
    "running_replicas",
    "created_at",
    "updated_at",
    "user",
    "live_replicas",
    "stopping_replicas",
    "resources",
    "reason",
    "status_changed_at",
    "deleted_at",
    "generation",
    "observed_generation",
    # The container spec (issue 14), under the apply file's names.
    "entrypoint",
    "command",
    "env",
    "network",
    "ports",
    "volumes",
    "labels",
    "stop_grace_seconds",
    "healthcheck",
    "image_pull_secret",
    # Placement (issue 15), under the apply file's name.
    "placement",
]


def test_get_output_formats_are_stable(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=API + "---\n" + WEB)
    web = deployment_row(fog.db_url, "alice", "web")
    node = add_node(fog.db_url)
    add_replicas(fog.db_url, web["id"], ["running", "running", "starting"], node)
    record_status(fog.db_url, web["id"], "scheduled", "2/3 replicas running")

    listing = fog.json("get", "deployments", user="alice")
    assert [d["name"] for d in listing] == ["api", "web"]  # sorted by name
    assert list(listing[1]) == DEPLOYMENT_KEYS
    assert listing[1] | {"id": None, "created_at": None, "updated_at": None} == {
        "id": None,
        "name": "web",
        "container_image": "nginx:1.27",
        "status": "scheduled",
        "target_replicas": 3,
        "running_replicas": 2,
        "created_at": None,
        "updated_at": None,
        "user": "alice",
        "live_replicas": 3,
        "stopping_replicas": 0,
        "resources": {"cpu_cores": 0.5, "memory_mb": 512, "gpu_units": 0, "storage_gb": 1},
        "reason": "2/3 replicas running",
        "status_changed_at": listing[1]["status_changed_at"],
        "deleted_at": None,
        # Inserted with its resources (2); the status describes that generation.
        "generation": 2,
        "observed_generation": 2,
        # Nothing beyond image and resources: every spec field as the image says.
        "entrypoint": None,
        "command": None,
        "env": {},
        "network": None,
        "ports": [],
        "volumes": [],
        "labels": {},
        "stop_grace_seconds": None,
        "healthcheck": None,
        "image_pull_secret": None,
        "placement": {
            "node_selector": {},
            "spread_by": None,
            "max_per_node": None,
            "rebalance": True,
        },
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", listing[1]["created_at"])
    # Same bytes on every run; YAML holds the same values.
    assert fog.ok("get", "deploy", "-o", "json", user="alice") == fog.ok(
        "get", "deploy", "-o", "json", user="alice"
    )
    assert yaml.safe_load(fog.ok("get", "deploy", "-o", "yaml", user="alice")) == listing

    table = fog.ok("get", "deploy", user="alice").splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "IMAGE", "AGE"]
    assert table[2].split()[:4] == ["web", "2/3", "scheduled", "nginx:1.27"]
    wide = fog.ok("get", "deploy", "-o", "wide", user="alice").splitlines()
    assert wide[0].split() == [
        "NAME", "READY", "STATUS", "IMAGE", "CPU", "MEMORY", "GPU", "STORAGE", "AGE", "REASON",
    ]  # fmt: skip
    assert wide[2].endswith("2/3 replicas running")
    for out in (table, wide):
        # Columns align (every row starts its STATUS where the header does), no colour codes
        # off a terminal, no trailing blanks for awk and grep.
        column = out[0].index("STATUS")
        assert all(line[column - 1] == " " and line[column] != " " for line in out)
        assert not any(ANSI.search(line) or line != line.rstrip() for line in out)

    assert [d["name"] for d in fog.json("get", "deploy", "-s", "scheduled", user="alice")] == [
        "web"
    ]
    assert [d["name"] for d in fog.json("get", "deploy", "api", user="alice")] == ["api"]


def test_get_replicas_shows_node_and_container(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB + "---\n" + API)
    web = deployment_row(fog.db_url, "alice", "web")
    node = add_node(fog.db_url, "edge-1")
    running, pending = add_replicas(fog.db_url, web["id"], ["running", "pending"], node)

    rows = fog.json("get", "rs", user="alice")
    assert [(r["deployment"], r["status"], r["node"]) for r in rows] == [
        ("web", "running", "edge-1"),
        ("web", "pending", None),
    ]
    assert rows[0]["id"] == str(running)
    assert list(rows[0])[-3:] == ["deployment", "user", "node"]
    table = fog.ok("get", "replicas", user="alice").splitlines()
    assert table[0].split() == ["DEPLOYMENT", "REPLICA", "STATUS", "NODE", "CONTAINER", "AGE"]
    assert table[1].split()[:5] == ["web", str(running)[:8], "running", "edge-1", running.hex[:12]]
    assert table[2].split()[:5] == ["web", str(pending)[:8], "pending", "-", "-"]
    assert [r["status"] for r in fog.json("get", "rs", "-s", "pending", user="alice")] == [
        "pending"
    ]
    assert fog.json("get", "rs", "-d", "api", user="alice") == []
    wide = fog.ok("get", "rs", "-o", "wide", user="alice")
    assert str(running) in wide


def test_empty_listing_says_so_on_stderr_and_is_an_empty_list_in_json(fog: Fogctl) -> None:
    result = fog("get", "deploy", user="alice")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No deployments found.\n")
    assert fog.ok("get", "deploy", "-o", "yaml", user="alice") == "[]\n"


# --- describe, history -------------------------------------------------------------------------


def test_describe_shows_spec_status_reason_replicas_and_history(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    web = deployment_row(fog.db_url, "alice", "web")
    node = add_node(fog.db_url, "edge-1")
    running, _ = add_replicas(fog.db_url, web["id"], ["running", "starting"], node)
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    record_status(fog.db_url, web["id"], "pending", "0/3 replicas running", at=t0)
    record_status(
        fog.db_url, web["id"], "scheduled", "1/3 replicas running", at=t0 + timedelta(minutes=1)
    )
    reason = "1/3 replicas running; 0/1 nodes fit: 1 insufficient memory"
    record_status(fog.db_url, web["id"], "scheduled", reason, at=t0 + timedelta(minutes=2))

    out = fog.ok("describe", "deployment", "web", user="alice")
    fields = dict(line.split(":", 1) for line in out.split("\n\n")[0].splitlines() if ":" in line)
    assert fields["Name"].strip() == "web"
    assert fields["User"].strip() == "alice"
    assert fields["Image"].strip() == "nginx:1.27"
    assert fields["Replicas"].strip() == "3 desired, 1 running, 2 live, 0 stopping"
    assert fields["Status"].strip().startswith("scheduled since ")
    assert fields["Reason"].strip() == reason  # the newest history row's reason
    assert fields["Resources"].strip().startswith("0.5 cores, 512 MB memory, 0 GPUs, 1 GB")
    assert f"edge-1   {running.hex[:12]}" in out
    assert "History:" in out
    history = out.split("History:")[1].splitlines()[1:]
    assert [line.split()[2] for line in history[1:]] == ["pending", "scheduled", "scheduled"]

    short = fog.ok("describe", "deploy", "web", "--history", "2", user="alice")
    assert "History (newest 2 of 3):" in short
    assert "0/3 replicas running" not in short

    detail = fog.json("describe", "deploy", "web", user="alice")
    assert detail["reason"] == reason
    assert detail["history_total"] == 3
    assert [r["node"] for r in detail["replicas"]] == ["edge-1", "edge-1"]
    assert [h["new_status"] for h in detail["history"]] == ["pending", "scheduled", "scheduled"]

    lines = fog.ok("history", "deployment", "web", user="alice").splitlines()
    assert lines[0].split() == ["TIME", "FROM", "TO", "BY", "REASON"]
    assert lines[1].split()[1:4] == ["pending", "pending", "controller"]
    assert lines[3].endswith(reason)
    newest = fog.json("history", "deploy", "web", "--limit", "1", user="alice")
    assert [h["reason"] for h in newest] == [reason]


def test_history_of_a_deployment_without_status_changes(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    result = fog("history", "deploy", "web", user="alice")
    assert result.exit_code == 0
    assert "No history yet" in result.stderr


# --- scale, delete -----------------------------------------------------------------------------


def test_scale(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    assert fog.ok("scale", "deploy", "web", "--replicas", "5", user="alice") == (
        "deployment/web scaled (3 -> 5 replicas)\n"
    )
    assert fog.ok("scale", "deployments", "web", "--replicas", "5", user="alice") == (
        "deployment/web unchanged (5 replicas)\n"
    )
    assert deployment_row(fog.db_url, "alice", "web")["target_replicas"] == 5
    bad = fog("scale", "deploy", "web", "--replicas", "-1", user="alice")
    assert bad.exit_code == 2
    assert bad.stderr == (
        "fogctl: --replicas: target_replicas must be between 0 and 2147483647, got -1\n"
    )
    missing = fog("scale", "deploy", "nope", "--replicas", "1", user="alice")
    assert (missing.exit_code, missing.stderr) == (
        1,
        "fogctl: deployment 'nope' not found for user 'alice'\n",
    )


def test_delete_is_soft_and_frees_the_name(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    old = deployment_row(fog.db_url, "alice", "web")
    assert fog.ok("delete", "deployment", "web", user="alice") == "deployment/web deleted\n"

    listing = fog.json("get", "deploy", user="alice")
    assert [(d["name"], d["status"]) for d in listing] == [("web", "pending")]
    assert listing[0]["deleted_at"] is not None
    assert fog.ok("get", "deploy", user="alice").splitlines()[1].split()[2] == "deleting"
    assert "Deleted:" in fog.ok("describe", "deploy", "web", user="alice")
    again = fog("delete", "deploy", "web", user="alice")
    assert again.exit_code == 1

    # The controller finishes the delete; the row stays, hidden unless asked for.
    record_status(fog.db_url, old["id"], "deleted", "deleted by operator")
    assert fog.json("get", "deploy", user="alice") == []
    assert [d["id"] for d in fog.json("get", "deploy", "-s", "deleted", user="alice")] == [
        str(old["id"])
    ]
    assert (
        fog.ok("history", "deploy", "web", user="alice")
        .splitlines()[-1]
        .endswith("deleted by operator")
    )

    # The name is free again: a new deployment, and scale/describe now mean the new one.
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB) == "deployment/web created\n"
    fog.ok("scale", "deploy", "web", "--replicas", "1", user="alice")
    new = deployment_row(fog.db_url, "alice", "web")
    assert new["id"] != old["id"]
    assert new["target_replicas"] == 1
    assert fog.json("describe", "deploy", "web", user="alice")["id"] == str(new["id"])


# --- the installed script ----------------------------------------------------------------------


def fogctl_script() -> str:
    """The console script pip installed beside this interpreter."""
    return str(Path(sys.executable).with_name("fogctl"))


def test_installed_script_applies_and_lists(db_url: str) -> None:
    env = {**os.environ, "FOG_DATABASE_URL": db_url, "FOG_USER": "carol"}
    env.pop("NO_COLOR", None)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [fogctl_script(), *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run("user", "add", "carol").stdout == "user/carol created\n"
    applied = run("apply", "-f", "-", stdin=WEB)
    assert (applied.returncode, applied.stdout) == (0, "deployment/web created\n")
    listed = run("get", "deploy", "-o", "json")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["web"]
    bad = run("apply", "-f", "-", stdin=WEB.replace("gpu_units: 0", "gpu_units: 99"))
    assert bad.returncode == 2
    assert bad.stderr == (
        "fogctl: <stdin>: resources.gpu_units: gpu_units must be between 0 and 8 units, got 99\n"
    )
    assert "Usage: fogctl" in run("--help").stdout


def test_unreachable_database_is_one_masked_line_and_exit_1() -> None:
    url = "postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/nothing"
    result = CliRunner().invoke(
        app, ["get", "deploy", "--user", "alice", "--database-url", url], env={"FOG_USER": None}
    )
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "fogctl: cannot connect to database postgresql+asyncpg://postgres:***@127.0.0.1:1/nothing"
    )


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/nowhere/fog.db"
    result = CliRunner().invoke(app, ["get", "deploy", "-u", "a", "--database-url", url])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_database_without_schema_says_to_upgrade(empty_db_url: str) -> None:
    if make_url(empty_db_url).get_backend_name() == "sqlite":
        Path(make_url(empty_db_url).database or "").touch()
    result = CliRunner().invoke(app, ["get", "users", "--database-url", empty_db_url])
    assert result.exit_code == 1
    assert "has no fog-controller schema: run `fogctl db upgrade`" in result.stderr


def test_unsupported_url_is_exit_2() -> None:
    result = CliRunner().invoke(app, ["get", "users", "--database-url", "mysql://u:pw@h/d"])
    assert result.exit_code == 2
    assert result.stderr == (
        "fogctl: --database-url: must be a postgresql+asyncpg:// or sqlite+aiosqlite:/// URL, "
        "got mysql://u:***@h/d\n"
    )
