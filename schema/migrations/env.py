"""Alembic's entry point: runs the revisions over the async engine every other caller uses.

`schema.migrate` builds the config and passes the URL in `config.attributes`; a plain
`sqlalchemy.url` main option is honoured too so the `alembic` CLI still works with an ini file.
The engine comes from `schema.engine.create_engine` so that SQLite migrations run with the same
foreign-key and locking pragmas as the controller, and with a NullPool so that no connection
outlives the run (a PostgreSQL template database cannot be cloned while one is open).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from schema import engine as engine_mod
from schema import migrate, models

config = context.config


def _url() -> str:
    url = config.attributes.get(migrate.URL_ATTRIBUTE) or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use schema.migrate, or set sqlalchemy.url")
    return str(url)


def run_migrations_offline() -> None:
    """Write the SQL instead of running it (`alembic upgrade --sql`), for a DBA to review."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=models.Base.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=engine_mod.is_sqlite(url),
        **migrate.AUTOGENERATE_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # SQLite rebuilds a table to change it (0004): with foreign keys on, dropping the old
        # table would cascade its deletes into the children. The pragma is a no-op inside a
        # transaction, so it is set before one begins, on the driver's connection (an
        # execute() through SQLAlchemy would begin one); a migration that rebuilds runs
        # `PRAGMA foreign_key_check` before it commits. The connection is not pooled.
        cursor = connection.connection.cursor()
        cursor.execute("PRAGMA foreign_keys = OFF")
        cursor.close()
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        # SQLite cannot ALTER most things; batch mode makes autogenerate emit copy-and-move.
        render_as_batch=connection.dialect.name == "sqlite",
        **migrate.AUTOGENERATE_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = engine_mod.create_engine(_url(), poolclass=NullPool)
    try:
        # A writer: on SQLite the migration's transaction takes the write lock at BEGIN, so it
        # waits for a concurrent writer (busy_timeout) instead of failing when it first writes.
        async with engine_mod.writer(engine).connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
