"""A deployment's `placement` through fogctl (issue 15): apply, `get -o yaml` and its round
trip, describe, unchanged detection and refusals, on PostgreSQL and SQLite.

The installed script runs the key flow (apply, get -o yaml, apply of that output); the
variants run in-process. What fogctl wrote is read back with plain SQL from
`deployment_specs` (spread_by, max_per_node, rebalance) and `deployment_node_selectors`, and
the generation (the database's own count) tells whether the controller is asked to act.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from schema import api
from tests.integration.test_fogctl import WEB, FogctlInProcess, FogctlProcess, with_users
from tests.integration.test_fogctl_cluster import refused_apply
from tests.integration.test_fogctl_spec import generation, rows, web_id

PLACEMENT = """\
placement:
  node_selector: {zone: a, fog.io/arch: arm64}
  spread_by: zone
  max_per_node: 1
  rebalance: false
"""


@pytest.fixture
def fog(db_url: str) -> FogctlProcess:
    return with_users(FogctlInProcess(db_url))


def placement_rows(db_url: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """alice's web: its placement columns and its selector pairs, as stored."""
    deployment = web_id(db_url)
    specs = rows(
        db_url,
        "SELECT spread_by, max_per_node, rebalance FROM deployment_specs WHERE deployment_id = :id",
        id=deployment,
    )
    for spec in specs:
        spec["rebalance"] = bool(spec["rebalance"])  # SQLite reads a BOOLEAN as 0/1
    selectors = rows(
        db_url,
        "SELECT key, value FROM deployment_node_selectors WHERE deployment_id = :id ORDER BY key",
        id=deployment,
    )
    return specs, [(r["key"], r["value"]) for r in selectors]


STORED = (
    [{"spread_by": "zone", "max_per_node": 1, "rebalance": False}],
    [("fog.io/arch", "arm64"), ("zone", "a")],
)


def test_placement_applies_and_its_yaml_applies_back_unchanged(db_url: str) -> None:
    fog = with_users(FogctlProcess(db_url))
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB + PLACEMENT) == (
        "deployment/web created\n"
    )
    assert placement_rows(db_url) == STORED
    before = generation(db_url)

    exported = fog.ok("get", "deployment", "web", "-o", "yaml", user="alice")
    [document] = yaml.safe_load(exported)
    assert document["placement"] == {
        "node_selector": {"fog.io/arch": "arm64", "zone": "a"},
        "spread_by": "zone",
        "max_per_node": 1,
        "rebalance": False,
    }
    assert fog.ok("apply", "-f", "-", user="alice", stdin=yaml.safe_dump(document)) == (
        "deployment/web unchanged\n"
    )
    assert generation(db_url) == before
    assert placement_rows(db_url) == STORED


def test_changing_the_placement_is_configured_and_a_new_generation(fog: FogctlProcess) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB + PLACEMENT)
    before = generation(fog.db_url)
    # The same selector written in another order is the same selector.
    reordered = PLACEMENT.replace("{zone: a, fog.io/arch: arm64}", "{fog.io/arch: arm64, zone: a}")
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB + reordered) == (
        "deployment/web unchanged\n"
    )
    assert generation(fog.db_url) == before

    changed = PLACEMENT.replace("zone: a,", "zone: b,").replace(
        "max_per_node: 1", "max_per_node: 2"
    )
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB + changed) == (
        "deployment/web configured (placement)\n"
    )
    assert generation(fog.db_url) > before
    assert placement_rows(fog.db_url) == (
        [{"spread_by": "zone", "max_per_node": 2, "rebalance": False}],
        [("fog.io/arch", "arm64"), ("zone", "b")],
    )

    # Left out, the placement goes back to "anywhere, rebalance on"; the row stays (other spec
    # columns and purge_volumes live there) with the placement columns at their defaults.
    before = generation(fog.db_url)
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB) == (
        "deployment/web configured (placement)\n"
    )
    assert generation(fog.db_url) > before
    assert placement_rows(fog.db_url) == (
        [{"spread_by": None, "max_per_node": None, "rebalance": True}],
        [],
    )
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB) == "deployment/web unchanged\n"


