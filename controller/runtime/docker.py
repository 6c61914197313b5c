"""Every Docker call the controller makes, off the event loop, one client per node.

Why it looks the way it does:
- docker-py is blocking, so each call runs in a dedicated thread pool sized for all nodes
  (asyncio's default pool has only cpu+4 threads, which would cap a whole fog at ~6 calls).
  A per-node semaphore bounds calls in flight to `node_concurrency`, and the client's HTTP
  pool is sized to match, so requests never queue inside urllib3.
- A client built without an API version asks the engine for `/version` in its constructor and
  raises when the engine is down; we pin the version and build clients lazily.
- Listing uses the low-level API filtered by our label: `containers.list()` inspects each
  container and races with removals. Only containers that are not running are inspected, for
  their exit code, restart count and OOM flag.
- Library exceptions become `errors.TransientError` / `errors.PermanentError` here, with the
  engine's own message kept as the reason. A TLS failure an operator must fix (a certificate
  the other side does not accept, a key that does not load) is permanent, with a reason that
  says which side refused and which file to check; key material never enters a reason or a
  log line, paths at most.
- `EngineConnector` is the one place a client to an engine is made, for the runtime and the
  event streams alike, as `runtime.tls` decides: TLS with the node's certificates, a local
  socket as it is, plain TCP only when allowed.
- Podman serves the Docker API too (`podman system service`). Where it answers differently,
  the difference is keyed on what the engine says it is (`/version`, asked once per node and
  again after a failed probe), never on error text: see `EngineFlavour`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import requests.adapters
import requests.exceptions
import structlog
from docker.transport import unixconn
from docker.types import DeviceRequest
from docker.utils import parse_repository_tag
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller import errors
from controller.metrics import Metrics
from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_SPEC,
    LABEL_STORAGE_GB,
    MANAGED_BY_VALUE,
    ContainerState,
    EngineInfo,
    NodeRecord,
    NodeView,
    ObservedContainer,
)
from controller.runtime import ContainerSpec, tls
from controller.settings import Settings
from controller.storage import DiskUse, StorageLimits, storage_limits

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Oldest API that has everything we use (device requests, nano_cpus); Docker 20.10 speaks it.
DOCKER_API_VERSION = "1.41"
DOCKER_CALL_ATTEMPTS = 3
# A running container that (re)started this recently is inspected for its restart count.
RECENT_START_SECONDS = 60.0
# Inspect answers kept before the old ones are dropped (only ones under two minutes old stay).
INSPECTED_KEPT = 1024
# Graceful stops in flight per node. A stop spends the container's grace period waiting for it
# to exit, which costs the engine nothing, so stops do not take the node's
# FOG_NODE_CONCURRENCY slots (creates, starts, removes): a scale-down signals its containers
# together, as Swarm's agent does, instead of one slot-full at a time, and a slow-stopping
# container cannot hold up the creates of a rollout beside it.
STOPS_PER_NODE = 64
_MANAGED_FILTER = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}
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


# --- which engine answers -------------------------------------------------------------------

# The component Podman lists in `/version` (Podman 4.3: "Podman Engine", "Conmon", "OCI Runtime
# (runc)"; dockerd 20.10: "Engine", "containerd", "runc", "docker-init").
PODMAN_COMPONENT = "Podman Engine"


# The health states the controller acts on, asked of Podman's listing one filter at a time.
PODMAN_HEALTH_STATES = ("starting", "unhealthy")


class EngineFlavour(StrEnum):
    """Which engine serves the Docker API on a node. Measured differences of Podman 4.3 from
    dockerd 20.10 that the controller handles:
    - a name already taken is HTTP 500, not 409 (`_create` asks the engine for the name);
    - GPU device requests are accepted and ignored: the container starts without its GPU
      (`unsupported_request` refuses them);
    - events carry Podman's own names in filters (`died`, `remove`: controller/events.py);
    - a failed pull answers 200 with the error in the progress stream (`_pull_failure`, read
      on every engine);
    - the listing's `Status` carries no health (`_podman_health` asks its `health` filter).
    """

    DOCKER = "docker"
    PODMAN = "podman"


def engine_flavour(version: Mapping[str, Any]) -> EngineFlavour:
    """PURE: the engine that answered `GET /version`; anything not naming Podman is Docker."""
    components = version.get("Components")
    if isinstance(components, list):
        for component in components:
            if isinstance(component, Mapping) and component.get("Name") == PODMAN_COMPONENT:
                return EngineFlavour.PODMAN
    return EngineFlavour.DOCKER


def unsupported_request(flavour: EngineFlavour, spec: ContainerSpec) -> str | None:
    """PURE: why `spec` cannot run as asked on this kind of engine, or None if it can."""
    if flavour is EngineFlavour.PODMAN and spec.resources and spec.resources.gpu_units > 0:
        return (
            f"GPU request ({spec.resources.gpu_units} units) on a Podman node: Podman's Docker "
            "API ignores GPU device requests, so the container would start without its GPU"
        )
    return None


def _pull_failure(output: object) -> str | None:
    """PURE: the error a pull reported inside its progress stream (concatenated JSON objects),
    or None. Podman answers a failed pull this way with HTTP 200."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    if not isinstance(output, str):
        return None
    decoder = json.JSONDecoder()
    index = 0
    while index < len(output):
        while index < len(output) and output[index].isspace():
            index += 1
        if index >= len(output):
            break
        try:
            item, index = decoder.raw_decode(output, index)
        except ValueError:
            return None
        if isinstance(item, Mapping):
            detail = item.get("errorDetail")
            message = detail.get("message") if isinstance(detail, Mapping) else None
            message = message or item.get("error")
            if message:
                return str(message)
    return None


