"""`fogctl`: the operator's command line. For now it manages the schema (`fogctl db ...`);
the deployment, node and user verbs arrive with the operator-CLI issue.

It reads the same `FOG_DATABASE_URL` as the daemon (or `--database-url`), so an operator can
upgrade the schema of the embedded default without knowing where the file lives.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from controller import __version__
from controller.settings import Settings, SettingsError
from schema import migrate
from schema.engine import mask_url

app = typer.Typer(name="fogctl", help="Operate a fog-controller cluster.", no_args_is_help=True)
db_app = typer.Typer(help="Inspect and migrate the database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FOG_DATABASE_URL",
        help="SQLAlchemy async URL; default: the daemon's embedded SQLite file.",
        show_envvar=True,
    ),
]


def _url(database_url: str | None) -> str:
    if database_url:
        return database_url
    try:
        return Settings.from_env().database_url
    except SettingsError as exc:
        typer.echo(f"fogctl: {exc}", err=True)
        raise typer.Exit(2) from exc


def _fail(url: str, exc: Exception) -> typer.Exit:
    typer.echo(f"fogctl: database {mask_url(url)}: {exc}", err=True)
    return typer.Exit(1)


@app.command()
def version() -> None:
    """Print fogctl's version."""
    typer.echo(f"fogctl {__version__}")


@db_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrl = None,
) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    url = _url(database_url)
    try:
        migrate.upgrade(url, revision)
        typer.echo(f"at {migrate.current(url) or 'base'}")
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(url, exc) from exc


@db_app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision ('base' drops everything).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Downgrade the schema to REVISION."""
    url = _url(database_url)
    try:
        migrate.downgrade(url, revision)
        typer.echo(f"at {migrate.current(url) or 'base'}")
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(url, exc) from exc


@db_app.command()
def current(database_url: DatabaseUrl = None) -> None:
    """Print the schema revision the database is at, and the newest one available."""
    url = _url(database_url)
    try:
        at = migrate.current(url)
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(url, exc) from exc
    heads = ", ".join(migrate.heads())
    typer.echo(f"current: {at or 'base (empty)'}\nhead: {heads}")


def main() -> None:
    sys.exit(app())
