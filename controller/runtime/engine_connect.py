"""Making the docker-py clients to engines, as `runtime.tls` decides how to reach each.

The one place a client is made, for the runtime and the event streams alike: TLS with the
node's certificates (pinned against the environment), a local socket as it is, plain TCP only
when allowed.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path, PurePath
from typing import Any

import docker
import docker.tls
import requests.adapters
import structlog
from docker.transport import unixconn

from controller.runtime import tls
from controller.settings import Settings

log = structlog.get_logger("controller.runtime.docker")

# Oldest API that has everything we use (device requests, nano_cpus); Docker 20.10 speaks it.
DOCKER_API_VERSION = "1.41"


def close_socket_on_failed_connect() -> None:
    """Mend docker-py 7.x's unix transport, which leaks its socket when connect() fails (an
    engine that is down): a heartbeat probing a lost node would leak one socket per probe.
    Idempotent; affects only connections that fail."""
    cls: Any = unixconn.UnixHTTPConnection
    if getattr(cls.connect, "_fog_mended", False):
        return

    def connect(self: Any) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    connect._fog_mended = True  # type: ignore[attr-defined]
    cls.connect = connect


def _readable_file(path: PurePath) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


class _PinnedTLSAdapter(requests.adapters.HTTPAdapter):
    """Verifies the engine against the node's ca.pem and presents the node's client
    certificate on every request, whatever the environment says. requests lets
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA (psf/requests#3829): the
    node's own CA would silently become the system bundle. Also sizes the pool, which
    docker-py leaves at requests' default of 10 for TCP engines."""

    def __init__(self, access: tls.EngineAccess, pool_maxsize: int) -> None:
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize)
        self._ca = access.ca_cert
        self._cert = access.client_cert

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["verify"] = self._ca
        kwargs["cert"] = self._cert
        return super().send(request, *args, **kwargs)


class EngineConnector:
    """Makes the docker-py clients to engines, reaching each as `tls.engine_access` decides.

    `access()` re-reads the node's certificate directory on every call (three `stat`s): files
    put in place, replaced or removed take effect without a restart, and a node allowed plain
    TCP is spoken to over TLS as soon as its certificates appear. Thread-safe: event streams
    connect from their own threads."""

    def __init__(
        self, certs_dir: Path, allow_plaintext: bool = False, *, warn_plaintext: bool = True
    ) -> None:
        self._certs_dir = certs_dir
        self._allow_plaintext = allow_plaintext
        self._warn_plaintext = warn_plaintext
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, warn_plaintext: bool = True) -> EngineConnector:
        return cls(
            Path(settings.engine_certs_dir),
            settings.engine_allow_plaintext,
            warn_plaintext=warn_plaintext,
        )

    def access(self, name: str, url: str) -> tls.EngineAccess:
        """How to reach node `name` at `url` now; `errors.PermanentError` if not at all."""
        access = tls.engine_access(
            name,
            url,
            certs_root=self._certs_dir,
            allow_plaintext=self._allow_plaintext,
            present=_readable_file,
        )
        if access.transport is tls.Transport.PLAINTEXT and self._warn_plaintext:
            with self._lock:
                first = name not in self._warned
                self._warned.add(name)
            if first:
                log.warning(
                    "engine_plaintext",
                    node=name,
                    docker_url=url,
                    certs_dir=str(self._certs_dir / name),
                    detail=f"no TLS certificates; {tls.PLAINTEXT_SWITCH}=true allows plain "
                    "TCP: anyone on the network path can control this engine",
                )
        return access

    def client(
        self, access: tls.EngineAccess, *, timeout: float, max_pool_size: int
    ) -> docker.APIClient:
        """A client for `access` (no request is made: the API version is pinned)."""
        config: docker.tls.TLSConfig | None = None
        if access.transport is tls.Transport.TLS:
            config = docker.tls.TLSConfig(
                client_cert=access.client_cert, ca_cert=access.ca_cert, verify=True
            )
        client = docker.APIClient(
            base_url=access.base_url,
            version=DOCKER_API_VERSION,
            timeout=int(timeout),
            max_pool_size=max_pool_size,
            tls=config or False,
        )
        if access.transport is tls.Transport.TLS:
            client.mount("https://", _PinnedTLSAdapter(access, max_pool_size))
        elif access.transport is tls.Transport.PLAINTEXT:
            client.mount(
                "http://",
                requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max_pool_size),
            )
        return client
