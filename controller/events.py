"""Docker event streams: see a container of ours die, restart or vanish within a second.

Without them a crashed replica waits for the next resync pass to be noticed. One stream per
ready node subscribes to the engine's `/events`, filtered on the engine side to our label and
to the actions the reconciler cares about; each event only hands a deployment id to the loop
(the reconcile re-reads everything, so a lost event delays convergence, never prevents it).

Why it looks the way it does:
- docker-py's `events()` is a blocking generator with no read timeout (the stream is quiet for
  hours), so each stream owns a dedicated thread and its own `docker.APIClient`: a stream parked
  in the runtime's pool would hold a worker forever. Events reach the loop through
  `loop.call_soon_threadsafe`; callbacks run on the loop, never in the stream thread.
- Stopping: `CancellableStream.close()` shuts the socket down (`SHUT_RDWR`), which wakes the
  blocked read at once; measured on dockerd 20.10 with docker-py 7.2. `APIClient.close()` does
  *not* (the stream's connection is checked out of the pool it closes) and closing the inner
  generator from another thread raises "generator already executing".
- Every (re)connect calls `on_resync(node_id)` once the subscription is live, including the
  first: the engine keeps only a short window of past events (none across its own restart), so
  whatever happened while no stream was open must be found by listing the node, and listing
  after subscribing leaves no gap. For the same reason `since` is not used: replay would not
  spare the listing.
- Only ready nodes get a stream. The heartbeat notices what a blocking read cannot (a TCP peer
  that vanished without a FIN or RST); when it marks the node not ready the stream is closed,
  and a fresh one (with its resync) starts when the node is ready again.
- Before subscribing, a `ping` with a timeout: `events()` waits for response headers with no
  timeout, so a hung engine would otherwise hold the thread where `close()` cannot reach it.
- Clients come from the runtime's `EngineConnector`, so a stream reaches its engine exactly as
  the runtime does (TLS with the node's certificates, never plain TCP unless allowed). A node
  refused that way is retried with the stream's backoff, like an engine that is down.

The actions watched, and why (the callback's `event` is Docker's action verbatim):
  `die` a container exited: crash, host kill, OOM kill, or a stop from outside the controller;
  `oom` the kernel OOM-killed a process in it: one per process killed, so several may come
  before one `die`, and one alone (a child killed) does not mean the container stopped; the
  `OOMKilled` flag a listing reads after the `die` says whether it did;
  `start` it runs again (a restart policy's restart is only this: there is no `restart`);
  `restart` `docker restart` from outside (`die` and `start` come too);
  `destroy` it was removed;
  `health_status: healthy` / `health_status: unhealthy` / `health_status: starting` its
  healthcheck changed. Docker appends the status to the action, and an `event` filter of plain
  `health_status` matches them all (the engine matches these by prefix, moby#25798).
`kill` and `stop` are left out: a signal sent changes nothing by itself, and a stop that ends
the process is already a `die`.

Podman (measured on 4.3.1) filters on its own names: `died` (reported as `die`, with the same
`exitCode` attribute), `remove` (reported as `remove`: made `destroy` here), `start`,
`restart`, `health_status`; it has no `oom` event (the `OOMKilled` flag read after the `die`
still tells). A Docker name in its filter matches nothing, silently, so each stream subscribes
with its engine's names: the engine as the node's probe identified it (`engine_of`, from
`/version`), or, without one, as `/version` says on connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import docker
import structlog

from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    NodeRecord,
    NodeStatus,
)
from controller.runtime import docker as docker_runtime
from controller.runtime import tls
from controller.settings import DEFAULT_ENGINE_CERTS_DIR

log = structlog.get_logger(__name__)

# (deployment, node the event came from, action)
OnDeployment = Callable[[uuid.UUID, uuid.UUID, str], None]
OnResync = Callable[[uuid.UUID], None]

WATCHED_ACTIONS: Final = ("die", "oom", "start", "restart", "destroy", "health_status")
EVENT_FILTERS: Final[Mapping[str, Any]] = {
    "type": "container",
    "label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}",
    "event": list(WATCHED_ACTIONS),
}
PODMAN_WATCHED_ACTIONS: Final = ("died", "start", "restart", "remove", "health_status")
# Podman's action names where they differ from Docker's (the callbacks get Docker's).
_PODMAN_ACTIONS: Final[Mapping[str, str]] = {"died": "die", "remove": "destroy"}
SYNC_SECONDS = 1.0  # how often the node list is re-read for streams to start or stop
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# A stream that stayed up this long was healthy: the next loss starts the backoff afresh. An
# engine that accepts and drops at once keeps doubling instead (each connect costs a resync).
STABLE_SECONDS = 10.0
# Bounds the ping before each subscribe, so an engine that accepts connections but never
# answers (a hung dockerd) fails there: `events()` waits for its headers and reads with no
# timeout, out of `close()`'s reach until it has a response. It is also the longest `close()`
# waits for a thread caught in that ping.
PING_TIMEOUT_SECONDS = 3
CLOSE_TIMEOUT_SECONDS = 5.0


def event_filters(flavour: docker_runtime.EngineFlavour) -> dict[str, Any]:
    """PURE: the `/events` filters for this kind of engine, in its own action names."""
    if flavour is docker_runtime.EngineFlavour.PODMAN:
        return {**EVENT_FILTERS, "event": list(PODMAN_WATCHED_ACTIONS)}
    return dict(EVENT_FILTERS)


def as_docker(raw: Mapping[str, Any], flavour: docker_runtime.EngineFlavour) -> Mapping[str, Any]:
    """PURE: one decoded event with Docker's action name (Podman's `remove` is `destroy`)."""
    if flavour is not docker_runtime.EngineFlavour.PODMAN:
        return raw
    renamed = {
        key: _PODMAN_ACTIONS.get(value, value)
        for key in ("Action", "status")
        if isinstance(value := raw.get(key), str)
    }
    return {**raw, **renamed} if renamed else raw


def parse(raw: Mapping[str, Any]) -> tuple[uuid.UUID, str] | None:
    """PURE: (deployment id, action) of one decoded event, or None if it names no deployment
    of ours. Container labels arrive as the actor's attributes."""
    actor = raw.get("Actor")
    attributes = actor.get("Attributes") if isinstance(actor, Mapping) else None
    if not isinstance(attributes, Mapping):
        return None
    if attributes.get(LABEL_MANAGED_BY) != MANAGED_BY_VALUE:
        return None
    action = raw.get("Action") or raw.get("status")
    try:
        deployment_id = uuid.UUID(str(attributes.get(LABEL_DEPLOYMENT)))
    except ValueError:
        return None
    if not isinstance(action, str) or not action:
        return None
    return deployment_id, action.strip()


