"""What the engine's listing and inspect answers say, as the controller's values.

The listing's `Status` ("Up 3 minutes (healthy)", "Exited (137) 2 seconds ago"), its labels
and inspect's state and RFC 3339 times are read here, so the runtime only asks.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_SPEC,
    LABEL_STORAGE_GB,
    MANAGED_BY_VALUE,
    ContainerState,
    ObservedContainer,
)
from controller.runtime.inspect_cache import RECENT_START_SECONDS
from controller.storage import DiskUse

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


def listed(node_id: uuid.UUID, item: dict[str, Any]) -> ObservedContainer:
    """A container as one item of the engine's listing shows it."""
    labels = item.get("Labels") or {}
    state = ContainerState.parse(str(item.get("State", "")))
    names = item.get("Names") or ["/"]
    status = str(item.get("Status", ""))
    return ObservedContainer(
        id=str(item["Id"]),
        name=str(names[0]).lstrip("/"),
        node_id=node_id,
        state=state,
        deployment_id=label_uuid(labels.get(LABEL_DEPLOYMENT)),
        replica_id=label_uuid(labels.get(LABEL_REPLICA)),
        image=str(item.get("Image", "")),
        health=health(status),
        spec_hash=labels.get(LABEL_SPEC),
        uptime_seconds=uptime(status) if state is ContainerState.RUNNING else None,
        exit_code=status_exit_code(status),
    )


def needs_inspect(container: ObservedContainer) -> bool:
    """Whether the listing leaves out what matters: restart counts and OOM kills of
    containers that are not running, or that (re)started within the last minute (a restart
    the engine made between two of our looks). Long-running containers cost no inspect."""
    if container.state is not ContainerState.RUNNING:
        return True
    return container.uptime_seconds is not None and container.uptime_seconds < (
        RECENT_START_SECONDS
    )


def inspected(container: ObservedContainer, detail: dict[str, Any]) -> ObservedContainer:
    """`container` with what its inspect adds."""
    st = detail.get("State") or {}
    # The listing's "Exited (137)" is the exit that matters; inspect's ExitCode is read
    # later and is back to 0 once the engine has restarted the container.
    exit_code = container.exit_code
    if exit_code is None and not st.get("Running"):
        exit_code = st.get("ExitCode")
    return replace(
        container,
        inspected=True,
        exit_code=exit_code,
        restart_count=int(detail.get("RestartCount") or 0),
        oom_killed=bool(st.get("OOMKilled")),
        finished_at=timestamp(st.get("FinishedAt")),
    )


def disk_use(item: dict[str, Any]) -> DiskUse | None:
    """What one item of a sized listing has written; None for a container without our
    replica and deployment labels."""
    labels = item.get("Labels") or {}
    replica_id = label_uuid(labels.get(LABEL_REPLICA))
    deployment_id = label_uuid(labels.get(LABEL_DEPLOYMENT))
    if replica_id is None or deployment_id is None:
        return None
    limit = labels.get(LABEL_STORAGE_GB)
    return DiskUse(
        container_id=str(item["Id"]),
        replica_id=replica_id,
        deployment_id=deployment_id,
        written_bytes=int(item.get("SizeRw") or 0),
        limit_gb=int(limit) if limit and limit.isdigit() else None,
    )


def foreign_host_ports(listing: Iterable[Mapping[str, Any]]) -> frozenset[tuple[int, str]]:
    """The node ports (port, protocol) published by the listed containers that are not ours:
    the ones a replica's host port must not collide with. A container on the host network
    publishes nothing the listing shows, so its ports are not known here."""
    held: set[tuple[int, str]] = set()
    for item in listing:
        labels = item.get("Labels") or {}
        if labels.get(LABEL_MANAGED_BY) == MANAGED_BY_VALUE:
            continue
        for port in item.get("Ports") or ():
            public = port.get("PublicPort")
            if public:
                held.add((int(public), str(port.get("Type") or "tcp")))
    return frozenset(held)
