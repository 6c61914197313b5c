"""One place that turns a database URL into an async engine with the right per-backend setup.

SQLite needs three things PostgreSQL gives for free: foreign keys (off by default, and the
seed's cascades depend on them), a busy timeout (operators write the same file with the
sqlite3 shell while the controller runs), and write transactions that take the write lock at
BEGIN (a deferred transaction that reads, then writes after another writer committed, fails at
once with SQLITE_BUSY instead of waiting). Only transactions opened through `writer(engine)`
begin IMMEDIATE; reads stay deferred so that, in WAL mode, they never queue behind a writer.
The migrations, the store and the tests all build their engines here so that they behave alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option marking a connection that will write: on SQLite it begins IMMEDIATE.
WRITE_OPTION = "fog_write"


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine, marked for write transactions (see WRITE_OPTION)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def mask_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too broken to parse still must not leak a password
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", str(url))


def sqlite_path(url: str | URL) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_engine(url: str | URL, *, pool_size: int | None = None, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine for `url`; SQLite files get their parent directory created.

    `pool_size` (PostgreSQL): connections kept open. A pool smaller than the number of
    callers at once opens and closes a server connection per extra checkout (a backend
    process each): measured on the hollow-node benchmark, that halved placement throughput."""
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        if pool_size is not None:
            kwargs.setdefault("pool_size", pool_size)
            kwargs.setdefault("max_overflow", max(pool_size // 4, 2))
        return create_async_engine(url, **kwargs)

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below (pysqlite's own is unreliable).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Only writers take the write lock up front; readers in WAL mode never wait for it.
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
