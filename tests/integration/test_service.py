"""The daemon as systemd and Prometheus see it: a child process under a notify socket, with its
metrics and health listener on a loopback port.

It needs no Docker engine (no nodes are registered) and no PostgreSQL (a temporary SQLite
file), so it runs everywhere the unit tests run. Every wait is on a condition with a deadline:
a datagram arriving, an endpoint answering, the process exiting.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from controller.metrics import Health, Metrics, MetricsServer, Role
from controller.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# Variables of the parent that would change the child's configuration behind the test's back.
_SCRUBBED = ("DOCKER_HOST", "STATE_DIRECTORY", "XDG_STATE_HOME", "NOTIFY_SOCKET", "WATCHDOG_PID")
STARTUP_SECONDS = 60.0  # a cold interpreter, imports and the SQLite migration

METRIC_NAMES = (
    "fog_controller_reconcile_total",
    "fog_controller_reconcile_errors_total",
    "fog_controller_reconcile_time_seconds",
    "fog_controller_workqueue_depth",
    "fog_controller_workqueue_queue_duration_seconds",
    "fog_controller_workqueue_adds_total",
    "fog_controller_replicas",
    "fog_controller_nodes",
    "fog_controller_leader",
    "fog_controller_docker_errors_total",
    "fog_controller_resync_duration_seconds",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def controller_command(*args: str) -> list[str]:
    """`fog-controller ARGS` from the virtualenv when installed, else `python -m controller`."""
    script = Path(sys.executable).with_name("fog-controller")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "controller", *args]


def check_health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        controller_command("check-health"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(check: Callable[[], object], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within}s")
        time.sleep(0.05)


@dataclass
class NotifySocket:
    """The service manager's end: collects every datagram the daemon sends."""

    sock: socket.socket
    path: str
    messages: list[list[str]] = field(default_factory=list)

    def wait_for(self, assignment: str, within: float) -> list[str]:
        """The first message (seen before or arriving within `within` s) with a line that
        starts with `assignment`."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if any(line.startswith(assignment) for line in message):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {assignment} within {within}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    def all(self) -> list[str]:
        return [line for message in self.messages for line in message]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield NotifySocket(sock, path)
    finally:
        sock.close()


def service_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOG_") and k not in _SCRUBBED}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
        XDG_STATE_HOME=str(tmp_path / "state"),
        FOG_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/fog.db",
        FOG_REGISTER_LOCAL_NODE="false",
        FOG_METRICS_ADDR=f"127.0.0.1:{port}",
        FOG_RESYNC_SECONDS="0.5",
        FOG_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def test_daemon_under_systemd_notify_socket(tmp_path: Path, notify_socket: NotifySocket) -> None:
    port = free_port()
    env = service_env(tmp_path, port, NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="1000000")
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "run"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = notify_socket.wait_for("READY=1", within=STARTUP_SECONDS)
        # READY=1 comes as soon as the daemon can serve, as a standby; the lead follows (on
        # SQLite at once: the file lock is the election).
        assert any(line.startswith("STATUS=standing by") for line in ready), ready
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/livez")[0] == 200
        assert get(base + "/readyz")[0] == 200
        notify_socket.wait_for("STATUS=running: leader", within=STARTUP_SECONDS)
        status, body = get(base + "/readyz")
        assert (status, body.split(",")[0]) == (200, "ok: leader")

        status, text = get(base + "/metrics")
        assert status == 200
        missing = [n for n in METRIC_NAMES if f"# TYPE {n} " not in text]
        assert not missing, f"not on /metrics: {missing}"
        assert re.search(r"^fog_controller_leader 1\.0$", text, re.M), "the only one leads"
        # The inventory gauges come with the first resync pass, which starts after READY=1.
        wait_until(
            lambda: re.search(
                r'^fog_controller_nodes\{status="ready"\} 0\.0$', get(base + "/metrics")[1], re.M
            ),
            within=10,
            what="fog_controller_nodes after the first resync",
        )

        # WATCHDOG_USEC=1 s: a ping every half second while the loop is live.
        notify_socket.wait_for("WATCHDOG=1", within=5)

        done = check_health(env)
        assert (done.returncode, done.stderr) == (0, "")

        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", within=10)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "daemon.log").read_text()
    assert '"event": "metrics_listening"' in output
    lines = notify_socket.all()
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert not any("Traceback" in line for line in output.splitlines()), output


def test_waiting_for_the_database_at_boot_is_live_but_not_ready(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    port = free_port()
    nothing = free_port()  # connection refused: the database is down
    env = service_env(
        tmp_path,
        port,
        NOTIFY_SOCKET=notify_socket.path,
        FOG_DATABASE_URL=f"postgresql+asyncpg://fog@127.0.0.1:{nothing}/fog",
        FOG_AUTO_MIGRATE="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "run"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # systemd's start deadline is pushed out instead of the start failing.
        waiting = notify_socket.wait_for("STATUS=starting: connecting to the database", 60)
        assert "READY=1" not in waiting
        extend = notify_socket.wait_for("STATUS=waiting for the database", within=60)
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in extend), extend
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/livez")[0] == 200
        status, body = get(base + "/readyz")
        assert status == 503
        assert body.startswith("not ready: ")
        done = check_health(env)
        assert done.returncode == 1
        assert done.stderr.startswith("fog-controller: unhealthy: /readyz: HTTP 503: not ready")
        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", within=10)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "READY=1" not in notify_socket.all()


def test_check_health_fails_in_one_line_when_nothing_listens(tmp_path: Path) -> None:
    env = service_env(tmp_path, free_port())
    done = check_health(env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("fog-controller: unhealthy: /livez: cannot reach")


def test_check_health_with_the_listener_off_fails(tmp_path: Path) -> None:
    env = service_env(tmp_path, 0, FOG_METRICS_ADDR="")
    done = check_health(env)
    assert done.returncode == 1
    assert "FOG_METRICS_ADDR is empty" in done.stderr


def test_listener_answers_from_its_own_thread() -> None:
    """The endpoints read Health from the HTTP thread: a stuck loop still gets its 503."""
    now = [0.0]
    health = Health(60, lambda: now[0])
    server = MetricsServer("127.0.0.1", free_port(), Metrics(), health)
    server.start()
    try:
        host, port = server.address
        base = f"http://{host}:{port}"
        assert get(base + "/livez") == (200, "ok: last progress 0.0s ago\n")
        assert get(base + "/readyz") == (503, "not ready: starting\n")
        health.set_role(Role.LEADER)
        health.database_answered()
        assert get(base + "/readyz")[0] == 200
        now[0] = 61.0
        assert get(base + "/livez") == (503, "stuck: no progress for 61s (limit 60s)\n")
        assert get(base + "/nothing")[0] == 404
    finally:
        server.stop()


def test_listener_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = MetricsServer("127.0.0.1", port, Metrics(), Health(60))
        with pytest.raises(OSError, match="in use"):
            server.start()


def test_env_example_documents_every_setting() -> None:
    example = (REPO_ROOT / "deploy" / "fog-controller.env.example").read_text()
    documented = set(re.findall(r"^#?(FOG_[A-Z_]+)=", example, re.M))
    wanted = {f"FOG_{f.name.upper()}" for f in fields(Settings)}
    assert wanted - documented == set(), "add them to deploy/fog-controller.env.example"
    assert documented - wanted == set(), "no longer settings"
    assert re.search(r"^#DOCKER_HOST=", example, re.M)
