"""fogctl's cluster verbs (nodes, users, db) and the database's own refusals, on PostgreSQL
and SQLite.

The last tests go under the Pydantic layer on purpose: they hand the database a value it
must refuse (a CHECK or a UNIQUE violation) and pin down that the operator still reads
`field: rule, got value` and exit 2, never an IntegrityError traceback.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import typer
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.fogctl import queries, session
from controller.fogctl.errors import InputError
from controller.readmodel import NODES, USERS
from schema import migrate
from schema.api import DeploymentCreate, DeploymentResourceCreate, NodeCreate
from tests.integration.test_fogctl import (
    WEB,
    Fogctl,
    add_node,
    add_replicas,
    deployment_row,
    sql,
)


def node_row(db_url: str, name: str) -> dict[str, Any]:
    async def q(conn: AsyncConnection) -> dict[str, Any]:
        n = NODES
        return dict((await conn.execute(select(n).where(n.c.name == name))).one()._mapping)

    return sql(db_url, q)


@pytest.fixture
def fog(db_url: str) -> Fogctl:
    cli = Fogctl(db_url)
    cli.ok("user", "add", "alice")
    return cli


# --- nodes -------------------------------------------------------------------------------------


def test_node_add_leaves_capacity_to_detection_unless_given(fog: Fogctl) -> None:
    assert fog.ok("node", "add", "edge-1", "--docker-url", "tcp://10.0.0.5:2375") == (
        "node/edge-1 added\n"
    )
    detected = node_row(fog.db_url, "edge-1")
    assert [detected[k] for k in ("cpu_cores", "memory_mb", "gpu_units", "storage_gb")] == [
        None
    ] * 4
    assert (detected["status"], detected["unschedulable"], detected["draining"]) == (
        "unknown",
        False,
        False,
    )

    fog.ok(
        "node", "add", "edge-2", "--docker-url", "unix:///run/edge2.sock", "--cpu", "3.5",
        "--memory-mb", "4096", "--gpu", "1", "--storage-gb", "100", "--label", "zone=a",
        "--cordoned",
    )  # fmt: skip
    given = node_row(fog.db_url, "edge-2")
    assert [given[k] for k in ("cpu_cores", "memory_mb", "gpu_units", "storage_gb")] == [
        3.5,
        4096,
        1,
        100,
    ]
    assert (given["labels"], given["unschedulable"]) == ({"zone": "a"}, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--cpu", "0"], "--cpu: cpu_cores must be greater than 0, got 0.0", id="cpu-zero"
        ),
        pytest.param(
            ["--memory-mb", "-5"],
            "--memory-mb: memory_mb must be between 1 and 2147483647, got -5",
            id="memory-negative",
        ),
        pytest.param(
            ["--gpu", "-1"], "--gpu: gpu_units must be between 0 and 2147483647, got -1", id="gpu"
        ),
        pytest.param(["--label", "zone"], "--label: must be KEY=VALUE, got 'zone'", id="label"),
    ],
)
def test_node_add_refuses_bad_values(fog: Fogctl, args: list[str], message: str) -> None:
    result = fog("node", "add", "n1", "--docker-url", "tcp://h:2375", *args)
    assert result.exit_code == 2
    assert result.stderr == f"fogctl: {message}\n"
    assert fog.json("get", "nodes") == []


def test_node_add_refuses_a_bad_url_and_a_taken_name(fog: Fogctl) -> None:
    bad = fog("node", "add", "n1", "--docker-url", "10.0.0.5:2375")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("fogctl: --docker-url: docker_url must start with one of unix://")
    fog.ok("node", "add", "n1", "--docker-url", "tcp://h:2375")
    taken = fog("node", "add", "n1", "--docker-url", "tcp://other:2375")
    assert (taken.exit_code, taken.stderr) == (2, "fogctl: name: node 'n1' already exists\n")


def test_cordon_uncordon_drain_set_the_operator_flags(fog: Fogctl) -> None:
    fog.ok("node", "add", "n1", "--docker-url", "tcp://h:2375")

    def flags() -> tuple[bool, bool]:
        row = node_row(fog.db_url, "n1")
        return row["unschedulable"], row["draining"]

    assert fog.ok("node", "cordon", "n1") == "node/n1 cordoned\n"
    assert flags() == (True, False)
    assert fog.ok("node", "cordon", "n1") == "node/n1 already cordoned\n"
    assert fog.ok("get", "nodes").splitlines()[1].split()[1] == "unknown,cordoned"
    assert fog.ok("node", "uncordon", "n1") == "node/n1 uncordoned\n"
    assert flags() == (False, False)
    assert fog.ok("node", "drain", "n1") == "node/n1 drained\n"
    assert flags() == (True, True)
    assert fog.ok("get", "no").splitlines()[1].split()[1] == "unknown,draining"
    # Uncordon after a drain makes the node fully schedulable again, as kubectl's does.
    fog.ok("node", "uncordon", "n1")
    assert flags() == (False, False)
    missing = fog("node", "cordon", "nope")
    assert (missing.exit_code, missing.stderr) == (1, "fogctl: node 'nope' not found\n")


def test_drain_wait_returns_when_no_live_replica_is_left(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    web = deployment_row(fog.db_url, "alice", "web")
    node = add_node(fog.db_url, "n1")
    add_replicas(fog.db_url, web["id"], ["running"], node)
    slow = fog("node", "drain", "n1", "--wait", "--timeout", "1s")
    assert slow.exit_code == 1
    assert "waiting for node n1: 1 live replicas left" in slow.stdout
    assert slow.stderr == "fogctl: timed out after 1s: node n1 still holds 1 live replicas\n"

    add_node(fog.db_url, "n2")
    out = fog.ok("node", "drain", "n2", "--wait")
    assert out.splitlines() == ["node/n2 drained", "node/n2 drained: no live replicas left"]


def test_get_nodes_shows_capacity_and_allocation_of_live_replicas(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)  # 0.5 cores, 512 MB, 1 GB each
    web = deployment_row(fog.db_url, "alice", "web")
    n1 = add_node(fog.db_url, "n1", cpu_cores=4.0, memory_mb=8192, gpu_units=0, storage_gb=50)
    add_node(fog.db_url, "n2")
    add_replicas(fog.db_url, web["id"], ["running", "starting", "stopped", "failed"], n1)
    add_replicas(fog.db_url, web["id"], ["pending"])  # no node yet: counts nowhere

    nodes = fog.json("get", "nodes")
    assert [n["name"] for n in nodes] == ["n1", "n2"]
    assert (nodes[0]["live_replicas"], nodes[0]["allocated"]) == (
        2,
        {"cpu_cores": 1.0, "memory_mb": 1024, "gpu_units": 0, "storage_gb": 2},
    )
    assert (nodes[1]["live_replicas"], nodes[1]["cpu_cores"]) == (0, None)
    assert list(nodes[0])[-3:] == ["live_replicas", "allocated", "labels_problem"]

    table = fog.ok("get", "nodes").splitlines()
    assert table[0].split() == [
        "NAME", "STATUS", "REPLICAS", "CPU", "MEMORY", "GPU", "STORAGE", "AGE",
    ]  # fmt: skip
    assert table[1].split()[:7] == ["n1", "unknown", "2", "1/4", "1024Mi/8192Mi", "0/0", "2G/50G"]
    assert table[2].split()[:7] == [
        "n2",
        "unknown",
        "0",
        "0/auto",
        "0Mi/auto",
        "0/0",
        "0G/unlimited",
    ]
    wide = fog.ok("get", "nodes", "-o", "wide").splitlines()
    assert wide[0].split()[-6:] == [
        "HEARTBEAT", "STORAGE-DRIVER", "STORAGE-LIMITS", "DOCKER", "URL", "LABELS",
    ]  # fmt: skip
    assert "tcp://n1:2375" in wide[1]
    # Never probed: no engine facts yet.
    assert wide[1].split()[-5:-3] == ["-", "-"]
    assert fog.json("get", "nodes", "-s", "ready") == []
    assert [n["name"] for n in fog.json("get", "nodes", "n2")] == ["n2"]


def test_node_delete_refuses_live_replicas_unless_forced(fog: Fogctl) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    web = deployment_row(fog.db_url, "alice", "web")
    node = add_node(fog.db_url, "lost")
    add_replicas(fog.db_url, web["id"], ["running", "running"], node)

    refused = fog("node", "delete", "lost")
    assert refused.exit_code == 2
    assert "node 'lost' still holds 2 live replicas: drain it first" in refused.stderr
    assert fog.ok("node", "delete", "lost", "--force") == (
        "node/lost deleted (2 replicas will be replaced)\n"
    )
    assert fog.json("get", "nodes") == []
    # The replicas lost their node (ON DELETE SET NULL): the controller marks them failed.
    assert [r["node_id"] for r in fog.json("get", "rs", user="alice")] == [None, None]


# --- users -------------------------------------------------------------------------------------


def test_user_add_and_get_users(db_url: str) -> None:
    fog = Fogctl(db_url)
    assert fog.ok("user", "add", "alice") == "user/alice created\n"
    assert fog.ok("user", "add", "  bob ") == "user/bob created\n"
    taken = fog("user", "add", "alice")
    assert (taken.exit_code, taken.stderr) == (2, "fogctl: username: user 'alice' already exists\n")
    empty = fog("user", "add", "   ")
    assert (empty.exit_code, empty.stderr) == (
        2,
        "fogctl: username: username must be 1 to 100 characters long, got 0\n",
    )
    users = fog.json("get", "users")
    assert [(u["username"], list(u)) for u in users] == [
        ("alice", ["id", "username", "created_at"]),
        ("bob", ["id", "username", "created_at"]),
    ]
    assert fog.ok("get", "user").splitlines()[0].split() == ["NAME", "ID", "AGE"]


# --- db ----------------------------------------------------------------------------------------


def test_db_commands_on_a_migrated_database(db_url: str) -> None:
    fog = Fogctl(db_url)
    (head,) = migrate.heads()
    at = sql(db_url, _revision)
    assert fog.ok("db", "current") == f"current: {at}\nhead: {head}\n"
    assert fog.ok("db", "upgrade") == f"at {head}\n"
    assert fog.ok("db", "current") == f"current: {head}\nhead: {head}\n"
    unknown = fog("db", "upgrade", "nosuchrevision")
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("fogctl: revision: ")


def test_db_round_trip_on_an_empty_database(empty_db_url: str) -> None:
    fog = Fogctl(empty_db_url)
    (head,) = migrate.heads()
    assert fog.ok("db", "current").startswith("current: base (empty)")
    assert fog.ok("db", "upgrade") == f"at {head}\n"
    fog.ok("user", "add", "alice")
    assert fog.ok("db", "downgrade", "base") == "at base\n"
    gone = fog("get", "users")
    assert (gone.exit_code, gone.stderr.split(":", 1)[0]) == (1, "fogctl")
    assert "has no fog-controller schema" in gone.stderr


async def _revision(conn: AsyncConnection) -> str:
    return str((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one())


# --- what the database refuses -----------------------------------------------------------------


async def _alice(conn: AsyncConnection) -> Any:
    return await queries.require_user(conn, "alice")


def refused_apply(db_url: str, spec: DeploymentCreate) -> InputError:
    """What `apply` raises for alice's `spec`, built unvalidated so the database must judge."""

    async def go(conn: AsyncConnection) -> None:
        await queries.apply(conn, await _alice(conn), [spec])

    with pytest.raises(InputError) as refused:
        sql(db_url, go)
    return refused.value


