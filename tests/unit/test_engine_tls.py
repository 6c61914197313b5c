"""How a node's engine is reached (controller.runtime.tls), as a table: URL scheme x
certificate files present x the plaintext switch. The security promise is in the refusals: a
network engine without certificates is never spoken to in plain TCP unless allowed, and a
half set-up directory never falls back to plain TCP at all."""

from __future__ import annotations

from pathlib import PurePath

import pytest

from controller import errors
from controller.runtime import tls
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
