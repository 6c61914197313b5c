"""One command, one database session: resolve the URL, open the engine, run, map failures.

Every fogctl command goes through `run`, so every command fails the same way: a `FogctlError`
prints its one line and exits with its code; a database that cannot be reached prints one
line with the password masked and exits 1; a constraint violation that slipped past the
queries' own mapping still becomes a field message with exit 2. Typer's commands are
synchronous, so each one starts an event loop of its own with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.fogctl.errors import (
    FogctlError,
    InputError,
    Unavailable,
    constraint_message,
    reason_of,
    scrub,
)
from controller.settings import Settings, SettingsError
from schema import engine as engine_mod

T = TypeVar("T")

# asyncpg waits 60 s for a black-holed host by default; an operator's command should not.
CONNECT_TIMEOUT_SECONDS = 10


# The drivers fog-controller is built with; a URL naming another one cannot work.
SUPPORTED_URLS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}


def fail(exc: FogctlError) -> NoReturn:
    """Print the message (each line prefixed, so several problems grep alike) and exit."""
    for line in exc.message.splitlines() or [""]:
        typer.echo(f"fogctl: {line}", err=True)
    raise typer.Exit(exc.exit_code)


def _check_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        fail(InputError(f"--database-url: not a database URL: {engine_mod.mask_url(url)!r}"))
    if SUPPORTED_URLS.get(parsed.get_backend_name()) != parsed.get_driver_name():
        fail(
            InputError(
                "--database-url: must be a postgresql+asyncpg:// or sqlite+aiosqlite:/// URL, "
                f"got {engine_mod.mask_url(url)}"
            )
        )
    return url


def database_url(option: str | None) -> str:
    """`--database-url`, else FOG_DATABASE_URL (Typer reads it into the option), else the
    daemon's default: the embedded SQLite file under the state directory."""
    if option:
        return _check_url(option)
    try:
        return _check_url(Settings.from_env().database_url)
    except SettingsError as exc:
        fail(InputError(str(exc)))


def engine_options(url: str) -> dict[str, Any]:
    if engine_mod.is_sqlite(url):
        return {}
    return {"connect_args": {"timeout": CONNECT_TIMEOUT_SECONDS}}


def _unreachable(url: str, exc: BaseException) -> Unavailable:
    masked = engine_mod.mask_url(url)
    return Unavailable(f"cannot connect to database {masked}: {scrub(reason_of(exc), url)}")


def _has_schema(connection: Any) -> bool:
    return bool(inspect(connection).has_table("users"))


async def _session(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    path = engine_mod.sqlite_path(url)
    if path is not None and not path.exists():
        raise Unavailable(
            f"database file {path} does not exist: start fog-controller (it creates it) "
            "or run `fogctl db upgrade`"
        )
    engine = engine_mod.create_engine(url, **engine_options(url))
    try:
        try:
            async with engine.connect() as conn:
                schema_ok = await conn.run_sync(_has_schema)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _unreachable(url, exc) from exc
        if not schema_ok:
            raise Unavailable(
                f"database {engine_mod.mask_url(url)} has no fog-controller schema: "
                "run `fogctl db upgrade`"
            )
        return await work(engine)
    finally:
        await engine.dispose()


def run(database_url_option: str | None, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` against the database and turn every failure into a message and exit code."""
    url = database_url(database_url_option)
    try:
        return asyncio.run(_session(url, work))
    except FogctlError as exc:
        fail(exc)
    except (IntegrityError, DataError) as exc:
        fail(InputError(scrub(constraint_message(exc), url)))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        # Lost mid-command (server restarted, file locked for too long): still one line.
        fail(Unavailable(f"database {engine_mod.mask_url(url)}: {scrub(reason_of(exc), url)}"))


async def read(engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async with engine.connect() as conn:
        return await fn(conn)


async def write(engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """One write transaction (BEGIN IMMEDIATE on SQLite): all of `fn` or none of it."""
    async with engine_mod.writer(engine).begin() as conn:
        return await fn(conn)