def _message(exc: BaseException) -> str:
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
        return errors.PermanentError(f"{what}: TLS: {_message(exc)}")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = _message(exc)
        if status >= 500 and any(m in text.lower() for m in _PERMANENT_SERVER_ERRORS):
            return errors.PermanentError(f"{what}: {text}")
        if status >= 500 or status in (408, 429):
            return errors.TransientError(f"{what}: {text}")
        return errors.PermanentError(f"{what}: {text}")
    if isinstance(exc, requests.exceptions.RequestException | OSError | TimeoutError):
        return errors.TransientError(f"{what}: engine unreachable: {_message(exc)}")
    if isinstance(exc, docker.errors.DockerException):
        return errors.PermanentError(f"{what}: {_message(exc)}")
    return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}")


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


_UPTIME = re.compile(
    r"^Up (Less than a second|About an? (minute|hour)|(\d+) (second|minute|hour|day|week)s?)"
)
_EXIT = re.compile(r"^(Exited|Restarting) \((-?\d+)\)")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _uptime(status: str) -> float | None:
    """Seconds since the container (re)started, from the list's "Up 3 seconds" text; rough
    past a minute, which is all the readiness checks need."""
    m = _UPTIME.match(status)
    if m is None:
        return None
    if m.group(1) == "Less than a second":
        return 0.0
    if m.group(2):
        return float(_UNIT_SECONDS[m.group(2)])
    return float(int(m.group(3)) * _UNIT_SECONDS[m.group(4)])


def _status_exit_code(status: str) -> int | None:
    """The exit code in "Exited (137) 2 seconds ago" / "Restarting (1) 1 second ago"."""
    m = _EXIT.match(status)
    return int(m.group(2)) if m else None


def _health(status: str) -> str | None:
    """The health the list API writes into its Status text: "Up 3 minutes (healthy)",
    "(unhealthy)", "(health: starting)"; None for an image without HEALTHCHECK."""
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def _timestamp(raw: object) -> datetime | None:
    """Docker's RFC 3339 time with nanoseconds ("0001-01-01T00:00:00Z" means never)."""
    if not isinstance(raw, str) or raw.startswith("0001-"):
        return None
    text = raw.rstrip("Z")
    whole, _, fraction = text.partition(".")
    try:
        parsed = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None
    micros = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    return parsed.replace(microsecond=micros)


def _uuid(raw: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw) if raw else None
    except ValueError:
        return None


