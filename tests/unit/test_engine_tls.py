"""How a node's engine is reached (controller.runtime.tls), as a table: URL scheme x
certificate files present x the plaintext switch. The security promise is in the refusals: a
network engine without certificates is never spoken to in plain TCP unless allowed, and a
half set-up directory never falls back to plain TCP at all."""

from __future__ import annotations

import ssl
from pathlib import PurePath

import pytest
import requests.exceptions
import urllib3.exceptions

from controller import errors
from controller.runtime import tls
from controller.runtime.docker import translate
from controller.settings import Settings, SettingsError

ROOT = PurePath("/etc/fog-controller/engines")
ALL = frozenset(tls.CERT_FILES)


def decide(
    url: str, files: frozenset[str] = ALL, *, name: str = "edge-1", plaintext: bool = False
) -> tls.EngineAccess:
    present = {ROOT / name / f for f in files}
    return tls.engine_access(
        name, url, certs_root=ROOT, allow_plaintext=plaintext, present=present.__contains__
    )


@pytest.mark.parametrize(
    ("url", "files", "plaintext", "transport", "base_url"),
    [
        pytest.param("unix:///var/run/docker.sock", frozenset(), False, "local", None, id="unix"),
        pytest.param("unix:///var/run/docker.sock", ALL, False, "local", None, id="unix-certs"),
        pytest.param("ssh://fog@edge-1", frozenset(), False, "local", None, id="ssh"),
        pytest.param(
            "npipe:////./pipe/docker_engine", frozenset(), False, "local", None, id="npipe"
        ),
        pytest.param("tcp://10.0.0.5:2376", ALL, False, "tls", "tcp://10.0.0.5:2376", id="tcp"),
        pytest.param("TCP://10.0.0.5:2376", ALL, False, "tls", "tcp://10.0.0.5:2376", id="upper"),
        pytest.param("https://10.0.0.5:2376", ALL, False, "tls", "tcp://10.0.0.5:2376", id="https"),
        # docker-py would ignore TLS settings on an http:// URL: rewritten, so TLS is used.
        pytest.param("http://10.0.0.5:2376", ALL, False, "tls", "tcp://10.0.0.5:2376", id="http"),
        pytest.param("10.0.0.5:2376", ALL, False, "tls", "tcp://10.0.0.5:2376", id="bare"),
        # Certificates win over the switch: allowed plain TCP is never chosen over TLS.
        pytest.param("tcp://10.0.0.5:2376", ALL, True, "tls", "tcp://10.0.0.5:2376", id="both"),
        pytest.param(
            "tcp://10.0.0.5:2375", frozenset(), True, "plaintext", "tcp://10.0.0.5:2375", id="plain"
        ),
        pytest.param(
            "http://10.0.0.5:2375", frozenset(), True, "plaintext", "tcp://10.0.0.5:2375", id="h"
        ),
    ],
)
def test_how_an_engine_is_reached(
    url: str, files: frozenset[str], plaintext: bool, transport: str, base_url: str | None
) -> None:
    access = decide(url, files, plaintext=plaintext)
    assert access.transport == transport
    assert access.base_url == (base_url or url)
    if access.transport is tls.Transport.TLS:
        assert access.certs == ROOT / "edge-1"
        assert access.ca_cert == "/etc/fog-controller/engines/edge-1/ca.pem"
        assert access.client_cert == (
            "/etc/fog-controller/engines/edge-1/cert.pem",
            "/etc/fog-controller/engines/edge-1/key.pem",
        )
    else:
        assert access.certs is None


@pytest.mark.parametrize(
    ("url", "files", "plaintext", "needles"),
    [
        pytest.param(
            "tcp://10.0.0.5:2375",
            frozenset(),
            False,
            (
                "node edge-1",
                "refusing plain TCP to tcp://10.0.0.5:2375",
                "/etc/fog-controller/engines/edge-1/",
                "ca.pem, cert.pem, key.pem",
                "FOG_ENGINE_ALLOW_PLAINTEXT=true",
            ),
            id="no-certs",
        ),
        pytest.param(
            "tcp://10.0.0.5:2376",
            frozenset({"ca.pem", "cert.pem"}),
            False,
            ("node edge-1", "incomplete", "key.pem missing", "/engines/edge-1/"),
            id="no-key",
        ),
        # A half set-up directory is a mistake in TLS, never permission for plain TCP.
        pytest.param(
            "tcp://10.0.0.5:2376",
            frozenset({"ca.pem"}),
            True,
            ("incomplete", "cert.pem, key.pem missing"),
            id="no-key-plaintext-allowed",
        ),
        pytest.param(
            "https://10.0.0.5:2376",
            frozenset(),
            True,
            ("asks for TLS", "holds no certificates"),
            id="https-no-certs",
        ),
        pytest.param("fd://", ALL, True, ("unsupported Docker URL fd://",), id="fd"),
        pytest.param("hollow://n1", ALL, True, ("unsupported", "tcp://", "unix://"), id="hollow"),
    ],
)
def test_refusals_name_the_node_and_what_is_missing(
    url: str, files: frozenset[str], plaintext: bool, needles: tuple[str, ...]
) -> None:
    with pytest.raises(errors.PermanentError) as refused:
        decide(url, files, plaintext=plaintext)
    for needle in needles:
        assert needle in refused.value.reason


