"""A failed pull is one of three answers an operator acts on differently: unauthorized (fix
the credential), not found (fix the image name), unreachable (fix the way to the registry).
The words are the ones real engines gave for a real registry (dockerd 20.10.24 and Podman
4.3.1 against distribution 2.8 with htpasswd auth, measured in tests/integration/
test_runtime_pull.py), and they stay in the reason."""

from __future__ import annotations

import pytest

from controller.runtime.engine_errors import PullFailure, pull_error, pull_failure_kind
from controller.runtime.engine_images import moving_tag

REG = "127.0.0.1:5000"
PODMAN_SOURCE = f"initializing source docker://{REG}/team/web:1: "
MEASURED = [
    # dockerd: an HTTP error, with its status
    ("unauthorized: authentication required", 500, PullFailure.UNAUTHORIZED),
    (
        f'Head "http://{REG}/v2/team/web/manifests/1": no basic auth credentials',
        500,
        PullFailure.UNAUTHORIZED,
    ),
    (
        f"manifest for {REG}/team/nothing:1 not found: manifest unknown: manifest unknown",
        404,
        PullFailure.NOT_FOUND,
    ),
    (
        f'Get "http://{REG}/v2/": dial tcp {REG}: connect: connection refused',
        500,
        PullFailure.UNREACHABLE,
    ),
    # Docker Hub hides a repository it will not show behind a credential
    (
        "pull access denied for nosuch/image, repository does not exist or may require "
        "'docker login': denied: requested access to the resource is denied",
        404,
        PullFailure.UNAUTHORIZED,
    ),
    (
        'Get "https://nosuch.example/v2/": dial tcp: lookup nosuch.example: no such host',
        500,
        PullFailure.UNREACHABLE,
    ),
    # Podman: HTTP 200, the error in the progress stream
    (
        PODMAN_SOURCE + f"reading manifest 1 in {REG}/team/web: unauthorized: "
        "authentication required",
        None,
        PullFailure.UNAUTHORIZED,
    ),
    (
        PODMAN_SOURCE + f"reading manifest 1 in {REG}/team/nothing: manifest unknown: "
        "manifest unknown",
        None,
        PullFailure.NOT_FOUND,
    ),
    (
        PODMAN_SOURCE + f'pinging container registry {REG}: Get "http://{REG}/v2/": dial tcp '
        f"{REG}: connect: connection refused",
        None,
        PullFailure.UNREACHABLE,
    ),
    (
        PODMAN_SOURCE + f'pinging container registry {REG}: Get "https://{REG}/v2/": http: '
        "server gave HTTP response to HTTPS client",
        None,
        PullFailure.UNREACHABLE,
    ),
]


@pytest.mark.parametrize(("words", "status", "kind"), MEASURED)
def test_each_measured_answer_is_told_apart(
    words: str, status: int | None, kind: PullFailure
) -> None:
    assert pull_failure_kind(words, status) is kind
    reason = pull_error(f"{REG}/team/web:1", words, with_credential=True, status=status).reason
    assert reason.startswith(f"image pull failed: {REG}/team/web:1: {kind.value}")
    assert reason.endswith(f": {words}")


def test_unauthorized_says_whether_a_credential_was_sent() -> None:
    words = "unauthorized: authentication required"
    sent = pull_error("i:1", words, with_credential=True).reason
    unsent = pull_error("i:1", words, with_credential=False).reason
    assert sent == f"image pull failed: i:1: unauthorized (credential refused): {words}"
    assert unsent == f"image pull failed: i:1: unauthorized (no credential given): {words}"


def test_an_answer_of_none_of_the_three_keeps_the_engines_words_alone() -> None:
    words = "invalid reference format: repository name must be lowercase"
    assert pull_failure_kind(words, 400) is None
    assert pull_error("A:1", words, with_credential=False).reason == (
        f"image pull failed: A:1: {words}"
    )


def test_the_status_decides_when_the_words_do_not() -> None:
    assert pull_failure_kind("something else", 404) is PullFailure.NOT_FOUND
    assert pull_failure_kind("something else", 401) is PullFailure.UNAUTHORIZED


@pytest.mark.parametrize(
    ("image", "moving"),
    [
        ("web", True),
        ("web:latest", True),
        (f"{REG}/team/web", True),
        (f"{REG}/team/web:latest", True),
        (f"{REG}/team/web:2", False),
        ("web@sha256:" + "a" * 64, False),
    ],
)
def test_only_latest_or_no_tag_is_pulled_when_present(image: str, moving: bool) -> None:
    assert moving_tag(image) is moving