class DockerRuntime:
    """The runtime port over real Docker engines."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        close_socket_on_failed_connect()
        self._settings = settings
        self._metrics = metrics
        self._connector = EngineConnector.from_settings(settings)
        # Per (node name, URL): the access a client was made for, and the client. The name is
        # part of the key because the certificates are the node's, not the URL's.
        self._clients: dict[tuple[str, str], tuple[tls.EngineAccess, docker.APIClient]] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._stop_slots: dict[str, asyncio.Semaphore] = {}
        # Per (node name, URL): which engine answers there, asked once (and after a failed
        # probe: the engine behind a URL may be replaced while it is down).
        self._flavours: dict[tuple[str, str], EngineFlavour] = {}
        # Per engine URL: what `docker info` said of its storage (driver, driver status, ID,
        # version) and what we concluded (controller.storage). `_size_refused`: engines that
        # refused a size limit their driver should take (xfs without pquota) and accepted the
        # same create without it; forgotten when the engine restarts or changes, so a node
        # remounted with pquota is tried again.
        self._engine_facts: dict[str, tuple[object, ...]] = {}
        self._limits: dict[str, StorageLimits] = {}
        self._size_refused: dict[str, str] = {}
        self._unreachable: set[str] = set()
        # Per container id: when an inspect of it (running) was sent, and what it said. A
        # later listing whose uptime is at least the time since then shows that the container
        # has not restarted meanwhile, so the answer still holds (see `_recent_inspect`).
        self._inspected: dict[str, tuple[float, dict[str, Any]]] = {}
        self._inspected_limit = INSPECTED_KEPT
        self._executor = ThreadPoolExecutor(
            max_workers=max(8, settings.node_concurrency * 8), thread_name_prefix="docker"
        )
        # Stops wait out grace periods in their own threads, so they never starve other calls.
        self._stopper = ThreadPoolExecutor(
            max_workers=STOPS_PER_NODE, thread_name_prefix="docker-stop"
        )

    # --- plumbing --------------------------------------------------------------------------

    def _client(self, node: NodeRecord) -> docker.APIClient:
        """The node's client, made anew when how to reach it changed (certificates added or
        removed); `errors.PermanentError` when it must not be reached (runtime.tls)."""
        access = self._connector.access(node.name, node.docker_url)
        key = (node.name, node.docker_url)
        held = self._clients.get(key)
        if held is not None and held[0] == access:
            return held[1]
        try:
            client = self._connector.client(
                access,
                timeout=self._settings.docker_timeout_seconds,
                max_pool_size=self._settings.node_concurrency + 1 + STOPS_PER_NODE,
            )
        except Exception as exc:
            raise translate(exc, "connect", access.certs) from exc
        if held is not None:
            held[1].close()  # calls still in flight on it fail and are retried as usual
        self._clients[key] = (access, client)
        if access.transport is tls.Transport.TLS:
            log.info("engine_tls", node=node.name, certs_dir=str(access.certs))
        return client

    def _certs(self, node: NodeRecord) -> PurePath | None:
        """The node's certificate directory, for the reason of a TLS failure."""
        held = self._clients.get((node.name, node.docker_url))
        return held[0].certs if held is not None else None

    def _semaphore(self, node: NodeRecord) -> asyncio.Semaphore:
        sem = self._semaphores.get(node.docker_url)
        if sem is None:
            sem = self._semaphores[node.docker_url] = asyncio.Semaphore(
                self._settings.node_concurrency
            )
        return sem

    async def _raw(self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._semaphore(node):
            return await self._unlimited(node, fn, *args, **kwargs)

    async def _unlimited(
        self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """A call outside the per-node limit: heartbeat probes must not queue behind a
        rollout's creates, or a busy node would look dead (its pool has one spare slot)."""
        return await self._in(self._executor, node, fn, *args, **kwargs)

    async def _in(
        self,
        executor: ThreadPoolExecutor,
        node: NodeRecord,
        fn: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))
        except docker.errors.NotFound:
            raise  # an answer (gone, no such image), not a failing engine
        except Exception:
            # Every Docker call passes here, so this counts each failed attempt once; the
            # operation label is docker-py's method name (a small, fixed set).
            if self._metrics is not None:
                self._metrics.docker_error(node.name, getattr(fn, "__name__", "call"))
            raise

    async def _call(
        self, node: NodeRecord, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """One Docker call, retried on transient failure (3 tries, jittered backoff)."""
        return await self._retried(node, what, lambda: self._raw(node, fn, *args, **kwargs))

    async def _retried(self, node: NodeRecord, what: str, once: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(errors.TransientError),
            stop=stop_after_attempt(DOCKER_CALL_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                try:
                    return await once()
                except docker.errors.NotFound:
                    raise
                except Exception as exc:
                    raise translate(exc, what, self._certs(node)) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def close(self) -> None:
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopper.shutdown(wait=False, cancel_futures=True)

    # --- the port --------------------------------------------------------------------------

    async def info(self, node: NodeRecord) -> EngineInfo:
        url = node.docker_url
        try:
            # Together: on Podman each takes ~0.4 s (both run conmon and runc to report them),
            # and the first probe must fit in its timeout on a busy host.
            raw, flavour = await asyncio.gather(
                self._unlimited(node, self._client(node).info), self._flavour(node)
            )
        except Exception as exc:
            self._flavours.pop((node.name, node.docker_url), None)
            self._unreachable.add(url)
            raise translate(exc, "probe", self._certs(node)) from exc
        driver = str(raw.get("Driver") or "")
        status = tuple(tuple(str(x) for x in row) for row in raw.get("DriverStatus") or ())
        version = str(raw.get("ServerVersion") or "")
        facts = (raw.get("ID"), driver, status, version)
        # An engine that went away and came back has restarted (or was restarted): what it
        # refused before is tried again, as is everything after a change of its facts.
        if url in self._unreachable or self._engine_facts.get(url, facts) != facts:
            self._unreachable.discard(url)
            if self._size_refused.pop(url, None) is not None:
                log.info("storage_limit_recheck", node=node.name, storage_driver=driver)
        self._engine_facts[url] = facts
        limits = storage_limits(driver, status, size_refused=url in self._size_refused)
        self._limits[url] = limits
        return EngineInfo(
            cpu_cores=float(raw.get("NCPU") or 0),
            memory_mb=int((raw.get("MemTotal") or 0) // (1024 * 1024)),
            storage_driver=driver,
            server_version=version,
            storage_limits=limits,
            engine=flavour.value,
        )

    async def _flavour(self, node: NodeRecord) -> EngineFlavour:
        """Which engine answers at the node's URL (`/version`, asked once per node)."""
        key = (node.name, node.docker_url)
        known = self._flavours.get(key)
        if known is None:
            version = await self._unlimited(node, self._client(node).version)
            known = self._flavours[key] = engine_flavour(version)
            log.info("engine_identified", node=node.name, engine=known.value)
        return known

    async def disk_usage(self, node: NodeRecord) -> tuple[DiskUse, ...] | None:
        try:
            client = self._client(node)
            raw = await self._raw(
                node, client.containers, all=False, size=True, filters=_MANAGED_FILTER
            )
        except Exception as exc:
            reason = translate(exc, "list sizes", self._certs(node)).reason
            log.warning("storage_check_failed", node=node.name, error=reason)
            return None
        found = []
        for item in raw:
            labels = item.get("Labels") or {}
            replica_id = _uuid(labels.get(LABEL_REPLICA))
            deployment_id = _uuid(labels.get(LABEL_DEPLOYMENT))
            if replica_id is None or deployment_id is None:
                continue
            limit = labels.get(LABEL_STORAGE_GB)
            found.append(
                DiskUse(
                    container_id=str(item["Id"]),
                    replica_id=replica_id,
                    deployment_id=deployment_id,
                    written_bytes=int(item.get("SizeRw") or 0),
                    limit_gb=int(limit) if limit and limit.isdigit() else None,
                )
            )
        return tuple(found)

    async def list(self, node: NodeRecord, deployment_id: uuid.UUID | None = None) -> NodeView:
        observed_at = datetime.now(UTC)
        filters: dict[str, Any] = _MANAGED_FILTER
        if deployment_id is not None:
            # Several label filters must all match: ours, and of this deployment.
            filters = {"label": [_MANAGED_FILTER["label"], f"{LABEL_DEPLOYMENT}={deployment_id}"]}
        try:
            client = self._client(node)  # may refuse (runtime.tls): this never raises
            raw = await self._raw(node, client.containers, all=True, filters=filters)
            listed_by = time.monotonic()
            health: dict[str, str] = {}
            if self._flavours.get((node.name, node.docker_url)) is EngineFlavour.PODMAN:
                health = await self._podman_health(node, filters, raw)
        except Exception as exc:
            reason = translate(exc, "list", self._certs(node)).reason
            log.warning("node_list_failed", node=node.name, error=reason)
            return NodeView(node.id, complete=False, observed_at=observed_at, error=reason)
        try:
            found = await asyncio.gather(*(self._observe(node, item, listed_by) for item in raw))
        except Exception as exc:
            # An engine that lists but cannot inspect is going away or unwell: a half-read
            # node is unknown, not a node whose containers died.
            reason = translate(exc, "inspect", self._certs(node)).reason
            log.warning("node_list_failed", node=node.name, error=reason)
            return NodeView(node.id, complete=False, observed_at=observed_at, error=reason)
        containers = tuple(
            replace(c, health=health[c.id]) if c.id in health else c for c in found if c is not None
        )
        return NodeView(node.id, complete=True, observed_at=observed_at, containers=containers)

    async def _podman_health(
        self, node: NodeRecord, filters: dict[str, Any], listed: Sequence[Mapping[str, Any]]
    ) -> dict[str, str]:
        """Container id -> health for the states that matter, on Podman: its listing writes no
        health into `Status` (4.3: "Up 2 minutes" while unhealthy), but filters on it. A
        healthy container reads as one without HEALTHCHECK; both count as serving."""
        if not any(item.get("State") == "running" for item in listed):
            return {}
        client = self._client(node)
        found: dict[str, str] = {}
        for state in PODMAN_HEALTH_STATES:
            matching = await self._raw(
                node, client.containers, all=True, quiet=True, filters={**filters, "health": state}
            )
            found.update((str(item["Id"]), state) for item in matching)
        return found

    async def _observe(
        self, node: NodeRecord, item: dict[str, Any], listed_by: float
    ) -> ObservedContainer | None:
        labels = item.get("Labels") or {}
        state = ContainerState.parse(str(item.get("State", "")))
        names = item.get("Names") or ["/"]
        status = str(item.get("Status", ""))
        uptime = _uptime(status) if state is ContainerState.RUNNING else None
        container = ObservedContainer(
            id=str(item["Id"]),
            name=str(names[0]).lstrip("/"),
            node_id=node.id,
            state=state,
            deployment_id=_uuid(labels.get(LABEL_DEPLOYMENT)),
            replica_id=_uuid(labels.get(LABEL_REPLICA)),
            image=str(item.get("Image", "")),
            health=_health(status),
            spec_hash=labels.get(LABEL_SPEC),
            uptime_seconds=uptime,
            exit_code=_status_exit_code(status),
        )
        # Inspect what the listing cannot tell: restart counts and OOM kills of containers
        # that are not running, or that (re)started within the last minute (a restart the
        # engine made between two of our looks). Long-running containers cost no inspect.
        if state is ContainerState.RUNNING and (uptime is None or uptime >= RECENT_START_SECONDS):
            return container
        try:
            detail = await self._recent_inspect(node, container.id, uptime, listed_by)
        except docker.errors.NotFound:
            return None  # removed between list and inspect
        st = detail.get("State") or {}
        # The listing's "Exited (137)" is the exit that matters; inspect's ExitCode is read
        # later and is back to 0 once the engine has restarted the container.
        exit_code = container.exit_code
        if exit_code is None and not st.get("Running"):
            exit_code = st.get("ExitCode")
        return replace(
            container,
            inspected=True,
            exit_code=exit_code,
            restart_count=int(detail.get("RestartCount") or 0),
            oom_killed=bool(st.get("OOMKilled")),
            finished_at=_timestamp(st.get("FinishedAt")),
        )

    async def _recent_inspect(
        self, node: NodeRecord, container_id: str, uptime: float | None, listed_by: float
    ) -> dict[str, Any]:
        """Inspect, or reuse the last answer for a container that is running and has not
        restarted since that inspect was sent: the listing's uptime (rounded down, so never
        more than the truth) is at least the time from then to the listing's return, where a
        restart after the inspect would show less. Without it a scale-down right after a
        scale-up inspects every replica twice before its first stop (the resync pass's
        listing, then the reconcile's), in the node's call slots."""
        held = self._inspected.get(container_id)
        if held is not None and uptime is not None and uptime >= listed_by - held[0]:
            return held[1]
        sent = time.monotonic()
        detail: dict[str, Any] = await self._raw(
            node, self._client(node).inspect_container, container_id
        )
        if (detail.get("State") or {}).get("Running"):
            self._inspected[container_id] = (sent, detail)
            if len(self._inspected) > self._inspected_limit:
                old = sent - 2 * RECENT_START_SECONDS
                self._inspected = {k: v for k, v in self._inspected.items() if v[0] >= old}
                self._inspected_limit = max(INSPECTED_KEPT, 2 * len(self._inspected))
        else:
            self._inspected.pop(container_id, None)
        return detail

    async def ensure(self, node: NodeRecord, spec: ContainerSpec) -> str:
        client = self._client(node)
        try:
            flavour = await self._flavour(node)
        except Exception as exc:
            raise translate(exc, "identify engine", self._certs(node)) from exc
        refused = unsupported_request(flavour, spec)
        if refused is not None:
            raise errors.PermanentError(refused)
        container_id = await self._create(node, spec)
        try:
            await self._call(node, "start container", client.start, container_id)
        except (errors.ControllerError, docker.errors.NotFound) as exc:
            reason = exc.reason if isinstance(exc, errors.ControllerError) else _message(exc)
            # A container that cannot start (bad device request, bad command) is removed now:
            # the replica fails and its replacement gets a fresh name.
            if isinstance(exc, errors.PermanentError | docker.errors.NotFound):
                await self._remove_quietly(node, container_id)
                raise errors.PermanentError(f"container start failed: {reason}") from exc
            raise
        return container_id

    async def _create(self, node: NodeRecord, spec: ContainerSpec) -> str:
        client = self._client(node)
        pulled = False
        url = node.docker_url
        sized = spec.resources is not None and spec.resources.storage_gb > 0
        # Not yet probed: try the limit, as an engine that can cap is the safe guess.
        with_storage = sized and self._limits.get(url) is not StorageLimits.MONITORED
        refused: str | None = None  # the engine's words for a create with the limit
        while True:
            try:
                created = await self._call(
                    node,
                    "create container",
                    client.create_container,
                    **self._create_args(client, spec, with_storage=with_storage),
                )
            except docker.errors.NotFound as exc:
                if pulled or "image" not in _message(exc).lower():
                    raise errors.PermanentError(f"create container: {_message(exc)}") from exc
                await self._pull(node, spec.image)
                pulled = True
                continue
            except errors.ControllerError as exc:
                if "conflict" in exc.reason.lower() or "already in use" in exc.reason:
                    return await self._adopt(node, spec)
                if await self._taken_on_podman(node, spec):
                    return await self._adopt(node, spec)
                answered = isinstance(exc.__cause__, docker.errors.APIError)
                if with_storage and answered and not isinstance(exc, errors.ConflictError):
                    # The engine refused: try once without the limit, which tells whether the
                    # limit was what it refused, whatever words it used.
                    with_storage, refused = False, exc.reason
                    continue
                raise
            if refused is not None:
                # Accepted without the limit: this engine cannot cap disk (xfs without
                # pquota, say, which `docker info` does not show), so it is monitored.
                self._size_refused[url] = refused
                self._limits[url] = StorageLimits.MONITORED
                log.warning(
                    "storage_limit_unenforced",
                    node=node.name,
                    error=refused,
                    detail="the engine refused a disk size limit its driver should take; "
                    "storage_gb is monitored on this node instead",
                )
            return str(created["Id"])

    def _create_args(
        self, client: docker.APIClient, spec: ContainerSpec, *, with_storage: bool
    ) -> dict[str, Any]:
        settings = self._settings
        host: dict[str, Any] = {
            "restart_policy": {"Name": "unless-stopped"},
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "pids_limit": settings.pids_limit,
        }
        if settings.container_network:
            host["network_mode"] = settings.container_network
        res = spec.resources
        if res is not None:
            host["nano_cpus"] = int(res.cpu_cores * 1e9)
            host["mem_limit"] = f"{res.memory_mb}m"
            if res.gpu_units > 0:
                host["device_requests"] = [
                    DeviceRequest(count=res.gpu_units, capabilities=[["gpu"]])
                ]
            if with_storage and res.storage_gb > 0:
                host["storage_opt"] = {"size": f"{res.storage_gb}G"}
        return {
            "image": spec.image,
            "name": spec.name,
            "labels": spec.labels,
            "detach": True,
            "host_config": client.create_host_config(**host),
        }

    async def _taken_on_podman(self, node: NodeRecord, spec: ContainerSpec) -> bool:
        """After a failed create on Podman, whether our container name is taken: Podman answers
        a taken name with HTTP 500 like any other failure, so the engine is asked, by name."""
        if self._flavours.get((node.name, node.docker_url)) is not EngineFlavour.PODMAN:
            return False
        try:
            await self._call(
                node, "inspect container", self._client(node).inspect_container, spec.name
            )
        except docker.errors.NotFound:
            return False
        return True

    async def _adopt(self, node: NodeRecord, spec: ContainerSpec) -> str:
        """Our name is taken: ours (a create retried after a crash) or a stranger's (conflict)."""
        try:
            detail = await self._call(
                node, "inspect container", self._client(node).inspect_container, spec.name
            )
        except docker.errors.NotFound as exc:
            raise errors.TransientError(f"name {spec.name} taken, then gone: retry") from exc
        labels = (detail.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_REPLICA) != str(spec.replica_id) or labels.get(LABEL_MANAGED_BY) != (
            MANAGED_BY_VALUE
        ):
            raise errors.ConflictError(
                f"a container named {spec.name} exists without our labels; not adopting it"
            )
        log.info("container_adopted", node=node.name, container=spec.name)
        return str(detail["Id"])

    async def _pull(self, node: NodeRecord, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        log.info("image_pull", node=node.name, image=image)
        try:
            output = await asyncio.wait_for(
                self._raw(node, self._client(node).pull, repository, tag=tag or "latest"),
                timeout=self._settings.pull_timeout_seconds,
            )
        except TimeoutError as exc:
            raise errors.PermanentError(
                f"image pull failed: {image}: timed out after "
                f"{self._settings.pull_timeout_seconds:g}s"
            ) from exc
        except Exception as exc:
            raise errors.PermanentError(f"image pull failed: {image}: {_message(exc)}") from exc
        failure = _pull_failure(output)
        if failure is not None:
            raise errors.PermanentError(f"image pull failed: {image}: {failure}")

    async def stop(self, node: NodeRecord, container: str, timeout_seconds: float) -> None:
        """The engine's own stop (the image's stop signal, the grace, then SIGKILL), then a
        remove; with no grace a force-remove alone, which kills it the same way in one call."""
        if int(timeout_seconds) > 0:
            client = self._client(node)
            try:
                await self._stop_call(node, client.stop, container, timeout=int(timeout_seconds))
            except docker.errors.NotFound:
                return
        await self._remove(node, container)

    async def _stop_call(self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A stop, retried as `_call` does, in the node's stop slots and the stop threads."""
        slots = self._stop_slots.get(node.docker_url)
        if slots is None:
            slots = self._stop_slots[node.docker_url] = asyncio.Semaphore(STOPS_PER_NODE)

        async def once() -> T:
            async with slots:
                return await self._in(self._stopper, node, fn, *args, **kw)

        return await self._retried(node, "stop container", once)

    async def _remove(self, node: NodeRecord, container: str) -> None:
        try:
            await self._call(
                node,
                "remove container",
                self._client(node).remove_container,
                container,
                force=True,
            )
        except docker.errors.NotFound:
            return
        except errors.PermanentError as exc:
            if "already in progress" in exc.reason:
                return
            raise

    async def _remove_quietly(self, node: NodeRecord, container: str) -> None:
        try:
            await self._remove(node, container)
        except errors.ControllerError as exc:
            log.warning("container_remove_failed", node=node.name, error=exc.reason)
