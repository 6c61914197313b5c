"""Start-up steps the daemon takes before it stands for election: which election the database
calls for, and waiting for the database (and upgrading its schema) rather than exiting when it
is down at boot. The loop calls them; they decide nothing about deployments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from sqlalchemy.exc import SQLAlchemyError

from controller import errors, sdnotify
from controller.leader import PgElector, SqliteLock
from controller.metrics import Health
from controller.settings import Settings
from controller.store import Store
from schema import migrate
from schema.engine import is_sqlite, mask_url, sqlite_path

log = structlog.get_logger(__name__)

# While the database is down at boot, each failed ping pushes systemd's start deadline this far
# past the next attempt: a ping against a black-holed host may itself take minutes.
START_EXTEND_SECONDS = 300.0


def elector(settings: Settings) -> PgElector | SqliteLock:
    """A file lock on SQLite (one host), an advisory-lock election on PostgreSQL."""
    url = settings.database_url
    path = sqlite_path(url)
    if is_sqlite(url):
        return SqliteLock(path if path is not None else Path("fog-memory.db"))
    return PgElector(url, retry_seconds=settings.leader_retry_seconds)


async def wait_for_store(
    settings: Settings,
    store: Store,
    *,
    health: Health,
    notifier: sdnotify.Notifier,
    stop: asyncio.Event,
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """The database may be down at boot: wait for it rather than exiting (until `stop`)."""
    delay = 0.5
    while not stop.is_set():
        try:
            await store.ping()
            if settings.auto_migrate:
                await upgrade_schema(settings.database_url)
            health.database_answered()
            return
        except errors.StoreUnavailable as exc:
            log.warning("database_unavailable", error=exc.reason, retry_in_seconds=delay)
            health.database_failed(exc.reason)
            # Waiting for the database is not a hung start: keep systemd's deadline ahead.
            notifier.extend_timeout(
                delay + START_EXTEND_SECONDS, f"waiting for the database: {exc.reason}"
            )
            await sleep(delay)
            delay = min(delay * 2, 30.0)
        finally:
            health.progressed()


async def upgrade_schema(url: str) -> None:
    """Alembic to head; a failure is the database being unavailable, retried by the caller."""
    try:
        await migrate.upgrade_async(url)
    except (OSError, SQLAlchemyError) as exc:
        raise errors.StoreUnavailable(f"schema upgrade failed: {exc}") from exc
    log.info("schema_ready", database=mask_url(url))
