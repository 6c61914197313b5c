"""The options every command shares, defined once so that each reads and helps alike.

Options come after the verb and resource (`fogctl get deploy --user alice`), as kubectl's
flags do; the database URL and the user also come from FOG_DATABASE_URL and FOG_USER.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from controller.fogctl.errors import InputError
from controller.fogctl.render import Output

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FOG_DATABASE_URL",
        show_envvar=True,
        help="SQLAlchemy async URL; default: the daemon's embedded SQLite file.",
    ),
]
User = Annotated[
    str | None,
    typer.Option(
        "--user",
        "-u",
        envvar="FOG_USER",
        show_envvar=True,
        help="Whose deployments to see and change; every query is limited to this user.",
    ),
]
AllUsers = Annotated[
    bool,
    typer.Option(
        "--all-users", "-A", help="Admins: list every user's objects (adds a USER column)."
    ),
]
OutputFormat = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="json or yaml for scripts (stable keys), wide for more columns; default: a table.",
    ),
]
DeploymentName = Annotated[str, typer.Argument(help="The deployment's name.", show_default=False)]
NodeName = Annotated[str, typer.Argument(help="The node's name.", show_default=False)]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(option: str, text: str) -> float:
    """Seconds from `90`, `90s`, `5m`, `1h30m` or `500ms`; `0` means no limit."""
    raw = text.strip().lower()
    try:
        value = float(raw)
    except ValueError:
        parts = _DURATION.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise InputError(
                f"{option}: must be a duration such as 90s, 5m or 1h30m, got {text!r}"
            ) from None
        value = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not value >= 0 or value == float("inf"):
        raise InputError(f"{option}: must be 0 (no limit) or more, got {text!r}")
    return value