def test_no_placement_writes_no_spec_row(fog: FogctlProcess) -> None:
    """The defaults (anywhere, rebalance on) are what no row means: nothing to store."""
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    assert placement_rows(fog.db_url) == ([], [])
    spelled_out = "placement: {node_selector: {}, rebalance: true}\n"
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB + spelled_out) == (
        "deployment/web unchanged\n"
    )
    assert placement_rows(fog.db_url) == ([], [])
    # A selector alone is child rows only: the columns keep their defaults, so no spec row.
    selector_only = "placement: {node_selector: {zone: a}}\n"
    assert fog.ok("apply", "-f", "-", user="alice", stdin=WEB + selector_only) == (
        "deployment/web configured (placement)\n"
    )
    assert placement_rows(fog.db_url) == ([], [("zone", "a")])


def test_describe_shows_the_placement(fog: FogctlProcess) -> None:
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB)
    plain = fog.ok("describe", "deployment", "web", user="alice")
    assert "Placement:    any node (rebalance on)" in plain.splitlines()
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB + PLACEMENT)
    lines = fog.ok("describe", "deployment", "web", user="alice").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Placement:"))
    assert [line.split(None, 1)[-1] if i == 0 else line.strip()
            for i, line in enumerate(lines[at:at + 4])] == [
        "nodes with fog.io/arch=arm64,zone=a",
        "spread over the values of zone (skew at most 1)",
        "at most 1 per node",
        "rebalance off",
    ]  # fmt: skip
    described = fog.json("describe", "deployment", "web", user="alice")
    assert described["placement"]["max_per_node"] == 1


_SYNTAX = (
    "must consist of letters, digits, '-', '_' or '.', and start and end with a letter or digit"
)


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        pytest.param(
            "placement: {max_per_node: 0}",
            "placement.max_per_node: must be at least 1 (or left out: no cap), got 0",
            id="max-per-node-zero",
        ),
        pytest.param(
            "placement: {max_per_node: many}",
            "placement.max_per_node: must be at least 1 (or left out: no cap), got 'many'",
            id="max-per-node-text",
        ),
        pytest.param(
            "placement: {spread_by: 'Zone!'}",
            "placement.spread_by: spread_by must be a label key: key 'Zone!': "
            f"name 'Zone!' {_SYNTAX}",
            id="spread-by-syntax",
        ),
        pytest.param(
            "placement: {node_selector: {zone: 'a b'}}",
            f"placement.node_selector.zone: node selector zone: value 'a b' {_SYNTAX}",
            id="selector-value-syntax",
        ),
        pytest.param(
            "placement: {node_selector: {'-zone': a}}",
            f"placement.node_selector.-zone: node selector key '-zone': name '-zone' {_SYNTAX}",
            id="selector-key-syntax",
        ),
        pytest.param(
            "placement: {zone: a}",
            "placement.zone: unknown field (allowed: node_selector, spread_by, max_per_node, "
            "rebalance)",
            id="unknown-field",
        ),
    ],
)
def test_bad_placement_is_refused_before_anything_is_written(
    fog: FogctlProcess, placement: str, message: str
) -> None:
    bad = fog("apply", "-f", "-", user="alice", stdin=WEB + placement + "\n")
    assert bad.returncode == 2
    assert bad.stderr == f"fogctl: <stdin>: {message}\n"
    assert fog.json("get", "deploy", user="alice") == []


def test_the_database_refuses_a_placement_that_slipped_past_validation(
    fog: FogctlProcess,
) -> None:
    """A rule the Pydantic layer did not catch (another client, a race): the operator still
    reads the field of the apply file and exit 2, and nothing is written."""
    valid = api.DeploymentCreate.model_validate(yaml.safe_load(WEB + "placement: {}\n"))
    bad = valid.model_copy(
        update={"placement": valid.placement.model_construct(max_per_node=0, node_selector={})}
    )
    refused = refused_apply(fog.db_url, bad)
    assert refused.message == (
        "placement.max_per_node: must be at least 1 (or left out: no cap), got 0 "
        "(database constraint ck_deployment_specs_max_per_node_positive)"
    )
    assert refused.exit_code == 2
    assert fog.json("get", "deploy", user="alice") == []
