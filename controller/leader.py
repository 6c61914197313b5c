"""Leader election and the fencing epoch.

PostgreSQL: many controllers may run against one database; the one holding a session-level
advisory lock acts, the others stand by and retry every `retry_seconds`. The lock lives on a
dedicated asyncpg connection outside any pool (a pool resets returned connections and would
drop it); its statements are the store's, in controller/pgsessions.py. When that connection
dies the server releases the lock, so a standby takes over within one retry period of the
leader's death.

A lock alone cannot stop a leader that has lost it without noticing (a paused process, a
partition): client-go's own docs say as much of leases. So on winning, the leader bumps
`control_plane.epoch` and keeps the value; every write it makes first reads the epoch under a
share lock in the same transaction (`Store`), and a successor's bump, which needs an exclusive
row lock, waits for in-flight writes and then makes every later write of the old leader fail
with `errors.Deposed`. Containers carry the epoch in a label, so a stale leader's container is
recognisable, and intent-before-action keeps a deposed leader's Docker calls harmless: it can
only create containers for replicas already committed as `starting`, under their fixed names.

SQLite: one controller per database file, enforced with an exclusive `flock` on a lock file
beside it; a second controller refuses to start with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import structlog

from controller import errors, pgsessions

log = structlog.get_logger(__name__)

# Kubernetes' leader election retries every 2 s; our lock is held by a live session, so the
# retry period bounds takeover time.
RETRY_SECONDS = 2.0
CHECK_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 5.0
# The server drops the lock session after this much silence (at least; see _connect).
IDLE_SESSION_FLOOR_SECONDS = 10.0


class AlreadyRunning(errors.PermanentError):
    """Another controller owns this SQLite database."""


def identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Lease:
    """Leadership as held: the epoch to fence writes with, and an event set when it is lost."""

    epoch: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _monitor: asyncio.Task[None] | None = None
    _conn: Any = None
    _lockfile: IO[bytes] | None = None

    async def release(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), CHECK_TIMEOUT_SECONDS)
        if self._lockfile is not None:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None


class PgElector:
    def __init__(
        self,
        url: str,
        holder: str | None = None,
        *,
        retry_seconds: float = RETRY_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self._dsn = pgsessions.asyncpg_dsn(url)
        self._holder = holder or identity()
        self._retry = retry_seconds
        self._check = check_seconds

    async def acquire(self, stop: asyncio.Event) -> Lease | None:
        """Stand by until this process leads (a Lease) or `stop` is set (None)."""
        announced = False
        while not stop.is_set():
            conn = None
            try:
                conn = await asyncio.wait_for(self._connect(), CHECK_TIMEOUT_SECONDS)
                epoch = await pgsessions.try_lead(conn, self._holder)
                if epoch is not None:
                    lease = Lease(epoch=epoch, _conn=conn)
                    lease._monitor = asyncio.create_task(self._watch(lease))
                    log.info("leader_elected", epoch=lease.epoch, holder=self._holder)
                    return lease
                if not announced:
                    log.info("leader_standby", holder=self._holder)
                    announced = True
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("leader_election_failed", error=str(exc) or type(exc).__name__)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry)
        return None

    async def _connect(self) -> Any:
        """The lock's connection, which the server drops once it goes quiet: a leader whose
        host vanishes sends no FIN, and without this the server would keep its session (and
        the lock) until TCP keepalive gives up, two hours by default. The leader probes every
        `check_seconds`, so a live leader is never idle that long (PostgreSQL 14+; older
        servers refuse the setting and get TCP keepalives only)."""
        idle_ms = str(int(max(self._check * 5, IDLE_SESSION_FLOOR_SECONDS) * 1000))
        try:
            return await asyncpg.connect(
                self._dsn, server_settings={"idle_session_timeout": idle_ms}
            )
        except asyncpg.PostgresError as exc:
            if "idle_session_timeout" not in str(exc):
                raise
            return await asyncpg.connect(self._dsn)

    async def _watch(self, lease: Lease) -> None:
        """asyncpg notices a silently dead connection only when it next uses it: probe it."""
        conn = lease._conn
        try:
            while True:
                await asyncio.sleep(self._check)
                await pgsessions.probe(conn, CHECK_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("leader_lost", epoch=lease.epoch, error=str(exc) or type(exc).__name__)
            lease.lost.set()
            with contextlib.suppress(Exception):
                conn.terminate()


class SqliteLock:
    """The SQLite stand-in for election: exclusive, or refuse to start."""

    def __init__(self, database_path: Path) -> None:
        self.path = database_path.with_name(database_path.name + ".lock")

    async def acquire(self, stop: asyncio.Event) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(
                f"another fog-controller is running on this SQLite database (lock {self.path}); "
                "SQLite supports one controller per database file: use PostgreSQL for several"
            ) from None
        return Lease(epoch=0, _lockfile=handle)
