"""How the controller may reach a node's engine: PURE, so the security decision is a table.

A `tcp://` Docker API without TLS client authentication is root on its host for anyone who can
reach the port, so a network engine is spoken to over TLS, with the node's own certificates in
Docker's `DOCKER_CERT_PATH` layout (`ca.pem` to verify the engine, `cert.pem` and `key.pem` to
prove who we are) under `<FOG_ENGINE_CERTS_DIR>/<node name>/`. Paths stay out of the database:
the same `nodes` rows then serve several controllers on different hosts, each with its files.

Secure by default: a network engine whose directory is missing is refused with a reason that
names the node and the files expected, never contacted in plain TCP, unless the operator said
`FOG_ENGINE_ALLOW_PLAINTEXT=true`. A directory holding only some of the files is a mistake in
setting up TLS, never a reason to fall back to plain TCP. Local sockets (`unix://`, `npipe://`)
and `ssh://` (which authenticates by itself) are used as they are.

The only input from the outside world is `present`, which says whether a file can be read;
the runtime passes a filesystem check, tests a set.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from controller import errors

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CERT_FILES = (CA_FILE, CERT_FILE, KEY_FILE)
# Schemes whose transport needs no TLS from us: local sockets, and ssh's own authentication.
LOCAL_SCHEMES = frozenset({"unix", "http+unix", "npipe", "ssh"})
# docker-py's spellings of a TCP engine; a URL without a scheme is read as tcp too.
NETWORK_SCHEMES = frozenset({"tcp", "http", "https"})
PLAINTEXT_SWITCH = "FOG_ENGINE_ALLOW_PLAINTEXT"


class Transport(enum.StrEnum):
    LOCAL = "local"  # unix socket, named pipe or ssh: used as given
    TLS = "tls"  # TCP with server verification and a client certificate
    PLAINTEXT = "plaintext"  # TCP without TLS: only when the operator allowed it


@dataclass(frozen=True, slots=True)
class EngineAccess:
    """How to reach one node's engine. `base_url` is what docker-py gets: `tcp://` for both
    TCP transports, since docker-py silently ignores TLS settings on an `http://` URL."""

    transport: Transport
    base_url: str
    certs: PurePath | None = None  # the node's certificate directory (TLS only)

    @property
    def ca_cert(self) -> str:
        return str(self._certs / CA_FILE)

    @property
    def client_cert(self) -> tuple[str, str]:
        return str(self._certs / CERT_FILE), str(self._certs / KEY_FILE)

    @property
    def _certs(self) -> PurePath:
        if self.certs is None:
            raise ValueError(f"{self.transport} access has no certificates")
        return self.certs


def node_certs_dir(certs_root: PurePath, name: str) -> PurePath | None:
    """`<certs_root>/<name>`, or None when the node's name cannot be one directory's name
    (a `/`, `..`): a name must never point at another node's, or anyone's, files."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    return certs_root / name


def engine_access(
    name: str,
    url: str,
    *,
    certs_root: PurePath,
    allow_plaintext: bool,
    present: Callable[[PurePath], bool],
) -> EngineAccess:
    """PURE: how to reach node `name` at `url`; raises `errors.PermanentError` with the reason
    an operator needs (node, URL, directory, files) when it must not be reached at all."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "tcp", url.strip()
    scheme = scheme.lower()
    if scheme in LOCAL_SCHEMES:
        return EngineAccess(Transport.LOCAL, url)
    if scheme not in NETWORK_SCHEMES:
        supported = ", ".join(f"{s}://" for s in sorted(LOCAL_SCHEMES | NETWORK_SCHEMES))
        raise errors.PermanentError(
            f"node {name}: unsupported Docker URL {url} (supported: {supported})"
        )
    directory = node_certs_dir(certs_root, name)
    if directory is None:
        raise errors.PermanentError(
            f"node {name!r}: its name cannot be a directory under {certs_root}, where the TLS "
            f"certificates for {url} are looked up; rename the node"
        )
    found = [f for f in CERT_FILES if present(directory / f)]
    if len(found) == len(CERT_FILES):
        return EngineAccess(Transport.TLS, f"tcp://{rest}", directory)
    expected = ", ".join(CERT_FILES)
    if found:
        missing = ", ".join(f for f in CERT_FILES if f not in found)
        raise errors.PermanentError(
            f"node {name}: TLS certificates for {url} incomplete in {directory}/: {missing} "
            f"missing or unreadable (expected {expected})"
        )
    if scheme == "https":
        raise errors.PermanentError(
            f"node {name}: {url} asks for TLS but {directory}/ holds no certificates "
            f"(expected {expected})"
        )
    if allow_plaintext:
        return EngineAccess(Transport.PLAINTEXT, f"tcp://{rest}")
    raise errors.PermanentError(
        f"node {name}: refusing plain TCP to {url}, an unauthenticated Docker API that is root "
        f"on its host: put {expected} for this engine in {directory}/ (or set "
        f"{PLAINTEXT_SWITCH}=true on a network you trust)"
    )
