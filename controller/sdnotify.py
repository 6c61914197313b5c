"""sd_notify(3) with the standard library: tell systemd (Type=notify) that the daemon is ready,
alive (the watchdog), or stopping, with a human STATUS line for `systemctl status`.

The protocol is one datagram of newline-separated `KEY=value` lines to the unix socket named
by $NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace. Without
NOTIFY_SOCKET (not under systemd, or under Docker) every call is a no-op, so the loop calls it
unconditionally. A notification is best effort: a failed send is logged, never raised, since
losing one must not take the controller down (a lost WATCHDOG=1 is covered by the next one).

The CLI reads the environment once (`Notifier.from_env`) and passes the notifier down, as it
does with Settings.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """One service manager connection (or none); used from the event loop thread only."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        if address and address[0] not in "/@":
            # Newer systemd also speaks vsock:...; we do not, so say so once and stay quiet.
            log.warning("sd_notify_unsupported_socket", notify_socket=address)
            address = None
        self._address = address
        self._target = "\0" + address[1:] if address and address[0] == "@" else address
        self._watchdog_usec = watchdog_usec if address and watchdog_usec else None
        self._sock: socket.socket | None = None
        self._failed = False
        self._stopping = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], pid: int | None = None) -> Notifier:
        """As sd_watchdog_enabled(3): WATCHDOG_USEC counts only when WATCHDOG_PID is unset or
        names this process (a child that inherited the variables must not ping for us)."""
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        mine = not wd_pid or wd_pid == str(os.getpid() if pid is None else pid)
        if raw.isdigit() and int(raw) > 0 and mine:
            usec = int(raw)
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_interval_seconds(self) -> float | None:
        """Half the watchdog timeout, as sd_watchdog_enabled(3) recommends; None: no watchdog."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; True when it was handed to the socket."""
        if self._target is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must drop the message, not block the event loop.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._target)
        except OSError as exc:
            if not self._failed:  # one warning, not one every watchdog period
                log.warning("sd_notify_failed", notify_socket=self._address, error=str(exc))
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", _status(status))

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1 once, however often a stop is asked for."""
        if self._stopping:
            return False
        self._stopping = True
        return self.notify("STOPPING=1", _status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """Push systemd's start (or stop) deadline to `seconds` from now (systemd >= 236)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", _status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    # One STATUS line: a newline would end the assignment and start a bogus one.
    return "STATUS=" + " ".join(text.split())


async def keep_alive(
    notifier: Notifier, live: Callable[[], tuple[bool, str]], interval: float
) -> None:
    """WATCHDOG=1 every `interval` (half the watchdog period), only while `live()` (/livez)
    says so: a stuck loop withholds the pings (a blocked event loop cannot run this task at
    all), and systemd restarts the service."""
    withheld = False
    while True:
        ok, why = live()
        if ok:
            notifier.watchdog()
        elif not withheld:
            log.error("watchdog_withheld", reason=why)
        withheld = not ok
        await asyncio.sleep(interval)
