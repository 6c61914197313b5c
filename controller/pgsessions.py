"""The store's statements on the two PostgreSQL sessions that live outside its pool.

The leader's advisory lock and the NOTIFY listener each hold a dedicated asyncpg connection: a
pool resets what is handed back to it (`UNLISTEN *`, session locks gone with the session). What
those sessions run is SQL of the daemon all the same, so it is written here, beside
controller/store/, and controller/leader.py and controller/watch.py only call it: between
the two modules they hold every statement the daemon runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import make_url

from schema.models import NOTIFY_CHANNEL

# pg_advisory_lock key: any constant works if every controller uses the same one.
ADVISORY_LOCK_KEY = 0x0F0C_0417

__all__ = ["ADVISORY_LOCK_KEY", "NOTIFY_CHANNEL", "asyncpg_dsn", "probe", "try_lead"]


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy `postgresql+asyncpg://` URL as the DSN asyncpg itself takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def probe(conn: Any, timeout_seconds: float) -> None:
    """A round trip: asyncpg notices a silently dead connection only when it next uses it."""
    await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout_seconds)


async def try_lead(conn: Any, holder: str) -> int | None:
    """Take the leader's lock on this session if it is free, and then bump the fencing epoch
    (see controller/leader.py): the new epoch, or None when another session holds the lock."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
        return None
    epoch = await conn.fetchval(
        "UPDATE control_plane SET epoch = epoch + 1, holder = $1, "
        "acquired_at = now() WHERE id = 1 RETURNING epoch",
        holder,
    )
    return int(epoch)
