"""Database fixtures: every test gets its own freshly migrated PostgreSQL database or SQLite file.

`db_url` runs each test on both backends (ids `pg` and `sqlite`), because the controller must
behave the same on the production database and on the embedded default. The databases are
clones of templates migrated once per session (see `tests.harness.database`), so a test costs
a `CREATE DATABASE ... TEMPLATE` or a file copy, and no test sees another's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schema import engine as engine_mod
from tests.harness import database

BACKEND_PARAMS = [pytest.param("postgresql", id="pg"), pytest.param("sqlite", id="sqlite")]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return database.admin_url_from_env()


@pytest.fixture(scope="session")
async def template_databases(
    pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[database.TemplateDatabases]:
    templates = database.TemplateDatabases(
        pg_admin_url, tmp_path_factory.mktemp("sqlite-templates")
    )
    try:
        yield templates
    finally:
        await templates.close()


@pytest.fixture(params=BACKEND_PARAMS)
async def db_url(
    request: pytest.FixtureRequest,
    template_databases: database.TemplateDatabases,
    tmp_path: Path,
) -> AsyncIterator[str]:
    """A migrated, empty database for this test alone."""
    if request.param == "postgresql":
        url = await template_databases.migrated_pg()
    else:
        url = await template_databases.migrated_sqlite(tmp_path)
    try:
        yield url
    finally:
        await template_databases.drop(url)


@pytest.fixture(params=BACKEND_PARAMS)
async def empty_db_url(
    request: pytest.FixtureRequest,
    template_databases: database.TemplateDatabases,
    tmp_path: Path,
) -> AsyncIterator[str]:
    """A database that exists but was never migrated, for the migration tests."""
    if request.param == "postgresql":
        url = await template_databases.empty_pg()
    else:
        url = database.sqlite_url(tmp_path / "empty.db")
    try:
        yield url
    finally:
        await template_databases.drop(url)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    created = engine_mod.create_engine(db_url)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.fixture
async def pg_url(template_databases: database.TemplateDatabases) -> AsyncIterator[str]:
    """A migrated PostgreSQL database, for behaviour only PostgreSQL has (NOTIFY, election)."""
    url = await template_databases.migrated_pg()
    try:
        yield url
    finally:
        await template_databases.drop(url)


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    created = engine_mod.create_engine(pg_url)
    try:
        yield created
    finally:
        await created.dispose()
