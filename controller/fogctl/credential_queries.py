"""The SQL of `fogctl secret`: a user's registry credentials, and who names them.

A credential belongs to one user, as a deployment does, and every statement here is limited
to that user's id. Only the encrypted token is ever written or read back (to check it still
opens with the key); the plain password never reaches this module.

Deleting a credential that a live deployment names races with an apply that names it: on
PostgreSQL apply holds the credential row FOR SHARE (`require_credential`) and delete takes it
FOR UPDATE before it looks for users, so one of the two waits for the other and sees its
commit. SQLite serialises the two writers itself (BEGIN IMMEDIATE); SQLAlchemy leaves the
locking clause out there.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.fogctl import views
from controller.fogctl.errors import InputError, NotFound, constraint_message
from controller.readmodel import CREDENTIALS, DEPLOYMENTS, SPECS


def _select(user_id: uuid.UUID) -> Any:
    c = CREDENTIALS
    return select(c).where(c.c.user_id == user_id)


async def list_credentials(conn: AsyncConnection, user_id: uuid.UUID) -> list[views.CredentialRow]:
    rows = await conn.execute(_select(user_id).order_by(CREDENTIALS.c.name))
    return [views.CredentialRow.model_validate(r._mapping) for r in rows]


async def find_credential(
    conn: AsyncConnection, user_id: uuid.UUID, name: str, *, lock: str | None = None
) -> views.CredentialRow | None:
    stmt = _select(user_id).where(CREDENTIALS.c.name == name)
    if lock == "share":
        stmt = stmt.with_for_update(read=True)
    elif lock == "update":
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return views.CredentialRow.model_validate(row._mapping) if row else None


async def require_credential(
    conn: AsyncConnection, user: views.UserRow, name: str, *, where: str
) -> views.CredentialRow:
    """The credential an apply names, held against a concurrent delete until commit."""
    found = await find_credential(conn, user.id, name, lock="share")
    if found is None:
        raise InputError(
            f"{where}: image_pull_secret: user {user.username!r} has no registry credential "
            f"{name!r} (add it with `fogctl secret add {name} --registry HOST --username NAME "
            "--password-stdin`)"
        )
    return found


async def tokens(conn: AsyncConnection) -> list[str]:
    """Every stored token, of every user: all are under the one key file."""
    return list((await conn.execute(select(CREDENTIALS.c.password_encrypted))).scalars())


async def put(
    conn: AsyncConnection,
    user: views.UserRow,
    *,
    name: str,
    registry: str,
    username: str,
    token: str,
) -> views.Outcome:
    """Add the credential, or replace the one of that name (a new password, a new key)."""
    c = CREDENTIALS
    values = {"registry_host": registry, "username": username, "password_encrypted": token}
    current = await find_credential(conn, user.id, name, lock="update")
    try:
        if current is None:
            await conn.execute(
                insert(c).values(id=uuid.uuid4(), user_id=user.id, name=name, **values)
            )
        else:
            await conn.execute(
                update(c)
                .where(c.c.id == current.id, c.c.user_id == user.id)
                .values(updated_at=c.c.updated_at, **values)
            )
    except (IntegrityError, DataError) as exc:
        # The token is not the password, but it has no place in a message either.
        shown = {"name": name, "registry": registry, "username": username}
        raise InputError(constraint_message(exc, shown)) from exc
    result = "created" if current is None else "replaced"
    return views.Outcome(kind="secret", name=name, result=result, detail=registry)


async def live_users(conn: AsyncConnection, user_id: uuid.UUID, name: str) -> list[str]:
    """The user's live deployments whose spec names the credential `name`."""
    d, s = DEPLOYMENTS, SPECS
    stmt = (
        select(d.c.name)
        .select_from(d.join(s, s.c.deployment_id == d.c.id))
        .where(d.c.user_id == user_id, d.c.deleted_at.is_(None), s.c.image_pull_secret == name)
        .order_by(d.c.name)
    )
    return list((await conn.execute(stmt)).scalars())


async def remove(conn: AsyncConnection, user: views.UserRow, name: str) -> views.Outcome:
    """Delete the credential unless a live deployment names it (see credentials.secret_delete
    for why this refuses rather than warns)."""
    found = await find_credential(conn, user.id, name, lock="update")
    if found is None:
        raise NotFound(f"secret {name!r} not found for user {user.username!r}")
    users = await live_users(conn, user.id, name)
    if users:
        raise InputError(
            f"secret {name!r} is the image_pull_secret of deployment(s) {', '.join(users)}: "
            "their next pull would fail. Apply them without it (or with another secret), or "
            "delete them, then delete the secret"
        )
    c = CREDENTIALS
    await conn.execute(delete(c).where(c.c.id == found.id, c.c.user_id == user.id))
    return views.Outcome(kind="secret", name=found.name, result="deleted")
