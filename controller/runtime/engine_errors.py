"""Docker's answers as the controller's two error kinds, in the engine's own words.

A 5xx the engine will give again (a driver missing, an option its storage refuses) is
permanent, so it is recorded instead of retried; a TLS failure names the side that refused
and the file to check, never the key material. A failed pull is one of three answers
(unauthorized, not found, unreachable), told apart by the registry's words.
"""

from __future__ import annotations

import re
import ssl
from enum import StrEnum
from pathlib import PurePath

import docker.errors
import requests.exceptions

from controller import errors
from controller.runtime import tls

# The engine answers 500 for many errors that will never go away on retry (seen on Docker
# 20.10: a GPU request on a node without the driver, an unsupported storage option (overlay2
# and Podman: "--storage-opt is supported only for overlay over xfs with 'pquota' mount
# option"; vfs: "Filesystem does not support, or has not enabled quotas"), a command missing
# from the image). These markers make such a 500 permanent. Whether a node can cap disk is not
# read from these words (see controller.storage); they only stop a hot retry loop.
_PERMANENT_SERVER_ERRORS = (
    "could not select device driver",
    "storage-opt",
    "quotas",
    "does not support",
    "oci runtime",
    "executable file not found",
    "no such file or directory",
    "invalid",
    "not supported",
    "permission denied",
)


# OpenSSL reasons that mean "an operator must change a certificate, a key or the URL":
# retrying would fail the same way. Other TLS errors (an EOF mid-handshake from an engine
# going down) stay transient.
_TLS_PEER_REFUSED = ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE")
_TLS_PERMANENT = (
    "CERTIFICATE_VERIFY_FAILED",
    *_TLS_PEER_REFUSED,
    "ALERT_ACCESS_DENIED",
    "ALERT_HANDSHAKE_FAILURE",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "KEY_VALUES_MISMATCH",
    "NO_START_LINE",
    "PEM",
)
_SSL_NOISE = re.compile(r"^\[SSL(?:: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)$")


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The OpenSSL error under requests' and urllib3's wrappers (in causes, in args, or in
    urllib3's `reason`), if a TLS failure is what this is."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return item
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return None


def _tls_failure(found: ssl.SSLError, what: str, certs: PurePath | None) -> errors.ControllerError:
    """A readable reason for a TLS failure, naming the file to check (never its content)."""
    code = str(found.reason or "")
    text = _SSL_NOISE.sub("", str(found.args[1] if len(found.args) > 1 else found))
    where = f"{certs}/" if certs is not None else "the node's certificate directory"
    if isinstance(found, ssl.SSLCertVerificationError) or code == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(found, "verify_message", None) or text
        return errors.PermanentError(
            f"{what}: TLS: the engine's certificate was not accepted ({detail}): is "
            f"{where}{tls.CA_FILE} the CA that signed it, and does it name this host?"
        )
    if any(marker in code for marker in _TLS_PEER_REFUSED):
        return errors.PermanentError(
            f"{what}: TLS: the engine refused our client certificate ({text}): is "
            f"{where}{tls.CERT_FILE} signed by the CA the engine trusts (dockerd --tlscacert), "
            "and still valid?"
        )
    if code == "WRONG_VERSION_NUMBER":
        return errors.PermanentError(
            f"{what}: TLS: the engine does not speak TLS on this port ({text})"
        )
    if any(marker in code for marker in _TLS_PERMANENT) or "PEM" in text:
        return errors.PermanentError(
            f"{what}: TLS: cannot use the client certificate and key in {where} ({text})"
        )
    return errors.TransientError(f"{what}: TLS handshake failed: {text or code}")


def engine_message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        text = exc.explanation or str(exc)
        return text.decode() if isinstance(text, bytes) else str(text)
    return str(exc) or type(exc).__name__


def translate(
    exc: BaseException, what: str, certs: PurePath | None = None
) -> errors.ControllerError:
    """A docker-py or transport exception as one of our two error kinds; `certs`, the node's
    certificate directory, goes into the reason of a TLS failure."""
    if isinstance(exc, errors.ControllerError):
        return exc
    found = _ssl_error(exc)
    if found is not None:
        return _tls_failure(found, what, certs)
    if isinstance(exc, docker.errors.TLSParameterError):
        # TLSConfig checks that the files exist: they went away after runtime.tls looked.
        return errors.PermanentError(f"{what}: TLS: {engine_message(exc)}")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = engine_message(exc)
        if status >= 500 and any(m in text.lower() for m in _PERMANENT_SERVER_ERRORS):
            return errors.PermanentError(f"{what}: {text}")
        if status >= 500 or status in (408, 429):
            return errors.TransientError(f"{what}: {text}")
        return errors.PermanentError(f"{what}: {text}")
    if isinstance(exc, requests.exceptions.RequestException | OSError | TimeoutError):
        return errors.TransientError(f"{what}: engine unreachable: {engine_message(exc)}")
    if isinstance(exc, docker.errors.DockerException):
        return errors.PermanentError(f"{what}: {engine_message(exc)}")
    return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}")


class PullFailure(StrEnum):
    """What a registry answered a pull that failed, as an operator must act on it: fix the
    credential, fix the image name, or fix the way to the registry."""

    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not found"
    UNREACHABLE = "unreachable"


# Words of failed pulls, as dockerd 20.10 and Podman 4.3 report them from distribution 2.8 and
# Docker Hub (tests/unit/test_pull_errors.py holds the measured answers). Checked in this
# order: a registry we could not reach said nothing about the image, and Docker Hub answers a
# repository it will not show with "pull access denied ... repository does not exist or may
# require 'docker login'", which is a credential to fix first.
_PULL_MARKERS: tuple[tuple[PullFailure, tuple[str, ...]], ...] = (
    (
        PullFailure.UNREACHABLE,
        (
            "connection refused",
            "no such host",
            "timeout",
            "timed out",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "server misbehaving",
            "server gave http response to https client",
        ),
    ),
    (
        PullFailure.UNAUTHORIZED,
        (
            "unauthorized",
            "authentication required",
            "no basic auth credentials",
            "denied",
            "forbidden",
            "incorrect username or password",
        ),
    ),
    (
        PullFailure.NOT_FOUND,
        ("manifest unknown", "name unknown", "not found", "does not exist", "no such image"),
    ),
)


def pull_failure_kind(words: str, status: int | None = None) -> PullFailure | None:
    """PURE: which of the three answers a failed pull's `words` are (Podman reports every
    failure in a 200 stream, so the words decide; dockerd's 404 and 401 agree with them)."""
    text = words.lower()
    for kind, markers in _PULL_MARKERS:
        if any(marker in text for marker in markers):
            return kind
    if status == 404:
        return PullFailure.NOT_FOUND
    if status == 401:
        return PullFailure.UNAUTHORIZED
    return None


def pull_error(
    image: str, words: str, *, with_credential: bool, status: int | None = None
) -> errors.PermanentError:
    """The reason of a failed pull: `image pull failed: <image>: <answer>: <engine's words>`,
    where the answer is unauthorized (saying whether a credential was sent), not found or
    unreachable; other failures keep the engine's words alone."""
    kind = pull_failure_kind(words, status)
    if kind is None:
        return errors.PermanentError(f"image pull failed: {image}: {words}")
    answer = kind.value
    if kind is PullFailure.UNAUTHORIZED:
        answer += " (credential refused)" if with_credential else " (no credential given)"
    return errors.PermanentError(f"image pull failed: {image}: {answer}: {words}")
