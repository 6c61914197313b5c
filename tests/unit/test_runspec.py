"""The run spec's hash and its host ports (controller/runspec.py): pure, no I/O."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from controller.model import Resources, spec_hash
from controller.runspec import (
    EMPTY_RUN,
    HealthSpec,
    PortSpec,
    RunSpec,
    VolumeSpec,
    host_path_refusal,
)

RES = Resources(cpu_cores=0.5, memory_mb=512, gpu_units=0, storage_gb=1)


def test_an_empty_spec_keeps_the_hash_replicas_were_started_with() -> None:
    # The formula before issue 14, spelled out: an upgrade must not roll every deployment.
    before = hashlib.sha256("\x1f".join(["web:1", "0.5", "512", "0", "1"]).encode()).hexdigest()
    assert spec_hash("web:1", RES) == before[:12]
    assert spec_hash("web:1", RES, EMPTY_RUN) == before[:12]
    assert spec_hash("web:1", RES, RunSpec()) == before[:12]


FULL = RunSpec(
    entrypoint=("/bin/sh", "-c"),
    command=("exec httpd",),
    env=(("A", "1"),),
    network="bridge",
    ports=(PortSpec(8080, 18080),),
    volumes=(VolumeSpec("/data", name="data"),),
    labels=(("team", "edge"),),
    stop_grace_seconds=10,
    healthcheck=HealthSpec(("CMD", "true"), interval_seconds=5),
    image_pull_secret="company",
)
VARIANTS = {
    "entrypoint": RunSpec(entrypoint=("/bin/sh",)),
    "command": RunSpec(command=("x",)),
    "env": RunSpec(env=(("A", "2"),)),
    "network": RunSpec(network="host"),
    "ports": RunSpec(ports=(PortSpec(8080, 18081),)),
    "volumes": RunSpec(volumes=(VolumeSpec("/data", name="other"),)),
    "labels": RunSpec(labels=(("team", "core"),)),
    "stop_grace_seconds": RunSpec(stop_grace_seconds=11),
    "healthcheck": RunSpec(healthcheck=HealthSpec(("CMD", "false"))),
    "image_pull_secret": RunSpec(image_pull_secret="mirror"),
}


def test_every_field_is_part_of_the_spec() -> None:
    hashes = {name: spec_hash("web:1", RES, run) for name, run in VARIANTS.items()}
    hashes["full"] = spec_hash("web:1", RES, FULL)
    hashes["empty"] = spec_hash("web:1", RES)
    assert len(set(hashes.values())) == len(hashes), hashes


_ENV = st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=4)


@given(_ENV, _ENV)
def test_two_different_envs_never_share_a_hash(a: dict[str, str], b: dict[str, str]) -> None:
    # The canonical form is JSON, not a join: a value holding a separator, a quote or an
    # `=` cannot make two different environments read alike.
    run_a, run_b = RunSpec(env=tuple(sorted(a.items()))), RunSpec(env=tuple(sorted(b.items())))
    assert (spec_hash("i", None, run_a) == spec_hash("i", None, run_b)) == (a == b)


def test_host_ports_follow_the_network() -> None:
    ports = (PortSpec(8080, 18080), PortSpec(53, None, "udp"))
    assert RunSpec(ports=ports).host_ports() == {(18080, "tcp")}
    assert RunSpec(network="bridge", ports=ports).host_ports() == {(18080, "tcp")}
    assert RunSpec(network="host", ports=ports).host_ports() == {(8080, "tcp"), (53, "udp")}
    assert RunSpec(network="none", ports=ports).host_ports() == frozenset()


def test_host_paths_only_under_an_allowed_directory() -> None:
    def run(path: str) -> RunSpec:
        return RunSpec(volumes=(VolumeSpec("/cfg", host_path=path),))

    assert host_path_refusal(run("/srv/fog/cfg"), ("/srv/fog",)) is None
    assert host_path_refusal(run("/srv/fog"), ("/srv/fog",)) is None
    refused = host_path_refusal(run("/"), ())
    assert refused == "host path / is not under FOG_ALLOWED_HOST_PATHS (none allowed)"
    assert host_path_refusal(run("/srv/fogger"), ("/srv/fog",)) is not None
    assert "'..'" in (host_path_refusal(run("/srv/fog/../../etc"), ("/srv/fog",)) or "")
    assert host_path_refusal(RunSpec(volumes=(VolumeSpec("/d", name="d"),)), ()) is None
