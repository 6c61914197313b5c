"""Output: aligned tables for people, JSON and YAML for scripts.

Tables are drawn with rich; colour appears only when standard output is a terminal, and
rich honours `NO_COLOR` (and `FORCE_COLOR`) by itself. Off a terminal the table is never
wrapped to 80 columns and carries no trailing blanks, so `fogctl get deploy | grep web` and
`awk` see one row per line. `-o json|yaml` print the `views` models: a list for `get`,
an object for `describe`, with the same keys in the same order on every run.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any

import yaml
from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

# Off a terminal nothing is wrapped: rows stay one line however long a reason is.
UNWRAPPED_WIDTH = 100_000
_TRAILING_BLANKS = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")

STATUS_STYLES = {
    "running": "green",
    "ready": "green",
    "pending": "yellow",
    "scheduled": "yellow",
    "starting": "yellow",
    "stopping": "yellow",
    "unknown": "yellow",
    "failed": "bold red",
    "not_ready": "bold red",
    "stopped": "dim",
    "deleted": "dim",
    "deleting": "dim",
}


class Output(enum.StrEnum):
    """`-o`: the default table has no name; `wide` adds columns."""

    JSON = "json"
    YAML = "yaml"
    WIDE = "wide"


def console(file: IO[str] | None = None) -> Console:
    stream = file if file is not None else sys.stdout
    probe = Console(file=stream)
    width = probe.width if probe.is_terminal else UNWRAPPED_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def table(columns: Sequence[str]) -> Table:
    """kubectl's look: no borders, upper-case headers, three blanks between columns."""
    t = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        padding=(0, 3, 0, 0),
    )
    for name in columns:
        t.add_column(name, no_wrap=True, overflow="fold")
    return t


def show(*renderables: RenderableType, out: Console | None = None) -> None:
    """Print tables and text; lines lose trailing blanks (rich pads the last column)."""
    out = out or console()
    with out.capture() as captured:
        for item in renderables:
            out.print(item)
    text = "\n".join(_TRAILING_BLANKS.sub(r"\1", line) for line in captured.get().splitlines())
    out.file.write(text + "\n")
    out.file.flush()


def status_text(value: str) -> Text:
    return Text(value, style=STATUS_STYLES.get(value.split(",")[0], ""))


def dump(data: BaseModel | Sequence[BaseModel], fmt: Output) -> str:
    """JSON (indented, UTF-8 kept) or YAML (block style, keys in model order)."""
    plain: Any = (
        data.model_dump(mode="json")
        if isinstance(data, BaseModel)
        else [item.model_dump(mode="json") for item in data]
    )
    if fmt is Output.JSON:
        return json.dumps(plain, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)


def emit(data: BaseModel | Sequence[BaseModel], fmt: Output) -> None:
    sys.stdout.write(dump(data, fmt))
    sys.stdout.flush()


# --- values ------------------------------------------------------------------------------------


def age(when: datetime | None, now: datetime | None = None) -> str:
    """kubectl's AGE: 45s, 12m, 5h, 3d."""
    if when is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def utc(when: datetime) -> str:
    """ISO 8601 to the second, in UTC: a table column that sorts as text."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    return f"{utc(when)} ({age(when, now)} ago)"


def number(value: float | None) -> str:
    if value is None:
        return "auto"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def short(value: object, length: int = 8) -> str:
    return "-" if value is None else str(value)[:length]
