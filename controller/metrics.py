"""What the daemon tells the outside about itself: Prometheus metrics, and the answers of
`/livez` and `/readyz`, served together on FOG_METRICS_ADDR.

It sits beside the flow, not in it: the loop, the work queue and the Docker runtime report into
one `Metrics` object (and the loop into one `Health`) that the CLI builds and passes down. Each
`Metrics` owns its own `CollectorRegistry` rather than prometheus_client's process-global one,
so tests (and two controllers in one test process) never share counters.

Durations are measured with `time.perf_counter()` around the awaits by the callers:
`Histogram.time()` used as a decorator on an `async def` would time only the creation of the
coroutine, not its run.

The HTTP listener is the standard library's WSGI server in one daemon thread (threads per
request), with prometheus_client's WSGI app for `/metrics`. A thread rather than an asyncio
server, on purpose: `/livez` must still answer "stuck" when the event loop itself is blocked
(a synchronous call hogging it), and a server running on that loop could only time out. A
scrape never waits for the loop either. The two threads share only `Health`'s few fields,
under a lock.
"""

from __future__ import annotations

import enum
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from controller.settings import Settings

# controller-runtime's reconcile buckets, thinned, and stretched to five minutes: a reconcile
# that pulls an image legitimately takes minutes.
RECONCILE_BUCKETS_SECONDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS_SECONDS = (
    0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
)  # fmt: skip
RESYNC_BUCKETS_SECONDS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# /livez never asks for less than this much quiet before calling the loop stuck.
MIN_STALL_SECONDS = 60.0


class ReconcileResult(enum.StrEnum):
    """The `result` label of fog_controller_reconcile_total, as controller-runtime names it."""

    SUCCESS = "success"
    ERROR = "error"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """The work queue's two instruments (it reports through `workqueue.QueueObserver`)."""

    adds: Counter
    wait: Histogram

    def added(self) -> None:
        self.adds.inc()

    def waited(self, seconds: float) -> None:
        self.wait.observe(seconds)