def exit_of(raw: Mapping[str, Any]) -> tuple[str, int] | None:
    """PURE: (container id, exit code) of a `die` event, or None."""
    action = raw.get("Action") or raw.get("status")
    actor = raw.get("Actor")
    if action != "die" or not isinstance(actor, Mapping):
        return None
    attributes = actor.get("Attributes")
    container_id = actor.get("ID") or raw.get("id")
    raw_code = attributes.get("exitCode") if isinstance(attributes, Mapping) else None
    if raw_code is None or not container_id:
        return None
    try:
        return str(container_id), int(str(raw_code))
    except ValueError:
        return None


@dataclass(eq=False)
class _Stream:
    """One node's stream: a thread, its stop flag, and the open response to shut down."""

    node_id: uuid.UUID
    name: str
    url: str
    finished: asyncio.Future[None]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    response: Any = None  # docker.types.CancellableStream while connected
    thread: threading.Thread | None = None
    # The engine at `url` as the node's probe found it; None: ask it (`/version`) on connect.
    flavour: docker_runtime.EngineFlavour | None = None

    def request_stop(self) -> None:
        """Safe from any thread; returns at once. The stream thread ends soon after."""
        with self.lock:
            self.stop.set()
            response, self.response = self.response, None
        if response is not None:
            _close_quietly(response)


def _close_quietly(response: Any) -> None:
    # Whoever takes the response from `_Stream.response` closes it, exactly once; but the
    # engine may have ended the stream meanwhile, and closing a socket shut from the other end
    # (OSError) or a response whose file urllib3 already dropped (AttributeError) is no error.
    with contextlib.suppress(OSError, AttributeError, ValueError):
        response.close()


