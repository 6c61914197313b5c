"""A node's Docker calls: its client, its call slots and stop slots, threads, retries.

docker-py is blocking, so each call runs in a dedicated thread pool sized for all nodes
(asyncio's default pool has only cpu+4 threads, which would cap a whole fog at ~6 calls). A
per-node semaphore bounds calls in flight to `node_concurrency`, and the client's HTTP pool is
sized to match, so requests never queue inside urllib3. Graceful stops have their own slots
and threads (see `STOPS_PER_NODE`). Every failure leaves here translated (engine_errors.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePath
from typing import Any, TypeVar

import docker
import docker.errors
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller import errors
from controller.metrics import Metrics
from controller.model import NodeRecord
from controller.runtime import tls
from controller.runtime.engine_connect import EngineConnector, close_socket_on_failed_connect
from controller.runtime.engine_errors import translate
from controller.runtime.podman import EngineFlavour, engine_flavour
from controller.settings import Settings

log = structlog.get_logger("controller.runtime.docker")

T = TypeVar("T")

DOCKER_CALL_ATTEMPTS = 3
# Graceful stops in flight per node. A stop spends the container's grace period waiting for it
# to exit, which costs the engine nothing, so stops do not take the node's
# FOG_NODE_CONCURRENCY slots (creates, starts, removes): a scale-down signals its containers
# together, as Swarm's agent does, instead of one slot-full at a time, and a slow-stopping
# container cannot hold up the creates of a rollout beside it.
STOPS_PER_NODE = 64


class EngineCalls:
    """How the runtime calls each node's engine. `DockerRuntime` is built on it (a subclass,
    so that its calls stay methods of the runtime: bench/trace.py times `_raw` and `_in`)."""

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
        self._executor = ThreadPoolExecutor(
            max_workers=max(8, settings.node_concurrency * 8), thread_name_prefix="docker"
        )
        # Stops wait out grace periods in their own threads, so they never starve other calls.
        self._stopper = ThreadPoolExecutor(
            max_workers=STOPS_PER_NODE, thread_name_prefix="docker-stop"
        )

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

    async def _flavour(self, node: NodeRecord) -> EngineFlavour:
        """Which engine answers at the node's URL (`/version`, asked once per node)."""
        key = (node.name, node.docker_url)
        known = self._flavours.get(key)
        if known is None:
            version = await self._unlimited(node, self._client(node).version)
            known = self._flavours[key] = engine_flavour(version)
            log.info("engine_identified", node=node.name, engine=known.value)
        return known

    async def _stop_call(self, node: NodeRecord, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A stop, retried as `_call` does, in the node's stop slots and the stop threads."""
        slots = self._stop_slots.get(node.docker_url)
        if slots is None:
            slots = self._stop_slots[node.docker_url] = asyncio.Semaphore(STOPS_PER_NODE)

        async def once() -> T:
            async with slots:
                return await self._in(self._stopper, node, fn, *args, **kw)

        return await self._retried(node, "stop container", once)
