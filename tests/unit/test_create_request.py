"""What a create asks the engine for, from a deployment's run spec: each field of the spec
reaches docker-py's arguments as the engine reads it, and a spec that sets nothing asks for
nothing beyond today's hardening (an image-only deployment creates as before)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.model import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, Resources
from controller.runspec import HealthSpec, PortSpec, RunSpec, VolumeSpec
from controller.runtime import ContainerSpec
from controller.runtime.create_request import (
    LABEL_VOLUME,
    container_options,
    healthcheck,
    host_options,
    port_bindings,
    volume_labels,
    volume_name,
)
from controller.settings import Settings

DEPLOYMENT = uuid.UUID("00000000-0000-0000-0000-0000000000d1")
REPLICA = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
SECOND = 1_000_000_000


def settings(network: str = "") -> Settings:
    return Settings(database_url="sqlite+aiosqlite:///unused.db", container_network=network)


def spec(run: RunSpec) -> ContainerSpec:
    return ContainerSpec(
        REPLICA, DEPLOYMENT, "fog-test/busybox:1", Resources(0.5, 64, 0, 0), run=run
    )


FULL = RunSpec(
    entrypoint=("/bin/sh", "-c"),
    command=("exec httpd -f -p 8080",),
    env=(("LOG_LEVEL", "debug"), ("SITE", "north")),
    network="bridge",
    ports=(PortSpec(8080, 18080, "tcp"), PortSpec(9090, None, "udp")),
    volumes=(
        VolumeSpec("/cfg", host_path="/srv/fog/cfg", read_only=True),
        VolumeSpec("/data", name="data"),
    ),
    labels=(("team", "edge"),),
    stop_grace_seconds=10,
    healthcheck=HealthSpec(("CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"), 5, 2, 3, 10),
)


def test_a_full_spec_reaches_every_create_argument() -> None:
    options = container_options(settings(), spec(FULL))
    assert options["entrypoint"] == ["/bin/sh", "-c"]
    assert options["command"] == ["exec httpd -f -p 8080"]
    assert options["environment"] == ["LOG_LEVEL=debug", "SITE=north"]
    assert options["ports"] == [(8080, "tcp"), (9090, "udp")]
    assert options["stop_timeout"] == 10
    assert options["labels"]["team"] == "edge"
    assert dict(options["healthcheck"]) == {
        "Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"],
        "Interval": 5 * SECOND,
        "Timeout": 2 * SECOND,
        "Retries": 3,
        "StartPeriod": 10 * SECOND,
    }

    host = host_options(settings("none"), spec(FULL), with_storage=False)
    assert host["network_mode"] == "bridge"  # the deployment's network wins over the node's
    assert host["port_bindings"] == {"8080/tcp": [18080], "9090/udp": [None]}
    assert [dict(m) for m in host["mounts"]] == [
        {"Target": "/cfg", "Source": "/srv/fog/cfg", "Type": "bind", "ReadOnly": True},
        {
            "Target": "/data",
            "Source": volume_name(DEPLOYMENT, "data"),
            "Type": "volume",
            "ReadOnly": False,
        },
    ]


def test_an_empty_spec_asks_only_for_what_an_image_only_deployment_asked() -> None:
    options = container_options(settings(), spec(RunSpec()))
    assert set(options) == {"image", "name", "labels", "detach"}
    host = host_options(settings(), spec(RunSpec()), with_storage=False)
    assert set(host) == {
        "restart_policy",
        "security_opt",
        "privileged",
        "pids_limit",
        "nano_cpus",
        "mem_limit",
    }
    assert (
        host_options(settings("none"), spec(RunSpec()), with_storage=False)["network_mode"]
        == "none"
    )


@pytest.mark.parametrize("network", ["host", "none"])
def test_nothing_is_published_where_the_container_holds_no_port_of_its_own(network: str) -> None:
    run = RunSpec(network=network, ports=(PortSpec(8080, 18080),))
    assert "port_bindings" not in host_options(settings(), spec(run), with_storage=False)
    assert "ports" not in container_options(settings(), spec(run))


def test_the_node_network_decides_when_the_spec_names_none() -> None:
    run = RunSpec(ports=(PortSpec(8080, 18080),))
    assert port_bindings("host", run) == {}
    assert port_bindings("", run) == {"8080/tcp": [18080]}


def test_one_container_port_published_twice_keeps_both_host_ports() -> None:
    run = RunSpec(ports=(PortSpec(80, 8080), PortSpec(80, 8081)))
    assert port_bindings("bridge", run) == {"80/tcp": [8080, 8081]}


def test_healthcheck_fields_left_unset_keep_the_engines_defaults() -> None:
    check = healthcheck(HealthSpec(("CMD", "true"), interval_seconds=0.5))
    assert dict(check) == {"Test": ["CMD", "true"], "Interval": SECOND // 2}


def test_a_named_volume_is_the_deployments_with_our_labels() -> None:
    assert volume_name(DEPLOYMENT, "data") == f"fog-{DEPLOYMENT}-data"
    assert volume_labels(DEPLOYMENT, "data") == {
        LABEL_MANAGED_BY: "fog-controller",
        LABEL_DEPLOYMENT: str(DEPLOYMENT),
        LABEL_VOLUME: "data",
    }


@given(
    replicas=st.lists(st.uuids(), min_size=2, max_size=5, unique=True),
    name=st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
)
def test_every_replica_of_a_deployment_mounts_the_same_volume(
    replicas: list[uuid.UUID], name: str
) -> None:
    run = RunSpec(volumes=(VolumeSpec("/data", name=name),))
    sources = {
        host_options(
            settings(), ContainerSpec(r, DEPLOYMENT, "i:1", None, run=run), with_storage=False
        )["mounts"][0]["Source"]
        for r in replicas
    }
    assert sources == {volume_name(DEPLOYMENT, name)}
    assert volume_name(uuid.uuid4(), name) not in sources
