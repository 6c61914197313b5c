"""sd_notify as systemd receives it: datagrams of KEY=value lines on the $NOTIFY_SOCKET socket.

These bind a real unix datagram socket (in tmp_path, or in the abstract namespace): local to
this process, no network, a few milliseconds, so they stay with the unit tests although
STYLE keeps sockets out of them; faking the socket would test nothing of the protocol.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controller.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield str(path), sock
    finally:
        sock.close()


def lines(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.watchdog_interval_seconds is None
    assert not n.ready("running")
    assert not n.watchdog()
    n.close()


def test_ready_status_watchdog_and_stopping_arrive_as_datagrams(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    try:
        assert n.ready("running: leader, 3 nodes")
        assert lines(sock) == ["READY=1", "STATUS=running: leader, 3 nodes"]
        assert n.watchdog()
        assert lines(sock) == ["WATCHDOG=1"]
        assert n.extend_timeout(1.5, "waiting for the database")
        assert lines(sock) == ["EXTEND_TIMEOUT_USEC=1500000", "STATUS=waiting for the database"]
        assert n.stopping("stopping: 2 reconciles in flight")
        assert lines(sock) == ["STOPPING=1", "STATUS=stopping: 2 reconciles in flight"]
    finally:
        n.close()


def test_stopping_is_sent_once_however_often_a_stop_is_asked(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    n = Notifier(path)
    try:
        assert n.stopping()
        assert not n.stopping()  # a second SIGTERM
        n.status("after")
        assert lines(sock) == ["STOPPING=1", "STATUS=stopping"]
        assert lines(sock) == ["STATUS=after"]
    finally:
        n.close()


def test_a_status_with_a_newline_stays_one_assignment(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    n = Notifier(path)
    try:
        n.status("database: connection refused\nREADY=1")
        assert lines(sock) == ["STATUS=database: connection refused READY=1"]
    finally:
        n.close()


def test_abstract_namespace_address() -> None:
    name = f"fog-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    n = Notifier("@" + name)
    try:
        assert n.ready("up")
        assert lines(sock) == ["READY=1", "STATUS=up"]
    finally:
        n.close()
        sock.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        pytest.param({"WATCHDOG_USEC": "30000000"}, 15.0, id="half-of-watchdog-usec"),
        pytest.param({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "SELF"}, 0.5, id="pid-is-us"),
        pytest.param({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None, id="pid-not-us"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "soon"}, None, id="garbage"),
        pytest.param({}, None, id="unset"),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None, tmp_path: Path) -> None:
    if env.get("WATCHDOG_PID") == "SELF":
        env = {**env, "WATCHDOG_PID": str(os.getpid())}
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "notify"), **env})
    assert n.watchdog_interval_seconds == interval


def test_watchdog_needs_a_socket_too() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "1000000"}).watchdog_interval_seconds is None


def test_a_socket_nobody_listens_on_warns_once_and_never_raises(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody"))
    try:
        with capture_logs() as logs:
            assert not n.watchdog()
            assert not n.watchdog()
        assert [e["event"] for e in logs] == ["sd_notify_failed"]
    finally:
        n.close()


def test_an_unsupported_address_disables_notification() -> None:
    with capture_logs() as logs:
        n = Notifier("vsock:2:1234")
    assert not n.enabled
    assert [e["event"] for e in logs] == ["sd_notify_unsupported_socket"]
