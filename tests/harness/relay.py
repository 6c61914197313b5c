"""A loopback TCP relay that counts the connections it accepts.

Two uses in the TLS tests: in front of a TLS-protected engine it proves that a node refused
for want of certificates was never contacted at all (zero connections, not merely a failed
handshake); in front of an engine's unix socket it is a plain-TCP engine, without starting a
dockerd that listens unprotected. Threads, not asyncio: the code under test calls Docker from
threads and the relay must not depend on the test's event loop being free.

Plain module (no pytest import), like the rest of the harness.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

ACCEPT_POLL_SECONDS = 0.1
CHUNK_BYTES = 65536


class Relay:
    """Listens on 127.0.0.1:<free port>; each connection is relayed to `target`, a unix
    socket path (str) or a (host, port) pair. `accepted` counts connections so far."""

    def __init__(self, target: str | tuple[str, int]) -> None:
        self.target = target
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start accepting; idempotent."""
        if self._acceptor.ident is None:
            self._acceptor.start()
        return self

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                upstream.close()
                raise
            return upstream
        return socket.create_connection(self.target, timeout=10)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self._lock:
                self.accepted += 1
                self._sockets.append(client)
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=_pump, args=(src, dst), daemon=True)
                self._threads.append(pump)
                pump.start()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until `src` ends, then end `dst`'s writing side (half-close, as TCP does)."""
    with contextlib.suppress(OSError):
        while data := src.recv(CHUNK_BYTES):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
