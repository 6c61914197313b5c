"""The pure parts of fogctl's container spec: which parts an apply changes, how describe words
the spec, and which keys of an exported document apply ignores. No database here."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.fogctl import documents, spec_queries, spec_text
from controller.fogctl.errors import InputError
from schema import api

BASE: dict[str, Any] = {
    "name": "web",
    "container_image": "nginx:1.27",
    "resources": {"cpu_cores": 0.5, "memory_mb": 512, "storage_gb": 1},
}
FULL: dict[str, Any] = BASE | {
    "entrypoint": ["/bin/sh", "-c"],
    "command": ["exec httpd -f -p 8080"],
    "env": {"LOG_LEVEL": "debug", "SITE": "north"},
    "network": "bridge",
    "ports": [
        {"container_port": 8080, "host_port": 18080},
        {"container_port": 53, "protocol": "udp"},
        {"container_port": 53, "host_port": 5353},
    ],
    "volumes": [
        {"name": "data", "mount_path": "/data"},
        {"host_path": "/srv/cfg", "mount_path": "/cfg", "read_only": True},
    ],
    "labels": {"team": "edge"},
    "stop_grace_seconds": 10,
    "healthcheck": {"command": ["CMD", "true"], "interval_seconds": 5, "retries": 3},
    "image_pull_secret": "company-registry",
    "placement": {
        "node_selector": {"zone": "a", "fog.io/arch": "arm64"},
        "spread_by": "zone",
        "max_per_node": 1,
    },
}


def wanted(doc: dict[str, Any]) -> api.DeploymentSpecResponse:
    return spec_queries.wanted(api.DeploymentCreate.model_validate(doc))


@given(st.permutations(range(3)), st.permutations(range(2)), st.booleans())
def test_the_order_of_ports_volumes_env_and_selector_is_no_change(
    ports: list[int], volumes: list[int], reverse: bool
) -> None:
    def maybe_reversed(values: dict[str, str]) -> dict[str, str]:
        return dict(reversed(values.items())) if reverse else values

    placement = FULL["placement"]
    shuffled = FULL | {
        "ports": [FULL["ports"][i] for i in ports],
        "volumes": [FULL["volumes"][i] for i in volumes],
        "env": maybe_reversed(FULL["env"]),
        "placement": placement | {"node_selector": maybe_reversed(placement["node_selector"])},
    }
    assert spec_queries.changed_parts(wanted(FULL), wanted(shuffled)) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("entrypoint", ["-c", "/bin/sh"]),  # argv order is meaning
        ("command", None),
        ("env", {"LOG_LEVEL": "debug", "SITE": "south"}),
        ("network", "host"),
        ("ports", [{"container_port": 8080, "host_port": 18081}]),
        ("volumes", [{"name": "data", "mount_path": "/data", "read_only": True}]),
        ("labels", {}),
        ("stop_grace_seconds", 0),
        ("healthcheck", {"command": ["CMD", "true"], "interval_seconds": 6, "retries": 3}),
        ("image_pull_secret", None),
        ("placement", FULL["placement"] | {"node_selector": {"zone": "a"}}),
        ("placement", FULL["placement"] | {"spread_by": None}),
        ("placement", FULL["placement"] | {"max_per_node": 2}),
        ("placement", FULL["placement"] | {"rebalance": False}),
    ],
)
def test_one_changed_field_is_that_part_alone(field: str, value: object) -> None:
    assert spec_queries.changed_parts(wanted(FULL), wanted(FULL | {field: value})) == [field]


def test_left_out_fields_are_every_part_changed() -> None:
    assert spec_queries.changed_parts(wanted(FULL), wanted(BASE)) == list(spec_queries.PARTS)
    assert spec_queries.changed_parts(wanted(BASE), spec_queries.EMPTY) == []


def test_describe_words_an_unset_spec_by_whose_default_applies() -> None:
    assert dict(spec_text.rows(api.DeploymentSpecResponse())) == {
        "Entrypoint:": "<image's>",
        "Command:": "<image's>",
        "Env:": "<none>",
        "Network:": "<node default>",
        "Ports:": "<none>",
        "Volumes:": "<none>",
        "Labels:": "<none>",
        "Stop grace:": "<controller default>",
        "Healthcheck:": "<image's>",
        "Pull secret:": "<none>",
        "Placement:": "any node (rebalance on)",
    }


def test_describe_words_a_full_spec() -> None:
    shown = dict(spec_text.rows(wanted(FULL)))
    assert shown["Entrypoint:"] == "/bin/sh -c"
    assert shown["Command:"] == "'exec httpd -f -p 8080'"
    assert shown["Ports:"] == (
        "8080/tcp -> host port 18080\n53/udp (not published)\n53/tcp -> host port 5353"
    )
    assert shown["Healthcheck:"] == "CMD true (every 5s, 3 retries)"
    assert shown["Stop grace:"] == "10s"
    assert shown["Placement:"] == (
        "nodes with fog.io/arch=arm64,zone=a\n"
        "spread over the values of zone (skew at most 1)\n"
        "at most 1 per node\n"
        "rebalance on"
    )


@pytest.mark.parametrize(
    ("placement", "text"),
    [
        pytest.param({"rebalance": False}, "any node (rebalance off)", id="rebalance-off"),
        pytest.param(
            {"max_per_node": 3}, "any node\nat most 3 per node\nrebalance on", id="cap-only"
        ),
        pytest.param(
            {"node_selector": {"gpu": ""}}, "nodes with gpu=\nrebalance on", id="empty-value"
        ),
    ],
)
def test_describe_words_each_placement_rule(placement: dict[str, Any], text: str) -> None:
    assert dict(spec_text.rows(wanted(BASE | {"placement": placement})))["Placement:"] == text


def test_an_exported_documents_read_only_keys_are_ignored_but_not_in_a_hand_written_one() -> None:
    exported = FULL | {"id": "0b6c...", "status": "running", "replicas": [], "generation": 3}
    [doc] = documents.validate([("get.yaml", exported)])
    assert doc.spec == api.DeploymentCreate.model_validate(FULL)
    with pytest.raises(InputError) as refused:
        documents.validate([("web.yaml", BASE | {"replicas": 3})])
    assert "web.yaml: replicas: unknown field" in refused.value.message
