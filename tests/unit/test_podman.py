"""Where Podman's Docker API answers differently, read from answers recorded from real engines
(podman 4.3.1 `system service`, dockerd 20.10.24 on Debian 12), trimmed to the fields read."""

from __future__ import annotations

import uuid

from controller.events import EVENT_FILTERS, as_docker, event_filters, exit_of, parse
from controller.model import Resources
from controller.runtime import ContainerSpec
from controller.runtime.docker import (
    EngineFlavour,
    engine_flavour,
    unsupported_request,
)
from controller.runtime.podman import pull_failure

PODMAN_VERSION = {
    "Version": "4.3.1",
    "ApiVersion": "1.41",
    "Components": [
        {"Name": "Podman Engine", "Version": "4.3.1"},
        {"Name": "Conmon", "Version": "conmon version 2.1.6, commit: unknown"},
        {"Name": "OCI Runtime (runc)", "Version": "runc version 1.1.5+ds1"},
    ],
}
DOCKER_VERSION = {
    "Version": "20.10.24+dfsg1",
    "ApiVersion": "1.41",
    "Components": [
        {"Name": "Engine", "Version": "20.10.24+dfsg1"},
        {"Name": "containerd", "Version": "1.6.20~ds1"},
        {"Name": "runc", "Version": "1.1.5+ds1"},
        {"Name": "docker-init", "Version": "0.19.0"},
    ],
}

DEPLOYMENT = uuid.UUID("38804802-ea6c-487c-8d2d-6758007e54bc")
CONTAINER = "b04397a95a897184f842f96e1d6fe2d5932e3617c1567f4dc4c63f15c0a1abec"
_ATTRIBUTES = {
    "fog-test": "1",
    "fog.deployment-id": str(DEPLOYMENT),
    "fog.managed-by": "fog-controller",
    "image": "docker.io/fog-test/busybox:latest",
    "name": "fog-x1",
    "podId": "",
}
# A host SIGKILL of PID 1, then `docker rm -f`, on Podman (subscribed with `died`, `remove`).
PODMAN_DIE = {
    "status": "die",
    "id": CONTAINER,
    "from": "docker.io/fog-test/busybox:latest",
    "Type": "container",
    "Action": "die",
    "Actor": {
        "ID": CONTAINER,
        "Attributes": {**_ATTRIBUTES, "containerExitCode": "137", "exitCode": "137"},
    },
    "scope": "local",
    "time": 1796292728,
    "timeNano": 1796292728439763413,
}
PODMAN_REMOVE = {
    **PODMAN_DIE,
    "status": "remove",
    "Action": "remove",
    "Actor": {"ID": CONTAINER, "Attributes": {**_ATTRIBUTES, "containerExitCode": "0"}},
}
# `POST /images/create` of an unreachable registry: Podman answers 200, dockerd 500.
PODMAN_PULL_FAILED = (
    '{"progressDetail":{},"errorDetail":{"message":"initializing source '
    "docker://127.0.0.1:1/nope:1: pinging container registry 127.0.0.1:1: Get "
    '\\"https://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: connection refused"},'
    '"error":"initializing source docker://127.0.0.1:1/nope:1: pinging container registry '
    '127.0.0.1:1: Get \\"https://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: '
    'connection refused"}\n'
)
PULLED = (
    '{"status":"Pulling from library/busybox","id":"latest"}\r\n'
    '{"status":"Digest: sha256:0f4a"}\r\n'
    '{"status":"Status: Downloaded newer image for busybox:latest"}\r\n'
)


def test_the_engine_is_known_by_its_version_components() -> None:
    assert engine_flavour(PODMAN_VERSION) is EngineFlavour.PODMAN
    assert engine_flavour(DOCKER_VERSION) is EngineFlavour.DOCKER
    # An engine that lists no components (or odd ones) is spoken to as Docker.
    assert engine_flavour({"Version": "19.03"}) is EngineFlavour.DOCKER
    assert engine_flavour({"Components": [None, "Podman Engine"]}) is EngineFlavour.DOCKER


def test_podman_is_subscribed_to_with_its_own_event_names() -> None:
    podman = event_filters(EngineFlavour.PODMAN)
    assert set(podman["event"]) == {"died", "start", "restart", "remove", "health_status"}
    assert {k: v for k, v in podman.items() if k != "event"} == {
        k: v for k, v in EVENT_FILTERS.items() if k != "event"
    }
    assert event_filters(EngineFlavour.DOCKER) == dict(EVENT_FILTERS)


def test_podman_events_read_as_dockers() -> None:
    died = as_docker(PODMAN_DIE, EngineFlavour.PODMAN)
    assert parse(died) == (DEPLOYMENT, "die")
    assert exit_of(died) == (CONTAINER, 137)

    removed = as_docker(PODMAN_REMOVE, EngineFlavour.PODMAN)
    assert parse(removed) == (DEPLOYMENT, "destroy")
    assert exit_of(removed) is None
    assert PODMAN_REMOVE["Action"] == "remove"  # the recorded answer is left as it was

    # Podman's names mean nothing special on Docker.
    assert as_docker(PODMAN_REMOVE, EngineFlavour.DOCKER) is PODMAN_REMOVE


def test_gpu_requests_are_refused_on_podman_only() -> None:
    def spec(gpu_units: int) -> ContainerSpec:
        return ContainerSpec(
            uuid.uuid4(),
            DEPLOYMENT,
            "fog-test/busybox:latest",
            Resources(cpu_cores=0.5, memory_mb=512, gpu_units=gpu_units, storage_gb=1),
        )

    reason = unsupported_request(EngineFlavour.PODMAN, spec(1))
    assert reason is not None
    assert "GPU request (1 units) on a Podman node" in reason
    assert unsupported_request(EngineFlavour.PODMAN, spec(0)) is None
    assert unsupported_request(EngineFlavour.DOCKER, spec(1)) is None


def test_a_pull_that_failed_in_its_stream_says_why() -> None:
    failure = pull_failure(PODMAN_PULL_FAILED)
    assert failure is not None
    assert failure.startswith("initializing source docker://127.0.0.1:1/nope:1")
    assert "connection refused" in failure
    assert pull_failure(PODMAN_PULL_FAILED.encode()) == failure
    assert pull_failure(PULLED) is None
    assert pull_failure("") is None
    assert pull_failure("not json") is None
