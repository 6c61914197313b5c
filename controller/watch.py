"""What wakes the loop between resyncs: PostgreSQL NOTIFY, or a cheap poll on SQLite.

Wake-ups only enqueue keys; the reconcile re-reads everything, so a lost notification can only
delay convergence until the next resync, never prevent it.

PostgreSQL: triggers (migration 0002) NOTIFY `fog_changes` when an operator-owned column of a
deployment, its resources or a node changes. The listener holds its own asyncpg connection
outside any pool (a pool's reset would `UNLISTEN *`), probes it periodically (asyncpg notices a
silently dead connection only on its next use), and after reconnecting asks for a full resync:
notifications sent while it was down are gone for good.

SQLite: no NOTIFY; an indexed poll of `updated_at` every second (as k3s' kine polls) finds
deployments and resources changed since the last look (`Store.changed_since`). Node edits are
seen by the heartbeat, which re-reads the node rows anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from controller import errors, pgsessions
from controller.pgsessions import NOTIFY_CHANNEL
from controller.store import Store

log = structlog.get_logger(__name__)

PROBE_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 30.0

OnDeployment = Callable[[uuid.UUID], None]
OnResync = Callable[[], None]


def parse(payload: str) -> tuple[str, uuid.UUID | None]:
    """PURE: (table, deployment id or None) from a NOTIFY payload; unparseable -> resync."""
    try:
        data = json.loads(payload)
        table = str(data.get("table", ""))
        raw = data.get("deployment_id")
        return table, uuid.UUID(str(raw)) if raw else None
    except (ValueError, TypeError, AttributeError):
        return "", None


class PgListener:
    def __init__(
        self,
        url: str,
        on_deployment: OnDeployment,
        on_resync: OnResync,
        *,
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        self._dsn = pgsessions.asyncpg_dsn(url)
        self._on_deployment = on_deployment
        self._on_resync = on_resync
        self._probe = probe_seconds

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        table, deployment_id = parse(payload)
        if deployment_id is not None:
            self._on_deployment(deployment_id)
        else:  # a node changed (or a payload we cannot read): look at everything
            self._on_resync()
        log.debug("notified", table=table, deployment_id=str(deployment_id))

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.5
        first = True
        while not stop.is_set():
            conn = None
            try:
                conn = await asyncio.wait_for(asyncpg.connect(self._dsn), PROBE_TIMEOUT_SECONDS)
                await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                log.info("listener_connected", channel=NOTIFY_CHANNEL)
                if not first:
                    self._on_resync()  # what was sent while we were away is lost
                first, delay = False, 0.5
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._probe)
                    if stop.is_set():
                        break
                    await pgsessions.probe(conn, PROBE_TIMEOUT_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning(
                    "listener_lost",
                    error=str(exc) or type(exc).__name__,
                    retry_in_seconds=delay,
                )
                first = False
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), PROBE_TIMEOUT_SECONDS)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)


class SqlitePoller:
    def __init__(
        self, store: Store, on_deployment: OnDeployment, *, seconds: float = POLL_SECONDS
    ) -> None:
        self._store = store
        self._on_deployment = on_deployment
        self._seconds = seconds
        self._since: datetime | None = None

    async def poll(self) -> int:
        """Enqueue what changed since the last poll; returns how many keys. The first poll
        only takes the starting point: the first resync looks at everything anyway."""
        first = self._since is None
        changed = await self._store.changed_since(self._since)
        for deployment_id, at in changed:
            if self._since is None or at > self._since:
                self._since = at
            if not first:
                self._on_deployment(deployment_id)
        return 0 if first else len(changed)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except (OSError, errors.ControllerError) as exc:
                log.warning("poll_failed", error=str(exc))
            except Exception as exc:  # a locked or busy file: try again next tick
                log.warning("poll_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._seconds)
