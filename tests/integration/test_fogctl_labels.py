"""Node labels through fogctl (issue 15): `node add --label`, `node label NAME k=v k-` and
`get nodes --show-labels`, on PostgreSQL and SQLite.

The row is read back with plain SQL after every command, so a test cannot pass on a write and
a read that are wrong the same way. The controller's own `fog.io/` labels live in the same
JSON object; they are written here as the controller would, and an operator's edit must leave
them as they were.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.fogctl import queries
from controller.fogctl.node_labels import LabelEdit
from controller.readmodel import NODES
from schema.engine import writer
from tests.integration.test_fogctl import FogctlInProcess, FogctlProcess, sql

ENGINE_LABELS = {"fog.io/arch": "arm64", "fog.io/os": "linux", "fog.io/engine": "docker"}


def labels_of(db_url: str, name: str) -> dict[str, Any]:
    async def q(conn: AsyncConnection) -> dict[str, Any]:
        n = NODES
        value = (await conn.execute(select(n.c.labels).where(n.c.name == name))).scalar_one()
        assert isinstance(value, dict)
        return value

    return sql(db_url, q)


def set_labels(db_url: str, name: str, labels: dict[str, Any]) -> None:
    """What the controller's probe (or an operator's SQL) writes into the column."""

    async def q(conn: AsyncConnection) -> None:
        n = NODES
        await conn.execute(update(n).where(n.c.name == name).values(labels=labels))

    sql(db_url, q)


@pytest.fixture
def fog(db_url: str) -> FogctlInProcess:
    return FogctlInProcess(db_url)


def add(fog: FogctlProcess, name: str, *labels: str) -> None:
    args = [a for label in labels for a in ("--label", label)]
    fog.ok("node", "add", name, "--docker-url", f"tcp://{name}:2375", *args)


def test_node_label_sets_replaces_and_removes_keeping_the_controllers_labels(
    fog: FogctlInProcess,
) -> None:
    add(fog, "n1", "zone=a", "gpu=yes")
    assert labels_of(fog.db_url, "n1") == {"zone": "a", "gpu": "yes"}
    set_labels(fog.db_url, "n1", {"zone": "a", "gpu": "yes", **ENGINE_LABELS})

    out = fog.ok("node", "label", "n1", "zone=b", "tier=edge", "gpu-")
    assert out == "node/n1 labeled (tier=edge added, zone=b (was a), gpu removed (was yes))\n"
    assert labels_of(fog.db_url, "n1") == {"zone": "b", "tier": "edge", **ENGINE_LABELS}

    # Setting what is set already, and removing what is not there, change nothing.
    same = fog.ok("node", "label", "n1", "zone=b", "gpu-")
    assert same == "node/n1 unchanged (gpu was not set)\n"
    assert labels_of(fog.db_url, "n1") == {"zone": "b", "tier": "edge", **ENGINE_LABELS}

    # An empty value is a value (Kubernetes allows it), not a removal.
    assert fog.ok("node", "label", "n1", "tier=") == "node/n1 labeled (tier= (was edge))\n"
    assert labels_of(fog.db_url, "n1")["tier"] == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["fog.io/arch=amd64"],
            "label fog.io/arch=amd64: fog.io/ labels are set by the controller from the engine",
            id="reserved-set",
        ),
        pytest.param(
            ["fog.io/engine-"],
            "label fog.io/engine-: fog.io/ labels are set by the controller from the engine",
            id="reserved-remove",
        ),
        pytest.param(
            ["zone=a b"],
            "label zone=a b: value 'a b' must consist of letters, digits, '-', '_' or '.', "
            "and start and end with a letter or digit",
            id="bad-value",
        ),
        pytest.param(
            ["Example.COM/zone=a"],
            "label Example.COM/zone=a: key 'Example.COM/zone': the prefix must be a DNS "
            "subdomain (lower-case, dots between)",
            id="bad-prefix",
        ),
        pytest.param(
            ["zone=a", "zone-"],
            "label zone-: key 'zone' is given more than once",
            id="set-and-remove",
        ),
        pytest.param(
            ["zone"], "label: must be KEY=VALUE (set) or KEY- (remove), got 'zone'", id="no-equals"
        ),
    ],
)
def test_node_label_refuses_bad_labels_and_writes_nothing(
    fog: FogctlInProcess, args: list[str], message: str
) -> None:
    add(fog, "n1", "zone=a")
    set_labels(fog.db_url, "n1", {"zone": "a", **ENGINE_LABELS})
    bad = fog("node", "label", "n1", *args)
    assert (bad.returncode, bad.stderr) == (2, f"fogctl: {message}\n")
    assert labels_of(fog.db_url, "n1") == {"zone": "a", **ENGINE_LABELS}


def test_node_label_reports_every_bad_label_and_a_missing_node(fog: FogctlInProcess) -> None:
    add(fog, "n1")
    bad = fog("node", "label", "n1", "zone!=a", "fog.io/os=linux", "ok=1")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "fogctl: label zone!=a: key 'zone!': name 'zone!' must consist of letters, digits, "
        "'-', '_' or '.', and start and end with a letter or digit",
        "fogctl: label fog.io/os=linux: fog.io/ labels are set by the controller from the engine",
    ]
    assert labels_of(fog.db_url, "n1") == {}
    missing = fog("node", "label", "nope", "zone=a")
    assert (missing.returncode, missing.stderr) == (1, "fogctl: node 'nope' not found\n")


@pytest.mark.parametrize(
    ("label", "message"),
    [
        pytest.param(
            "fog.io/arch=arm64",
            "--label fog.io/arch=arm64: fog.io/ labels are set by the controller from the engine",
            id="reserved",
        ),
        pytest.param(
            "zone=" + "a" * 64,
            f"--label zone={'a' * 64}: value must be at most 63 characters, got 64",
            id="long-value",
        ),
        pytest.param("=a", "--label =a: key '': name must not be empty", id="empty-key"),
    ],
)
def test_node_add_checks_label_syntax(fog: FogctlInProcess, label: str, message: str) -> None:
    bad = fog("node", "add", "n1", "--docker-url", "tcp://n1:2375", "--label", label)
    assert (bad.returncode, bad.stderr) == (2, f"fogctl: {message}\n")
    assert fog.json("get", "nodes") == []
    twice = fog(
        "node", "add", "n1", "--docker-url", "tcp://n1:2375", "-l", "zone=a", "-l", "zone=b"
    )
    assert (twice.returncode, twice.stderr) == (
        2,
        "fogctl: --label zone=b: key 'zone' is given more than once\n",
    )
    assert fog.json("get", "nodes") == []


def test_get_nodes_show_labels_adds_a_labels_column(fog: FogctlInProcess) -> None:
    add(fog, "n1", "zone=a", "tier=edge")
    add(fog, "n2")
    set_labels(fog.db_url, "n2", {"fog.io/arch": "amd64"})
    plain = fog.ok("get", "nodes").splitlines()
    assert "LABELS" not in plain[0]
    shown = fog.ok("get", "nodes", "--show-labels").splitlines()
    assert shown[0].split()[-1] == "LABELS"
    assert [line.split()[-1] for line in shown[1:]] == ["tier=edge,zone=a", "fog.io/arch=amd64"]
    # -o wide has the column once, last, as kubectl's `-o wide --show-labels`.
    wide = fog.ok("get", "nodes", "-o", "wide", "--show-labels").splitlines()
    assert wide[0].split().count("LABELS") == 1
    assert wide[0].split()[-1] == "LABELS"
    assert wide[1].split()[-1] == "tier=edge,zone=a"
    assert fog.json("get", "nodes", "n1")[0]["labels"] == {"tier": "edge", "zone": "a"}


def test_node_label_through_the_installed_script(db_url: str) -> None:
    fog = FogctlProcess(db_url)
    add(fog, "n1", "zone=a")
    assert fog.ok("node", "label", "n1", "zone=b", "site=north") == (
        "node/n1 labeled (site=north added, zone=b (was a))\n"
    )
    assert labels_of(db_url, "n1") == {"zone": "b", "site": "north"}
    refused = fog("node", "label", "n1", "fog.io/arch=arm64")
    assert refused.returncode == 2
    assert "fog.io/ labels are set by the controller from the engine" in refused.stderr
    assert labels_of(db_url, "n1") == {"zone": "b", "site": "north"}


async def test_two_label_edits_at_once_both_land(pg_engine: AsyncEngine) -> None:
    """The lost update the row lock prevents: edit B reads the labels while edit A has not
    committed yet; without `FOR UPDATE`, B would then write its merge over A's and drop A's
    key. PostgreSQL only: SQLite's write transactions never overlap."""
    async with writer(pg_engine).begin() as conn:
        await conn.execute(insert(NODES).values(id=uuid.uuid4(), name="n1", docker_url="tcp://n1"))
    a = await writer(pg_engine).connect()
    await a.begin()
    await queries.label_node(a, "n1", LabelEdit({"zone": "a"}))

    async def edit_b() -> None:
        async with writer(pg_engine).begin() as b:
            await queries.label_node(b, "n1", LabelEdit({"tier": "edge"}))

    b_task = asyncio.create_task(edit_b())

    async def b_waits_on_a_lock() -> bool:
        async with pg_engine.connect() as probe:
            waiting = await probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )
            return bool(waiting.scalar_one())

    deadline = asyncio.get_running_loop().time() + 10
    while not await b_waits_on_a_lock():
        assert asyncio.get_running_loop().time() < deadline, "edit B never waited for A"
        await asyncio.sleep(0.02)
    await a.commit()
    await a.close()
    await asyncio.wait_for(b_task, 10)

    async with pg_engine.connect() as conn:
        stored = (await conn.execute(select(NODES.c.labels))).scalar_one()
    assert stored == {"zone": "a", "tier": "edge"}


