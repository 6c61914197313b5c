"""`fogctl secret add|list|delete`: a user's logins to private registries.

A deployment names one with `image_pull_secret`; the controller decrypts it just before a
pull. The password is read from standard input only: an argument would sit in the process
list and the shell's history. It is encrypted here with the key in FOG_SECRET_KEY_FILE
(`controller.secrets`), and from then on only the token exists: no output, message or log
line of fogctl holds the password, and nothing reads it back except to check that the stored
tokens still open with the key this fogctl uses.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, ValidationError
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.fogctl import credential_queries, queries, render, session, views
from controller.fogctl.deployments import username
from controller.fogctl.errors import InputError, Unavailable, validation_messages
from controller.fogctl.options import DatabaseUrl, OutputFormat, User
from controller.fogctl.render import Output
from controller.secrets import SecretBox, SecretKeyError
from controller.settings import Settings, SettingsError
from schema.api import RegistryCredentialCreate

SECRET_OPTIONS = {
    "name": "NAME",
    "registry": "--registry",
    "username": "--username",
    "password": "--password-stdin",
}

SecretName = Annotated[
    str, typer.Argument(help="The credential's name, as image_pull_secret names it.")
]
SecretKeyFile = Annotated[
    str | None,
    typer.Option(
        "--secret-key-file",
        envvar="FOG_SECRET_KEY_FILE",
        show_envvar=True,
        help="The controller's key file; default: secret.key in the state directory.",
    ),
]


def key_file(option: str | None) -> Path:
    """`--secret-key-file`, else FOG_SECRET_KEY_FILE, else the daemon's default path."""
    if option:
        return Path(option)
    try:
        return Path(Settings.from_env().secret_key_file)
    except SettingsError as exc:
        session.fail(InputError(str(exc)))


def _open_box(path: Path) -> SecretBox:
    existed = path.exists()
    try:
        box = SecretBox.from_file(path)
    except SecretKeyError as exc:
        session.fail(Unavailable(str(exc)))
    if not existed:
        typer.echo(
            f"fogctl: created secret key file {path} (mode 0600); the controller must read "
            "this same file (FOG_SECRET_KEY_FILE)",
            err=True,
        )
    return box


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    # `echo pw | fogctl ...` and a file both end in a newline that is no part of the password.
    return sys.stdin.read().rstrip("\r\n")


def _validated(name: str, registry: str, user_name: str, password: str) -> RegistryCredentialCreate:
    try:
        spec = RegistryCredentialCreate(
            name=name, registry=registry, username=user_name, password=SecretStr(password)
        )
    except ValidationError as exc:
        lines = validation_messages(exc, RegistryCredentialCreate, options=SECRET_OPTIONS)
        # Our validators never show it; a message built from the input must not either.
        text = "\n".join(lines)
        session.fail(InputError(text.replace(password, "***") if password else text))
    if "/" in spec.registry:
        session.fail(
            InputError(
                "--registry: must be HOST or HOST:PORT, as the first part of an image name "
                f"(no scheme, no path), got {spec.registry!r}"
            )
        )
    return spec


def _opens(box: SecretBox, token: str) -> bool:
    try:
        box.decrypt(token)
    except SecretKeyError:
        return False
    return True


def secret_add(
    name: SecretName,
    registry: Annotated[
        str,
        typer.Option(
            "--registry", help="The registry, HOST[:PORT] as in image names.", show_default=False
        ),
    ],
    registry_user: Annotated[
        str, typer.Option("--username", help="The registry login.", show_default=False)
    ],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from standard input (required: never an argument).",
        ),
    ] = False,
    secret_key_file: SecretKeyFile = None,
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a registry credential, or replace the one of that name.

    The password is read from standard input (`--password-stdin`), encrypted with the key in
    FOG_SECRET_KEY_FILE (made, mode 0600, when missing) and stored; it is never shown again.
    Deployments name the credential with `image_pull_secret: NAME`. Replacing it (a new
    password, or a new key after a rotation) is used by the next pull; no rollout is started.
    """
    owner = username(user)
    if not password_stdin:
        session.fail(
            InputError(
                "--password-stdin: the password is read from standard input only (an argument "
                "would show in the process list): `printf %s PASSWORD | fogctl secret add "
                f"{name} --registry {registry} --username {registry_user} --password-stdin`"
            )
        )
    password = _read_password()
    spec = _validated(name, registry, registry_user, password)
    box = _open_box(key_file(secret_key_file))
    token = box.encrypt(spec.password.get_secret_value())

    async def work(engine: AsyncEngine) -> tuple[views.Outcome, int]:
        async def tx(conn: AsyncConnection) -> tuple[views.Outcome, int]:
            u = await queries.require_user(conn, owner)
            outcome = await credential_queries.put(
                conn,
                u,
                name=spec.name,
                registry=spec.registry,
                username=spec.username,
                token=token,
            )
            stale = sum(not _opens(box, t) for t in await credential_queries.tokens(conn))
            return outcome, stale

        return await session.write(engine, tx)

    outcome, stale = session.run(database_url, work)
    typer.echo(outcome.line())
    if stale:
        # A rotated key (re-add them all) or a fogctl reading another key file than the
        # controller's: either way those credentials cannot be used until added again.
        typer.echo(
            f"fogctl: warning: {stale} stored credential(s) do not open with this key file: "
            "add them again with this key, or point FOG_SECRET_KEY_FILE at the controller's",
            err=True,
        )


def credentials_table(rows: Sequence[views.CredentialRow]) -> Table:
    t = render.table(["NAME", "REGISTRY", "USERNAME", "CREATED"])
    for c in rows:
        t.add_row(c.name, c.registry, c.username, render.utc(c.created_at))
    return t


def secret_list(
    output: OutputFormat = None, user: User = None, database_url: DatabaseUrl = None
) -> None:
    """List the user's registry credentials: name, registry and login, never the password."""
    owner = username(user)

    async def work(engine: AsyncEngine) -> list[views.CredentialRow]:
        async def q(conn: AsyncConnection) -> list[views.CredentialRow]:
            u = await queries.require_user(conn, owner)
            return await credential_queries.list_credentials(conn, u.id)

        return await session.read(engine, q)

    rows = session.run(database_url, work)
    if output in (Output.JSON, Output.YAML):
        render.emit(rows, output)
    elif not rows:
        typer.echo("No secrets found.", err=True)
    else:
        render.show(credentials_table(rows))


def secret_delete(name: SecretName, user: User = None, database_url: DatabaseUrl = None) -> None:
    """Delete a registry credential; refused while a live deployment names it.

    Refused rather than warned about: the deployment would keep running on the images it has,
    then fail at its next pull (a new node, a rollout, a restart elsewhere) with
    `unauthorized`, long after and far from this command. Change or delete those deployments
    first; the message names them.
    """
    owner = username(user)

    async def work(engine: AsyncEngine) -> views.Outcome:
        async def tx(conn: AsyncConnection) -> views.Outcome:
            u = await queries.require_user(conn, owner)
            return await credential_queries.remove(conn, u, name.strip())

        return await session.write(engine, tx)

    typer.echo(session.run(database_url, work).line())
