"""What a node can enforce of `storage_gb`, from what its engine says about itself, and which
containers wrote past their limit. Pure: `docker info` answers as seen on real engines."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.model import ReplicaStatus
from controller.plan import MarkFailed, plan
from controller.storage import (
    BYTES_PER_GB,
    DiskUse,
    StorageLimits,
    backing_filesystem,
    exceeded,
    gigabytes,
    storage_limits,
)
from tests.unit.factories import T0, container, deployment, node, replica, views

ENFORCED, MONITORED = StorageLimits.ENFORCED, StorageLimits.MONITORED
# DriverStatus as Docker 20.10 reports it for overlay2 on this machine's ext4.
OVERLAY_ON_EXT4 = [
    ["Backing Filesystem", "extfs"],
    ["Supports d_type", "true"],
    ["Native Overlay Diff", "true"],
    ["userxattr", "false"],
]
OVERLAY_ON_XFS = [["Backing Filesystem", "xfs"], ["Supports d_type", "true"]]


@pytest.mark.parametrize(
    ("driver", "status", "expected"),
    [
        ("overlay2", OVERLAY_ON_EXT4, MONITORED),  # refuses --storage-opt size
        ("overlay2", OVERLAY_ON_XFS, ENFORCED),  # with pquota; refusal caught at create
        ("vfs", None, MONITORED),  # vfs reports no DriverStatus at all
        ("vfs", [["Backing Filesystem", "xfs"]], ENFORCED),
        ("fuse-overlayfs", [], MONITORED),  # rootless engines
        ("overlay", [["Backing Filesystem", "tmpfs"]], MONITORED),
        ("btrfs", [["Build Version", "Btrfs v5.16.2"]], ENFORCED),
        ("zfs", [["Zpool", "tank"]], ENFORCED),
        ("devicemapper", [["Pool Name", "docker-thinpool"]], ENFORCED),
        ("windowsfilter", [], ENFORCED),
        ("aufs", [["Backing Filesystem", "extfs"]], MONITORED),  # unknown: measure
        ("", [], MONITORED),
        ("hollow", [], MONITORED),
    ],
)
def test_storage_limits_per_engine_answer(
    driver: str, status: list[list[str]] | None, expected: StorageLimits
) -> None:
    assert storage_limits(driver, status or ()) is expected


def test_a_refused_size_limit_outranks_what_the_driver_says() -> None:
    """xfs without pquota: docker info says xfs, the create says no."""
    assert storage_limits("overlay2", OVERLAY_ON_XFS, size_refused=True) is MONITORED
    assert storage_limits("btrfs", (), size_refused=True) is MONITORED


def test_backing_filesystem_is_read_case_insensitively() -> None:
    assert backing_filesystem([["backing filesystem", " XFS "]]) == "xfs"
    assert backing_filesystem([["Supports d_type", "true"]]) == ""
    assert backing_filesystem([["short"]]) == ""


D, R = uuid.UUID(int=1), uuid.UUID(int=2)


def use(written: int, limit: int | None, container_id: str = "c1") -> DiskUse:
    return DiskUse(container_id, R, D, written, limit)


def test_a_container_past_its_limit_gets_the_reason_in_gigabytes() -> None:
    [e] = exceeded([use(int(1.3 * BYTES_PER_GB), 1)])
    assert e.reason == "storage limit exceeded: 1.3 GB written of 1 GB"
    assert (e.container_id, e.replica_id, e.deployment_id) == ("c1", R, D)


def test_at_the_limit_unlabelled_or_unlimited_is_not_exceeded() -> None:
    assert exceeded([use(BYTES_PER_GB, 1)]) == []
    assert exceeded([use(5 * BYTES_PER_GB, None)]) == []
    assert exceeded([use(5 * BYTES_PER_GB, 0)]) == []


def test_a_deployment_limit_covers_containers_without_a_label() -> None:
    [e] = exceeded([use(3 * BYTES_PER_GB, None)], {D: 2})
    assert e.reason == "storage limit exceeded: 3.0 GB written of 2 GB"
    # The container's own label wins over the deployment's (it is what the replica runs).
    assert exceeded([use(3 * BYTES_PER_GB, 4)], {D: 2}) == []


@given(written=st.integers(0, 10**13), limit=st.integers(1, 5000))
def test_exceeded_exactly_when_written_bytes_pass_the_limit(written: int, limit: int) -> None:
    assert bool(exceeded([use(written, limit)])) == (written > limit * BYTES_PER_GB)


def test_a_figure_just_over_the_limit_does_not_read_as_the_limit() -> None:
    [e] = exceeded([use(int(1.004 * BYTES_PER_GB), 1)])
    assert e.reason == "storage limit exceeded: 1.004 GB written of 1 GB"
    [e] = exceeded([use(int(1.03 * BYTES_PER_GB), 1)])
    assert e.reason == "storage limit exceeded: 1.03 GB written of 1 GB"


def test_gigabytes_text() -> None:
    assert gigabytes(0) == "0.0 GB"
    assert gigabytes(int(99.94 * BYTES_PER_GB)) == "99.9 GB"
    assert gigabytes(250 * BYTES_PER_GB) == "250 GB"


def test_plan_replaces_a_replica_whose_container_is_over_its_limit() -> None:
    n1 = node("n1")
    r = replica(ReplicaStatus.RUNNING, n1, started=T0)
    c = container(r, n1)
    d = deployment(1, r)
    v = views((n1, [c]))
    assert plan(d, v, [n1]).empty
    reason = "storage limit exceeded: 1.3 GB written of 1 GB"
    p = plan(d, v, [n1], over_limit={c.id: reason})
    assert MarkFailed(r, reason, c) in p.actions