@pytest.mark.parametrize("raw", ["[1]", '"zone=a"'])
def test_labels_that_are_no_json_object_are_shown_not_a_traceback(
    fog: FogctlInProcess, raw: str
) -> None:
    """Plain SQL can write any JSON into nodes.labels: listing still works and says so, and a
    label edit refuses to guess what the operator meant."""
    add(fog, "n1", "zone=a")
    add(fog, "n2", "zone=b")

    async def q(conn: AsyncConnection) -> None:
        await conn.execute(
            text("UPDATE nodes SET labels = CAST(:raw AS JSON) WHERE name = 'n1'")
            if fog.db_url.startswith("postgresql")
            else text("UPDATE nodes SET labels = :raw WHERE name = 'n1'"),
            {"raw": raw},
        )

    sql(fog.db_url, q)
    shown = fog.ok("get", "nodes", "--show-labels").splitlines()
    assert [line.split()[0] for line in shown[1:]] == ["n1", "n2"]
    assert shown[1].endswith("<not a JSON object>")
    assert shown[2].split()[-1] == "zone=b"
    [listed] = fog.json("get", "nodes", "n1")
    assert (listed["labels"], listed["labels_problem"]) == ({}, "<not a JSON object>")

    refused = fog("node", "label", "n1", "zone=c")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"fogctl: node 'n1': its labels column holds {raw!r}, not a JSON object: set it to {{}} "
        "(or an object) with SQL first\n"
    )
    assert fog.ok("node", "label", "n2", "zone=c") == "node/n2 labeled (zone=c (was b))\n"
    assert labels_of(fog.db_url, "n2") == {"zone": "c"}
