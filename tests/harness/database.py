"""Throwaway PostgreSQL databases and SQLite files, migrated once and cloned per test.

Running the migrations for every test would cost a second each on PostgreSQL; instead one
template database (and one template SQLite file) is migrated per session and each test gets a
copy: `CREATE DATABASE ... TEMPLATE` on PostgreSQL, a file copy on SQLite. Names carry a random
suffix so that runs on a shared server never collide, and everything created is dropped at the
end. It imports no pytest on purpose: benchmarks use the same databases.

`FOG_TEST_DATABASE_URL` is the admin URL (any database the user may connect to that is not one
we create); its user needs CREATEDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from schema import engine as engine_mod
from schema import migrate

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "fogtest_"


def admin_url_from_env() -> str:
    return os.environ.get("FOG_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL


def unique_name(kind: str = "db") -> str:
    return f"{DATABASE_PREFIX}{kind}_{uuid.uuid4().hex[:16]}"


def _with_database(url: str | URL, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _quote(name: str) -> str:
    # Names come from unique_name(), but a caller may pass its own; quote like an identifier.
    return '"' + name.replace('"', '""') + '"'


async def _admin_execute(admin_url: str, *statements: str, **params: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    engine = engine_mod.create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement), params)
    finally:
        await engine.dispose()


async def create_pg_database(
    admin_url: str, *, template: str | None = None, name: str | None = None
) -> str:
    """Create an empty database (or a copy of `template`, a database URL) and return its URL.

    PostgreSQL refuses to copy a template while anyone is connected to it, so callers must
    have disposed of every engine on the template first.
    """
    name = name or unique_name()
    statement = f"CREATE DATABASE {_quote(name)}"
    if template is not None:
        template_name = make_url(template).database
        if not template_name:
            raise ValueError(f"template URL names no database: {engine_mod.mask_url(template)}")
        statement += f" TEMPLATE {_quote(template_name)}"
    await _admin_execute(admin_url, statement)
    return _with_database(admin_url, name)


async def drop_pg_database(url: str, *, admin_url: str | None = None) -> None:
    """Drop the database `url` names, first ending any session still connected to it.

    Without `admin_url` the same server's `postgres` database is used for the DROP.
    """
    name = make_url(url).database
    if not name:
        raise ValueError(f"URL names no database: {engine_mod.mask_url(url)}")
    await _admin_execute(
        admin_url or _with_database(url, "postgres"),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = :name AND pid <> pg_backend_pid()",
        f"DROP DATABASE IF EXISTS {_quote(name)}",
        name=name,
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.resolve()}"


def copy_sqlite_database(source: Path, destination: Path) -> str:
    """Copy a SQLite database with the backup API (safe even if a WAL file is still around)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(destination)) as dst,
    ):
        src.backup(dst)
    return sqlite_url(destination)


class TemplateDatabases:
    """Migrated templates made on first use, cloned per test, all dropped by `close()`.

    Lazily so that a run of SQLite-only tests needs no PostgreSQL server, and the reverse.
    """

    def __init__(self, admin_url: str, workdir: Path) -> None:
        self.admin_url = admin_url
        self.workdir = workdir
        self._lock = asyncio.Lock()
        self._pg_template: str | None = None
        self._sqlite_template: Path | None = None
        self._pg_databases: set[str] = set()

    async def pg_template(self) -> str:
        async with self._lock:
            if self._pg_template is None:
                url = await create_pg_database(self.admin_url, name=unique_name("template"))
                try:
                    await migrate.upgrade_async(url)
                except BaseException:
                    await drop_pg_database(url, admin_url=self.admin_url)
                    raise
                self._pg_template = url
            return self._pg_template

    async def sqlite_template(self) -> Path:
        async with self._lock:
            if self._sqlite_template is None:
                path = self.workdir / f"{unique_name('template')}.db"
                await migrate.upgrade_async(sqlite_url(path))
                self._sqlite_template = path
            return self._sqlite_template

    async def empty_pg(self) -> str:
        url = await create_pg_database(self.admin_url)
        self._pg_databases.add(url)
        return url

    async def migrated_pg(self) -> str:
        url = await create_pg_database(self.admin_url, template=await self.pg_template())
        self._pg_databases.add(url)
        return url

    async def migrated_sqlite(self, directory: Path) -> str:
        template = await self.sqlite_template()
        return await asyncio.to_thread(
            copy_sqlite_database, template, directory / f"{unique_name()}.db"
        )

    async def drop(self, url: str) -> None:
        """Drop a PostgreSQL database made here; SQLite files go with their directory."""
        if engine_mod.is_sqlite(url):
            return
        await drop_pg_database(url, admin_url=self.admin_url)
        self._pg_databases.discard(url)

    async def close(self) -> None:
        for url in sorted(self._pg_databases):
            await self.drop(url)
        if self._pg_template is not None:
            await drop_pg_database(self._pg_template, admin_url=self.admin_url)
            self._pg_template = None
        if self._sqlite_template is not None:
            await asyncio.to_thread(_remove_sqlite_files, self._sqlite_template)
            self._sqlite_template = None


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