class EventWatcher:
    """One Docker event stream per ready node; callbacks run on the event loop.

    `nodes()` is read every `sync_seconds` (and on `sync()`): a stream starts for each ready
    node, and stops for a node that is gone, not ready, or now has another URL.
    """

    def __init__(
        self,
        nodes: Callable[[], Iterable[NodeRecord]],
        on_deployment: OnDeployment,
        on_resync: OnResync,
        *,
        sync_seconds: float = SYNC_SECONDS,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        close_timeout_seconds: float = CLOSE_TIMEOUT_SECONDS,
        on_exit: Callable[[str, int], None] | None = None,
        connector: docker_runtime.EngineConnector | None = None,
        engine_of: Callable[[NodeRecord], docker_runtime.EngineFlavour | None] | None = None,
    ) -> None:
        docker_runtime.close_socket_on_failed_connect()  # a down engine must not leak sockets
        # Without one, the defaults: certificates from the default directory, no plain TCP.
        self._connector = connector or docker_runtime.EngineConnector(
            Path(DEFAULT_ENGINE_CERTS_DIR)
        )
        # (container id, exit code) of each `die`: the one record of the exit code once the
        # engine has restarted the container (inspect then reads 0).
        self._on_exit = on_exit
        # Podman's `/version` takes ~0.35 s (it runs conmon and runc to report them): the
        # runtime's probe asks once per node, and streams take its answer from here.
        self._engine_of = engine_of
        self._nodes = nodes
        self._on_deployment = on_deployment
        self._on_resync = on_resync
        self._sync_seconds = sync_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._close_timeout = close_timeout_seconds
        self._streams: dict[uuid.UUID, _Stream] = {}
        self._retired: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open streams for the ready nodes now and keep following `nodes()`. Call from the
        event loop; idempotent."""
        if self._closed:
            raise RuntimeError("EventWatcher is closed")
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.sync()
        self._task = self._loop.create_task(self._follow(), name="event-watcher-sync")

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set, then close (the shape of `watch.PgListener.run`)."""
        self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop every stream and wait for its thread to end; idempotent. No callback runs
        after this returns."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        streams = [*self._streams.values(), *self._retired]
        self._streams.clear()
        for stream in streams:
            stream.request_stop()
        pending = {s.finished for s in streams}
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._close_timeout)
            for stream in streams:
                if stream.finished in late:
                    # Only a thread stuck in a connect or a ping that has not timed out yet;
                    # it is a daemon thread and ends once that call returns.
                    log.warning("event_stream_abandoned", node=stream.name, url=stream.url)
                elif stream.thread is not None:
                    stream.thread.join()  # it has signalled its last act; this is immediate
        self._retired.clear()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- which nodes have a stream ---------------------------------------------------------

    @property
    def watching(self) -> dict[uuid.UUID, str]:
        """Node id -> engine URL of every stream running (connected or reconnecting)."""
        return {node_id: s.url for node_id, s in self._streams.items()}

    def sync(self) -> None:
        """Start and stop streams to match `nodes()` now (the loop may call this right after a
        heartbeat instead of waiting for the next tick)."""
        if self._closed or self._loop is None:
            return
        try:
            wanted = {n.id: n for n in self._nodes() if n.status is NodeStatus.READY}
        except Exception:
            log.exception("event_nodes_failed")
            return
        for node_id, stream in list(self._streams.items()):
            node = wanted.get(node_id)
            if node is None or node.docker_url != stream.url:
                self._retire(self._streams.pop(node_id))
        for node_id, node in wanted.items():
            if node_id not in self._streams:
                self._streams[node_id] = self._spawn(node)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._sync_seconds)
            try:
                self.sync()
            except Exception:  # e.g. no thread to be had: try again next tick
                log.exception("event_sync_failed")

    def _spawn(self, node: NodeRecord) -> _Stream:
        assert self._loop is not None
        stream = _Stream(
            node_id=node.id,
            name=node.name,
            url=node.docker_url,
            finished=self._loop.create_future(),
            flavour=self._engine_of(node) if self._engine_of is not None else None,
        )
        stream.thread = threading.Thread(
            target=self._read, args=(stream, self._loop), name=f"events-{node.name}", daemon=True
        )
        stream.thread.start()
        return stream

    def _retire(self, stream: _Stream) -> None:
        stream.request_stop()
        self._retired.add(stream)
        stream.finished.add_done_callback(lambda _: self._retired.discard(stream))
        log.info("event_stream_stopped", node=stream.name, url=stream.url)

    # --- on the loop -----------------------------------------------------------------------

    def _deliver(self, stream: _Stream, deployment_id: uuid.UUID, action: str) -> None:
        if stream.stop.is_set():
            return  # closed or retired meanwhile: its successor (if any) resyncs anyway
        try:
            self._on_deployment(deployment_id, stream.node_id, action)
        except Exception:
            log.exception("event_callback_failed", node=stream.name, action=action)

    def _exited(self, stream: _Stream, container_id: str, code: int) -> None:
        if stream.stop.is_set() or self._on_exit is None:
            return
        try:
            self._on_exit(container_id, code)
        except Exception:
            log.exception("event_callback_failed", node=stream.name, action="die")

    def _resync(self, stream: _Stream) -> None:
        if stream.stop.is_set():
            return
        try:
            self._on_resync(stream.node_id)
        except Exception:
            log.exception("event_callback_failed", node=stream.name, action="resync")

    # --- in the stream's thread ------------------------------------------------------------

    def _read(self, stream: _Stream, loop: asyncio.AbstractEventLoop) -> None:
        held: dict[tls.EngineAccess, docker.APIClient] = {}  # at most one entry
        try:
            self._read_until_stopped(stream, loop, held)
        except Exception:
            log.exception("event_stream_crashed", node=stream.name)
        finally:
            for client in held.values():
                client.close()
            _post(loop, _finish, stream.finished)

    def _connect(
        self, stream: _Stream, held: dict[tls.EngineAccess, docker.APIClient]
    ) -> docker.APIClient:
        """The stream's client, made anew when how to reach the node changed since the last
        (re)connect (certificates put in place, say); raises when it must not be reached."""
        access = self._connector.access(stream.name, stream.url)
        client = held.get(access)
        if client is None:
            for old in held.values():
                old.close()
            held.clear()
            client = held[access] = self._connector.client(
                access,
                timeout=PING_TIMEOUT_SECONDS,  # ping and connect; events() passes timeout=None
                max_pool_size=1,
            )
        return client

    def _read_until_stopped(
        self,
        stream: _Stream,
        loop: asyncio.AbstractEventLoop,
        held: dict[tls.EngineAccess, docker.APIClient],
    ) -> None:
        delay = self._backoff_initial
        while not stream.stop.is_set():
            connected_at: float | None = None
            error = "stream ended"
            try:
                client = self._connect(stream, held)
                client.ping()
                flavour = stream.flavour or docker_runtime.engine_flavour(client.version())
                response = client.events(decode=True, filters=event_filters(flavour))
                with stream.lock:
                    if stream.stop.is_set():
                        _close_quietly(response)
                        return
                    stream.response = response
                connected_at = time.monotonic()
                log.info("event_stream_connected", node=stream.name, url=stream.url)
                if not _post(loop, self._resync, stream):
                    return
                for item in response:
                    if not isinstance(item, Mapping):
                        continue
                    raw = as_docker(item, flavour)
                    found = parse(raw)
                    if found is None:
                        continue
                    died = exit_of(raw) if self._on_exit is not None else None
                    if died is not None and not _post(loop, self._exited, stream, *died):
                        return
                    if not _post(loop, self._deliver, stream, *found):
                        return
            except Exception as exc:
                error = docker_runtime.translate(exc, "events").reason
            finally:
                with stream.lock:
                    response, stream.response = stream.response, None
                if response is not None:
                    _close_quietly(response)
            if stream.stop.is_set():
                return
            if connected_at is not None and time.monotonic() - connected_at >= STABLE_SECONDS:
                delay = self._backoff_initial
            log.warning("event_stream_lost", node=stream.name, error=error, retry_in_seconds=delay)
            stream.stop.wait(delay)
            delay = min(delay * 2, self._backoff_max)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> bool:
    """Schedule `fn(*args)` on the loop from a stream thread; False once the loop is closed
    (the watcher was never closed and nobody is listening any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
