"""Each engine answer we have seen, classified: permanent (record the reason, do not hot-loop)
or transient (retry), with the engine's own words kept in the reason. The answers are the
texts real engines gave (Docker 20.10 overlay2 and vfs on ext4, Podman 4.3)."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from controller import errors
from controller.runtime.docker import translate


def answer(status: int, text: str) -> docker.errors.APIError:
    """An engine's HTTP answer as docker-py raises it (docker.errors.create_api_error_from_
    http_exception builds the same from a real response)."""
    response = requests.Response()
    response.status_code = status
    response.reason = "error"
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status} Server Error", response=response, explanation=text)


OVERLAY_SIZE = "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
VFS_SIZE = "Filesystem does not support, or has not enabled quotas"
GPU = 'could not select device driver "" with capabilities: [[gpu]]'
NO_EXEC = (
    "failed to create shim task: OCI runtime create failed: runc create failed: unable to "
    'start container process: exec: "nope": executable file not found in $PATH: unknown'
)


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (500, OVERLAY_SIZE),  # overlay2 on ext4, and Podman's words for the same
        (500, VFS_SIZE),  # vfs: was transient, retried forever
        (500, GPU),
        (500, NO_EXEC),
        (400, "invalid reference format: repository name must be lowercase"),
        (409, 'Conflict. The container name "/fog-1" is already in use'),
        (404, "No such image: fog-test/none:1"),
    ],
)
def test_answers_that_will_not_change_on_retry_are_permanent(status: int, text: str) -> None:
    failure = translate(answer(status, text), "create container")
    assert isinstance(failure, errors.PermanentError)
    assert failure.reason == f"create container: {text}"


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (500, "dial unix /run/containerd/containerd.sock: connect: connection refused"),
        (503, "engine is shutting down"),
        (429, "toomanyrequests: rate limit"),
        (408, "request timeout"),
    ],
)
def test_answers_that_may_pass_are_transient_with_the_engines_words(status: int, text: str) -> None:
    failure = translate(answer(status, text), "create container")
    assert isinstance(failure, errors.TransientError)
    assert failure.reason == f"create container: {text}"


def test_an_engine_that_does_not_answer_is_transient() -> None:
    failure = translate(requests.exceptions.ConnectionError("Connection refused"), "probe")
    assert isinstance(failure, errors.TransientError)
    assert failure.reason == "probe: engine unreachable: Connection refused"