@pytest.mark.parametrize("name", ["../other", "a/b", "..", ".", "", "x\\y", "nul\0"])
def test_a_name_that_is_no_directory_name_is_refused_for_a_network_engine(name: str) -> None:
    assert tls.node_certs_dir(ROOT, name) is None
    with pytest.raises(errors.PermanentError, match="cannot be a directory"):
        decide("tcp://10.0.0.5:2376", name=name)
    # A local socket needs no directory, so any name will do.
    assert decide("unix:///run/docker.sock", name=name).transport is tls.Transport.LOCAL


def test_a_name_with_dots_or_spaces_inside_is_one_directory() -> None:
    assert tls.node_certs_dir(ROOT, "edge 1.lab") == ROOT / "edge 1.lab"


# --- TLS failures as the runtime boundary reports them ---------------------------------------


def _wrapped(inner: ssl.SSLError) -> requests.exceptions.SSLError:
    """The shape requests raises: SSLError(MaxRetryError(reason=urllib3 SSLError(ssl error)))."""
    pool_error = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "/v1.41/info",
        urllib3.exceptions.SSLError(inner),
    )
    return requests.exceptions.SSLError(pool_error)


CERTS = PurePath("/etc/fog-controller/engines/edge-1")


def test_an_engine_certificate_our_ca_did_not_sign_is_a_permanent_readable_failure() -> None:
    inner = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
        "issuer certificate (_ssl.c:1006)",
    )
    inner.reason = "CERTIFICATE_VERIFY_FAILED"
    inner.verify_message = "unable to get local issuer certificate"
    failure = translate(_wrapped(inner), "probe", CERTS)
    assert isinstance(failure, errors.PermanentError)
    assert failure.reason == (
        "probe: TLS: the engine's certificate was not accepted (unable to get local issuer "
        "certificate): is /etc/fog-controller/engines/edge-1/ca.pem the CA that signed it, and "
        "does it name this host?"
    )


@pytest.mark.parametrize(
    "code",
    ["SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED"],
)
def test_a_client_certificate_the_engine_refuses_is_a_permanent_readable_failure(
    code: str,
) -> None:
    text = code.lower().replace("_", " ")
    inner = ssl.SSLError(1, f"[SSL: {code}] {text} (_ssl.c:2580)")
    inner.reason = code
    failure = translate(_wrapped(inner), "create container", CERTS)
    assert isinstance(failure, errors.PermanentError)
    assert failure.reason.startswith(
        f"create container: TLS: the engine refused our client certificate ({text}): is "
        "/etc/fog-controller/engines/edge-1/cert.pem signed by the CA the engine trusts"
    )


def test_an_eof_mid_handshake_stays_transient() -> None:
    inner = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred (_ssl.c:1006)")
    inner.reason = "UNEXPECTED_EOF_WHILE_READING"
    failure = translate(_wrapped(inner), "probe", CERTS)
    assert isinstance(failure, errors.TransientError)
    assert failure.reason == "probe: TLS handshake failed: EOF occurred"


def test_tls_to_a_port_that_does_not_speak_it_is_permanent() -> None:
    inner = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    inner.reason = "WRONG_VERSION_NUMBER"
    failure = translate(_wrapped(inner), "probe")
    assert isinstance(failure, errors.PermanentError)
    assert "does not speak TLS" in failure.reason


# --- settings -------------------------------------------------------------------------------


def test_settings_default_to_the_etc_directory_and_no_plain_tcp() -> None:
    settings = Settings.from_env({"FOG_DATABASE_URL": "sqlite+aiosqlite://"})
    assert settings.engine_certs_dir == "/etc/fog-controller/engines"
    assert settings.engine_allow_plaintext is False
    switched = Settings.from_env(
        {
            "FOG_DATABASE_URL": "sqlite+aiosqlite://",
            "FOG_ENGINE_CERTS_DIR": "/srv/certs",
            "FOG_ENGINE_ALLOW_PLAINTEXT": "true",
        }
    )
    assert (switched.engine_certs_dir, switched.engine_allow_plaintext) == ("/srv/certs", True)


def test_a_relative_certificate_directory_is_refused() -> None:
    with pytest.raises(SettingsError, match="FOG_ENGINE_CERTS_DIR must be an absolute path"):
        Settings.from_env({"FOG_DATABASE_URL": "sqlite+aiosqlite://", "FOG_ENGINE_CERTS_DIR": "c"})