class Metrics:
    """Every instrument of one controller, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.reconcile_total = Counter(
            "fog_controller_reconcile",
            "Reconciles by result: success, error (retried with per-key backoff), or requeue "
            "(done for now, look again after a delay).",
            ["result"],
            registry=r,
        )
        for result in ReconcileResult:
            self.reconcile_total.labels(result=result.value)
        self.reconcile_errors = Counter(
            "fog_controller_reconcile_errors",
            "Reconciles that ended in an error.",
            registry=r,
        )
        self.reconcile_time = Histogram(
            "fog_controller_reconcile_time_seconds",
            "Time one reconcile took, from dequeue to result.",
            buckets=RECONCILE_BUCKETS_SECONDS,
            registry=r,
        )
        self.workqueue_depth = Gauge(
            "fog_controller_workqueue_depth",
            "Deployment keys waiting in the work queue (not counting those being reconciled).",
            registry=r,
        )
        self.active_workers = Gauge(
            "fog_controller_active_workers",
            "Reconciles in progress.",
            registry=r,
        )
        self.workqueue = QueueMetrics(
            adds=Counter(
                "fog_controller_workqueue_adds",
                "Keys added to the work queue (a key already waiting is not added again).",
                registry=r,
            ),
            wait=Histogram(
                "fog_controller_workqueue_queue_duration_seconds",
                "How long a key waited in the work queue between its add and a worker's get.",
                buckets=QUEUE_WAIT_BUCKETS_SECONDS,
                registry=r,
            ),
        )
        self.deployments = Gauge(
            "fog_controller_deployments",
            "Deployments not yet deleted, by status, as of the last resync pass.",
            ["status"],
            registry=r,
        )
        self.replicas = Gauge(
            "fog_controller_replicas",
            "Replica rows not yet stopped or failed, by status, as of the last resync pass.",
            ["status"],
            registry=r,
        )
        self.nodes = Gauge(
            "fog_controller_nodes",
            "Nodes by status, as of the last resync pass.",
            ["status"],
            registry=r,
        )
        self.leader = Gauge(
            "fog_controller_leader",
            "1 while this process is the acting leader, else 0 (starting, standby, stopping).",
            registry=r,
        )
        self.docker_errors = Counter(
            "fog_controller_docker_errors",
            "Docker API calls that failed (transport errors, timeouts, engine errors other "
            "than 404), by node name and docker-py operation.",
            ["node", "operation"],
            registry=r,
        )
        self.resync_duration = Histogram(
            "fog_controller_resync_duration_seconds",
            "Time one full resync pass took.",
            buckets=RESYNC_BUCKETS_SECONDS,
            registry=r,
        )
        self.rebalance_moves = Counter(
            "fog_controller_rebalance_moves",
            "Rebalance moves that ended, by result: moved (the replica was replaced on an "
            "emptier node and stopped) or abandoned (the deployment changed under it, or its "
            "replacement could not be placed or did not serve in time).",
            ["result"],
            registry=r,
        )
        for outcome in ("moved", "abandoned"):
            self.rebalance_moves.labels(result=outcome)
        self._seen: dict[Gauge, set[str]] = {}

    def watch_queue(self, depth: Callable[[], int], active: Callable[[], int]) -> None:
        """Read the queue's sizes at scrape time (from the HTTP thread: len() of a deque or a
        set is atomic), so no code path that changes them has to remember the gauges."""
        self.workqueue_depth.set_function(lambda: float(depth()))
        self.active_workers.set_function(lambda: float(active()))

    def observe_reconcile(self, result: ReconcileResult, seconds: float) -> None:
        self.reconcile_total.labels(result=result.value).inc()
        if result is ReconcileResult.ERROR:
            self.reconcile_errors.inc()
        self.reconcile_time.observe(seconds)

    def rebalance_move(self, result: str) -> None:
        self.rebalance_moves.labels(result=result).inc()

    def docker_error(self, node: str, operation: str) -> None:
        self.docker_errors.labels(node=node, operation=operation).inc()

    def set_counts(self, gauge: Gauge, counts: Mapping[str, int], known: Iterable[str]) -> None:
        """Set one labelled gauge from a fresh count: every `known` label value and every one
        set before appears, at 0 when absent from `counts`, so a status that empties out drops
        to 0 instead of keeping its last value."""
        seen = self._seen.setdefault(gauge, set())
        seen.update(known)
        seen.update(counts)
        for label in seen:
            gauge.labels(label).set(counts.get(label, 0))


def stall_seconds(settings: Settings) -> float:
    """How long the loop may go without progress before /livez calls it stuck.

    Three resync periods, or two Docker call timeouts (a pass lists every engine and may wait a
    whole timeout on a black-holed one, then again on inspections), and never under a minute,
    so a slow engine or a briefly slow database is not mistaken for a hang."""
    return max(3 * settings.resync_seconds, 2 * settings.docker_timeout_seconds, MIN_STALL_SECONDS)


class Role(enum.StrEnum):
    """What this process is doing; leader election (when it comes) moves it between the two
    middle states. Today the only controller becomes the leader once it has started."""

    STARTING = "starting"
    LEADER = "leader"
    STANDBY = "standby"
    STOPPING = "stopping"


class Health:
    """Liveness and readiness, written by the event loop, read by the HTTP thread.

    Live: the loop made progress (a resync pass attempt, or a database attempt while waiting
    for it at boot, finished, whatever its outcome) within `stall_after_seconds`. A database
    that is down does not make the loop dead: restarting would not bring it back.

    Ready: this process has started and is the leader or a standby, and the last attempt to
    reach the database succeeded within `stall_after_seconds`.
    """

    def __init__(
        self, stall_after_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_after_seconds = stall_after_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._progress_at = clock()  # starting counts as progress
        self._database_at: float | None = None
        self._database_error: str | None = "not reached yet"
        self._role = Role.STARTING

    @property
    def role(self) -> Role:
        return self._role

    def set_role(self, role: Role) -> None:
        with self._lock:
            self._role = role

    def progressed(self) -> None:
        with self._lock:
            self._progress_at = self._clock()

    def database_answered(self) -> None:
        with self._lock:
            self._database_at = self._clock()
            self._database_error = None

    def database_failed(self, reason: str) -> None:
        with self._lock:
            self._database_error = reason

    def live(self) -> tuple[bool, str]:
        with self._lock:
            quiet = self._clock() - self._progress_at
        if quiet > self.stall_after_seconds:
            return False, (
                f"stuck: no progress for {quiet:.0f}s (limit {self.stall_after_seconds:g}s)"
            )
        return True, f"ok: last progress {quiet:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            role, at, error = self._role, self._database_at, self._database_error
            now = self._clock()
        if role not in (Role.LEADER, Role.STANDBY):
            return False, f"not ready: {role.value}"
        if error is not None:
            return False, f"not ready: database: {error}"
        if at is None or now - at > self.stall_after_seconds:
            return False, "not ready: database not reached recently"
        return True, f"ok: {role.value}, database answered {now - at:.1f}s ago"


# --- the HTTP listener --------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: stderr carries the daemon's JSON events only."""

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never holds up the exit

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _QuietHandler)


def _family(host: str, port: int) -> socket.AddressFamily:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return info[0][0]


class MetricsServer:
    """`/metrics`, `/livez` and `/readyz` on one address, served from a daemon thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        self._host, self._port = host, port
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port once started, should the setting say 0)."""
        if self._server is None:
            return self._host, self._port
        return self._host, int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        server = _Server((self._host, self._port), _family(self._host, self._port))
        server.set_app(self._app)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; blocks up to one poll interval (0.5 s)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        if path in ("/livez", "/readyz"):
            ok, why = self._health.live() if path == "/livez" else self._health.ready()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", why)
        if path == "/":
            return _text(start_response, "200 OK", "fog-controller: /metrics /livez /readyz")
        return _text(start_response, "404 Not Found", "not found")


def _text(start_response: StartResponse, status: str, body: str) -> Iterator[bytes]:
    data = (body + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return iter((data,))
