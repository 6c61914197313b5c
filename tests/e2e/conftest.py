"""Fixtures for the end-to-end tests: fresh databases, clean engines, daemons that never outlive
their test.

The database fixtures mirror tests/integration/conftest.py (whose fixtures are not visible
here): one migrated PostgreSQL database or SQLite file per test, cloned from a template.
Teardown order matters and follows from the dependencies: the daemons stop first (so none can
recreate a container), then the managed containers are removed, then the database is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.e2e.daemon import Daemons, Sql
from tests.harness import database
from tests.harness.engines import Cluster
from tests.harness.fleet import remove_managed_containers, remove_managed_volumes

BACKEND_PARAMS = [pytest.param("postgresql", id="pg"), pytest.param("sqlite", id="sqlite")]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return database.admin_url_from_env()


@pytest.fixture(scope="session")
async def template_databases(
    pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[database.TemplateDatabases]:
    templates = database.TemplateDatabases(
        pg_admin_url, tmp_path_factory.mktemp("e2e-sqlite-templates")
    )
    try:
        yield templates
    finally:
        await templates.close()


@asynccontextmanager
async def _migrated(
    backend: str, templates: database.TemplateDatabases, directory: Path
) -> AsyncIterator[str]:
    if backend == "postgresql":
        url = await templates.migrated_pg()
    else:
        url = await templates.migrated_sqlite(directory)
    try:
        yield url
    finally:
        await templates.drop(url)


@pytest.fixture(params=BACKEND_PARAMS)
async def db_url(
    request: pytest.FixtureRequest,
    template_databases: database.TemplateDatabases,
    tmp_path: Path,
) -> AsyncIterator[str]:
    """A migrated, empty database for this test alone, on each backend."""
    async with _migrated(request.param, template_databases, tmp_path) as url:
        yield url


@pytest.fixture
async def pg_url(
    template_databases: database.TemplateDatabases, tmp_path: Path
) -> AsyncIterator[str]:
    """A migrated, empty PostgreSQL database, for tests that need only one backend."""
    async with _migrated("postgresql", template_databases, tmp_path) as url:
        yield url


@pytest.fixture
async def sql(db_url: str) -> AsyncIterator[Sql]:
    operator = Sql(db_url)
    try:
        yield operator
    finally:
        await operator.close()


@pytest.fixture
async def pg_sql(pg_url: str) -> AsyncIterator[Sql]:
    operator = Sql(pg_url)
    try:
        yield operator
    finally:
        await operator.close()


@pytest.fixture
async def engines(cluster: Cluster) -> AsyncIterator[list[str]]:
    """The three engines' URLs, running; every managed container, then every volume the
    controller made, is removed afterwards."""
    cluster.ensure_running()
    urls = list(cluster.urls)
    await asyncio.to_thread(remove_managed_containers, urls)
    try:
        yield urls
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)
        await asyncio.to_thread(remove_managed_volumes, urls)


@pytest.fixture
async def daemons(engines: list[str], tmp_path: Path) -> AsyncIterator[Daemons]:
    """Starts `fog-controller run` processes; each is stopped (SIGTERM, then SIGKILL) at the end,
    before the engines are cleaned."""
    started = Daemons(tmp_path / "logs", tmp_path / "state")
    try:
        yield started
    finally:
        await asyncio.to_thread(started.close)
