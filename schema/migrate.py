"""Alembic without an alembic.ini, so migrations run the same from a wheel, a CLI or a test.

The daemon upgrades its database at startup and `fogctl` can do it by hand; neither can count
on a working directory that holds an ini file, so the config is built here and the scripts are
found next to this module. Alembic's command API is synchronous and our env.py drives the async
engine with `asyncio.run`, which refuses to run inside a live event loop: async callers (the
daemon, pytest-asyncio tests) use the `*_async` twins. `upgrade_async` and `downgrade_async`
run Alembic in a worker thread; `current_async` and `drift_async` only read, so they use the
caller's loop directly.

The autogenerate options live here rather than in env.py so that `drift()` compares the live
schema with the models under exactly the rules a new revision would be generated with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Column, Connection
from sqlalchemy.pool import NullPool

from schema import engine as engine_mod
from schema import models

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Key in `Config.attributes` under which env.py finds the database URL. Attributes, not a main
# option: ConfigParser would read a '%' in a URL-encoded password as interpolation.
URL_ATTRIBUTE = "fog_database_url"

_T = TypeVar("_T")


def make_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, with `url` for env.py."""
    config = Config()
    # ConfigParser interpolation: a '%' in the install path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    # Without it Alembic warns (an error under our pytest settings) about legacy splitting.
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes[URL_ATTRIBUTE] = url
    return config


def compare_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """True when a column default differs; None leaves the decision to Alembic.

    On PostgreSQL Alembic compares defaults by asking the server `reflected = declared`, and
    json has no '=' operator, so `nodes.labels` would fail the whole comparison. Its default is
    compared as text instead, minus the cast PostgreSQL adds when it stores it ('{}'::json).
    """
    if (
        context.dialect.name == "postgresql"
        and isinstance(metadata_column.type, JSON)
        and inspected_default is not None
        and rendered_metadata_default is not None
    ):
        return inspected_default.removesuffix("::json") != rendered_metadata_default
    return None


# Shared by env.py (new revisions) and `drift()` (the no-drift check in the tests).
AUTOGENERATE_OPTIONS: dict[str, Any] = {
    "compare_type": True,
    # Column defaults matter here (operators insert rows by hand and rely on them), so they are
    # compared too: SQLite compares the rendered text, PostgreSQL asks the server.
    "compare_server_default": compare_server_default,
    # No include_object filter: every table, column, index and constraint is compared. The
    # triggers, the trigger function and the PostgreSQL enum types are not in the models'
    # metadata, but autogenerate never reflects those kinds of object, so none is excluded;
    # tests/integration/test_migrations.py checks them (and the CHECK names) by hand instead.
}


def _refuse_inside_event_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"schema.migrate.{name}() is synchronous and starts its own event loop; "
        f"from async code await schema.migrate.{name}_async() instead"
    )


def upgrade(url: str, revision: str = "head") -> None:
    _refuse_inside_event_loop("upgrade")
    command.upgrade(make_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    _refuse_inside_event_loop("downgrade")
    command.downgrade(make_config(url), revision)


def heads() -> list[str]:
    """The head revisions of the packaged scripts; more than one means an unmerged branch."""
    return list(ScriptDirectory.from_config(make_config()).get_heads())


def current(url: str) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    _refuse_inside_event_loop("current")
    return asyncio.run(current_async(url))


def drift(url: str) -> list[Any]:
    """Autogenerate's differences between the live schema and `schema.models`; [] is clean."""
    _refuse_inside_event_loop("drift")
    return asyncio.run(drift_async(url))


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


async def downgrade_async(url: str, revision: str) -> None:
    await asyncio.to_thread(downgrade, url, revision)


async def current_async(url: str) -> str | None:
    return await _with_connection(url, _current_revision)


async def drift_async(url: str) -> list[Any]:
    return await _with_connection(url, _compare)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _compare(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"target_metadata": models.Base.metadata, **AUTOGENERATE_OPTIONS},
    )
    return list(compare_metadata(context, models.Base.metadata))


async def _with_connection(url: str, work: Callable[[Connection], _T]) -> _T:
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()