def test_a_check_violation_becomes_a_field_message(fog: Fogctl) -> None:
    # model_construct skips validation: the value reaches the database, which must refuse it.
    spec = DeploymentCreate.model_construct(
        name="web",
        container_image="nginx:1.27",
        target_replicas=1,
        resources=DeploymentResourceCreate.model_construct(
            cpu_cores=64.0, memory_mb=512, gpu_units=0, storage_gb=1
        ),
    )
    refused = refused_apply(fog.db_url, spec)
    assert refused.message == (
        "resources.cpu_cores: must be 0.5 to 32 cores, got 64.0 "
        "(database constraint ck_deployment_resources_cpu_cores_range)"
    )
    assert refused.exit_code == 2
    assert fog.json("get", "deploy", user="alice") == []  # the transaction rolled back


def test_a_node_check_violation_becomes_a_field_message(fog: Fogctl) -> None:
    spec = NodeCreate.model_construct(
        name="n1", docker_url="tcp://h:2375", cpu_cores=-1.0, memory_mb=None, gpu_units=None,
        storage_gb=None, labels={}, unschedulable=False,
    )  # fmt: skip

    async def go(conn: AsyncConnection) -> None:
        await queries.add_node(conn, spec)

    with pytest.raises(InputError) as refused:
        sql(fog.db_url, go)
    assert refused.value.message == (
        "cpu_cores: must be greater than 0, got -1.0 (database constraint "
        "ck_nodes_cpu_cores_positive)"
    )


def test_a_unique_violation_escaping_a_command_is_exit_2(
    fog: Fogctl, capsys: pytest.CaptureFixture[str]
) -> None:
    """A race lost to another writer: the IntegrityError surfaces in `session.run` itself."""

    async def work(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(USERS).values(id=uuid.uuid4(), username="alice"))

    with pytest.raises(typer.Exit) as exited:
        session.run(fog.db_url, work)
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err == (
        "fogctl: username: is taken: a user with this name already exists "
        "(database constraint uq_users_username)\n"
    )
