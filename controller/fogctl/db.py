"""`fogctl db upgrade|current|downgrade`: Alembic, without an ini file, from anywhere.

It reads the same `FOG_DATABASE_URL` as the daemon (or `--database-url`), so an operator can
upgrade the schema of the embedded default without knowing where the file lives. These
commands are the only ones that work on a database without the schema, so they bypass
`session.run`'s schema check but share its one-line, password-masked failures.

Alembic is imported only when a db command runs: importing it costs about half a second,
which every other command (and every `rollout status` in a CI script) would pay for nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from controller.fogctl import session
from controller.fogctl.errors import InputError, Unavailable, reason_of, scrub
from controller.fogctl.options import DatabaseUrl
from schema.engine import mask_url


def _unavailable(url: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"database {mask_url(url)}: {scrub(reason_of(exc), url)}")


def _migrate(url: str, step: str, revision: str) -> None:
    from alembic.util.exc import CommandError

    from schema import migrate

    try:
        if step == "upgrade":
            migrate.upgrade(url, revision)
        else:
            migrate.downgrade(url, revision)
        typer.echo(f"at {migrate.current(url) or 'base'}")
    except CommandError as exc:
        session.fail(InputError(f"revision: {scrub(reason_of(exc), url)}"))
    except (SQLAlchemyError, OSError) as exc:
        session.fail(_unavailable(url, exc))


def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrl = None,
) -> None:
    """Upgrade the schema to REVISION (default: head). Creates a SQLite file if missing."""
    _migrate(session.database_url(database_url), "upgrade", revision)


def downgrade(
    revision: Annotated[
        str,
        typer.Argument(help="Target revision ('base' drops every table).", show_default=False),
    ],
    database_url: DatabaseUrl = None,
) -> None:
    """Downgrade the schema to REVISION. Stop the daemon first: it upgrades at start."""
    _migrate(session.database_url(database_url), "downgrade", revision)


def current(database_url: DatabaseUrl = None) -> None:
    """Print the schema revision the database is at, and the newest one available."""
    from schema import migrate

    url = session.database_url(database_url)
    try:
        at = migrate.current(url)
    except (SQLAlchemyError, OSError) as exc:
        session.fail(_unavailable(url, exc))
    heads = ", ".join(migrate.heads())
    typer.echo(f"current: {at or 'base (empty)'}\nhead: {heads}")
