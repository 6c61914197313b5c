"""PURE: what a node can do about a replica's `storage_gb`, and which replicas broke it.

A Docker engine caps a container's writable layer (`--storage-opt size=`) only with some
storage drivers, and overlay2 / vfs only on xfs mounted with `pquota`. Which one a node has is
read from what the engine says about itself (`docker info`: driver, driver status), never from
the wording of a refused create, which differs per driver and per engine kind. Where the
engine cannot cap, the controller measures each container's writable layer (`SizeRw`) on a
cadence and replaces a replica that wrote past its limit, as kubelet enforces ephemeral
storage by eviction.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class StorageLimits(enum.StrEnum):
    """How a node holds a replica to `storage_gb` (the `nodes.storage_limits` column)."""

    ENFORCED = "enforced"  # the engine caps the container's disk at create
    MONITORED = "monitored"  # the controller measures and replaces a replica over its limit


# Drivers that cap a container's disk wherever they run (each quota is the driver's own).
_ALWAYS_CAPS = frozenset({"btrfs", "zfs", "devicemapper", "windowsfilter"})
# Drivers that cap only on xfs with project quotas (`pquota`); the engine reports the
# backing filesystem for overlay2, not for vfs, and never whether pquota is on.
_CAPS_ON_XFS = frozenset({"overlay2", "overlay", "vfs", "fuse-overlayfs"})
BYTES_PER_GB = 1024**3


def backing_filesystem(driver_status: Iterable[Sequence[str]]) -> str:
    """The "Backing Filesystem" row of `docker info`'s DriverStatus ("" when absent)."""
    for row in driver_status:
        if len(row) >= 2 and row[0].strip().lower() == "backing filesystem":
            return row[1].strip().lower()
    return ""


def storage_limits(
    driver: str, driver_status: Iterable[Sequence[str]] = (), *, size_refused: bool = False
) -> StorageLimits:
    """Whether the engine can cap a container's disk. `size_refused`: a create with a size
    limit was refused on this engine and accepted without one (xfs without `pquota`, which
    `docker info` does not show): the experiment outranks what the driver says."""
    if size_refused:
        return StorageLimits.MONITORED
    name = driver.strip().lower()
    if name in _ALWAYS_CAPS:
        return StorageLimits.ENFORCED
    if name in _CAPS_ON_XFS and backing_filesystem(driver_status) == "xfs":
        return StorageLimits.ENFORCED
    return StorageLimits.MONITORED


@dataclass(frozen=True, slots=True)
class DiskUse:
    """One running container of ours and the bytes its writable layer holds (SizeRw)."""

    container_id: str
    replica_id: uuid.UUID
    deployment_id: uuid.UUID
    written_bytes: int
    limit_gb: int | None  # from the container's storage label; None: not labelled


@dataclass(frozen=True, slots=True)
class Excess:
    container_id: str
    replica_id: uuid.UUID
    deployment_id: uuid.UUID
    reason: str


def gigabytes(n_bytes: int, above: int | None = None) -> str:
    """`1.3 GB` (binary gigabytes, as `storage_gb` and Docker's `size=` count them). With
    `above` (a limit the figure is over), as many decimals as it takes not to read as the
    limit itself: `1.01 GB`, not `1.0 GB`, of 1 GB."""
    value = n_bytes / BYTES_PER_GB
    if value >= 100:
        return f"{value:.0f} GB"
    for decimals in (1, 2, 3):
        text = f"{value:.{decimals}f}"
        if above is None or float(text) > above:
            return f"{text} GB"
    return f"{value:.3f} GB"


def exceeded(
    used: Iterable[DiskUse], limits: Mapping[uuid.UUID, int] | None = None
) -> list[Excess]:
    """The containers that wrote more than their replica's `storage_gb`. A container's own
    label gives its limit; `limits` (per deployment) covers containers without one. A limit
    of 0 means none."""
    found = []
    for u in used:
        limit = u.limit_gb if u.limit_gb is not None else (limits or {}).get(u.deployment_id)
        if not limit or u.written_bytes <= limit * BYTES_PER_GB:
            continue
        written = gigabytes(u.written_bytes, above=limit)
        reason = f"storage limit exceeded: {written} written of {limit} GB"
        found.append(Excess(u.container_id, u.replica_id, u.deployment_id, reason))
    return found
