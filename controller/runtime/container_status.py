"""What the engine's listing text and inspect answers say, as plain values.

The listing's `Status` ("Up 3 minutes (healthy)", "Exited (137) 2 seconds ago") and inspect's
RFC 3339 times are parsed here, so the runtime only asks and these read.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

_UPTIME = re.compile(
    r"^Up (Less than a second|About an? (minute|hour)|(\d+) (second|minute|hour|day|week)s?)"
)
_EXIT = re.compile(r"^(Exited|Restarting) \((-?\d+)\)")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def uptime(status: str) -> float | None:
    """Seconds since the container (re)started, from the list's "Up 3 seconds" text; rough
    past a minute, which is all the readiness checks need."""
    m = _UPTIME.match(status)
    if m is None:
        return None
    if m.group(1) == "Less than a second":
        return 0.0
    if m.group(2):
        return float(_UNIT_SECONDS[m.group(2)])
    return float(int(m.group(3)) * _UNIT_SECONDS[m.group(4)])


def status_exit_code(status: str) -> int | None:
    """The exit code in "Exited (137) 2 seconds ago" / "Restarting (1) 1 second ago"."""
    m = _EXIT.match(status)
    return int(m.group(2)) if m else None


def health(status: str) -> str | None:
    """The health the list API writes into its Status text: "Up 3 minutes (healthy)",
    "(unhealthy)", "(health: starting)"; None for an image without HEALTHCHECK."""
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def timestamp(raw: object) -> datetime | None:
    """Docker's RFC 3339 time with nanoseconds ("0001-01-01T00:00:00Z" means never)."""
    if not isinstance(raw, str) or raw.startswith("0001-"):
        return None
    text = raw.rstrip("Z")
    whole, _, fraction = text.partition(".")
    try:
        parsed = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None
    micros = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    return parsed.replace(microsecond=micros)


def label_uuid(raw: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw) if raw else None
    except ValueError:
        return None
