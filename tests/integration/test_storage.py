"""Disk limits on engines that cannot cap a container's disk, against real Docker engines on
the `vfs` storage driver (as nested Docker and some edge boards run) and real databases.

vfs on this machine's ext4 refuses `--storage-opt size=` ("Filesystem does not support, or
has not enabled quotas"); a create with it used to be retried forever. Here the nodes are
judged `monitored` from `docker info`, the reconciler's core cases converge as on overlay2,
and a replica that writes past its `storage_gb` is replaced with the reason in the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller.readmodel import NODES
from tests.harness.engines import API_VERSION, Cluster, build_image, build_test_image
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    fleet_of,
    managed_containers,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.integration.test_fogctl import Fogctl

pytestmark = pytest.mark.docker


@pytest.fixture
async def vfs_fleet(
    db_url: str, engine: AsyncEngine, vfs_cluster: Cluster
) -> AsyncIterator[tuple[Operator, list[str], uuid.UUID]]:
    async with fleet_of(engine, list(vfs_cluster.urls), prefix="vfs") as made:
        yield made


async def _node_facts(op: Operator) -> list[Any]:
    async with op.engine.connect() as conn:
        query = NODES.select().order_by(NODES.c.name)
        return [r._mapping for r in (await conn.execute(query)).all()]


async def test_core_cases_converge_on_vfs_and_nodes_show_monitored(
    db_url: str, vfs_fleet: Any
) -> None:
    """Scale up (spread over the nodes), down, to zero; each container without a size
    limit; `fogctl get nodes -o wide` says vfs / monitored for every node."""
    op, urls, user = vfs_fleet
    async with running_controller(settings_for_tests(db_url)):
        d = await op.add_deployment(user, "web", replicas=4, storage_gb=2)
        await eventually(lambda: converged(op, urls, d, 4), within=60)
        per_node = sorted(
            sum(1 for s in managed_containers(urls, d) if s.engine_url == u) for u in urls
        )
        assert per_node == [1, 1, 2]
        for seen in managed_containers(urls, d):
            client = docker.APIClient(base_url=seen.engine_url, version=API_VERSION)
            try:
                host = client.inspect_container(seen.id)["HostConfig"]
            finally:
                client.close()
            assert not host.get("StorageOpt")
        await op.scale(d, 1)
        await eventually(lambda: converged(op, urls, d, 1), within=60)
        await op.scale(d, 0)
        await eventually(lambda: converged(op, urls, d, 0), within=60)
        rows = await _node_facts(op)
        history = [h["reason"] for h in await op.history(d)]
    assert [(r["storage_driver"], r["storage_limits"]) for r in rows] == [("vfs", "monitored")] * 3
    assert not any("quota" in reason for reason in history), history
    wide = (await asyncio.to_thread(Fogctl(db_url).ok, "get", "nodes", "-o", "wide")).splitlines()
    header = wide[0].split()
    at = header.index("STORAGE-LIMITS")
    assert header[at - 1] == "STORAGE-DRIVER"
    for line in wide[1:]:
        # The same column positions: NAME ... HEARTBEAT (two words: "1s" or "-") is not split.
        cells = line.split()
        assert "vfs" in cells
        assert cells[cells.index("vfs") + 1] == "monitored"


async def test_a_replica_that_writes_past_its_limit_is_replaced_with_the_reason(
    db_url: str, vfs_fleet: Any, vfs_cluster: Cluster
) -> None:
    """The container writes 1.1 GiB into its writable layer with storage_gb=1: the storage
    monitor measures it (SizeRw), the replica fails with the reason and is replaced."""
    op, urls, user = vfs_fleet
    image = "fog-test/filler:1"
    fill = "dd if=/dev/zero of=/fill bs=1048576 count=1100 2>/dev/null; exec sleep 3600"
    for e in vfs_cluster.engines:
        build_image(e, image, ["sh", "-c", fill])
    settings = settings_for_tests(
        db_url,
        storage_check_seconds=1.0,
        crash_backoff_initial_seconds=30.0,  # one replacement is enough to see
        crash_backoff_max_seconds=30.0,
    )
    async with running_controller(settings):
        d = await op.add_deployment(user, "filler", image=image, replicas=1, storage_gb=1)

        async def replaced() -> list[str]:
            assert await op.replicas(d, "failed")
            assert len(await op.live_replicas(d)) == 1
            reasons = [h["reason"] for h in await op.history(d)]
            return [r for r in reasons if "storage limit exceeded" in r]

        over = await eventually(replaced, within=90)
        [first] = await op.replicas(d, "failed")
        [live] = await op.live_replicas(d)
    # Measured while dd writes: anywhere past 1 GiB up to the 1.07 GiB it ends at.
    found = re.search(
        rf"replica {str(first['id'])[:8]} failed: storage limit exceeded: "
        r"(\d+\.\d+) GB written of 1 GB",
        over[0],
    )
    assert found, over
    assert 1.0 < float(found.group(1)) <= 1.1, over
    assert live["id"] != first["id"]
    # The failed replica's container is gone (removed with the replica, not left writing).
    assert str(first["id"]) not in {s.replica_id for s in managed_containers(urls, d)}


# --- engines on xfs: where docker info says a size limit should work -------------------------


def _run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr[-2000:]}")


@contextlib.contextmanager
def xfs_engine(options: str) -> Iterator[Cluster]:
    """One overlay2 engine whose whole root lives on a fresh 1 GiB xfs (a loop-mounted file,
    mounted with `options`), so `docker info` reports Backing Filesystem xfs. Needs root and
    xfsprogs (installed with apt-get when missing, as the harness installs docker.io). (This
    machine's kernel mounts xfs but refuses `pquota`, so the enforced case is not run here.)"""
    if shutil.which("mkfs.xfs") is None:
        _run("apt-get", "install", "-y", "-q", "xfsprogs")
    base = Path(tempfile.mkdtemp(prefix="fogxfs-", dir="/tmp"))
    image, mount = base / "xfs.img", base / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(1024**3)
    _run("mkfs.xfs", "-q", str(image))
    _run("mount", "-o", f"loop,{options}", str(image), str(mount))
    try:
        with Cluster.start(1, base_dir=mount) as started:
            build_test_image(started.engines[0])
            yield started
    finally:
        _run("umount", str(mount))
        shutil.rmtree(base, ignore_errors=True)


async def _wait_node(op: Operator, limits: str) -> None:
    async def shown() -> bool:
        [row] = await _node_facts(op)
        assert (row["storage_driver"], row["storage_limits"]) == ("overlay2", limits)
        return True

    await eventually(shown, within=30)


def _logged_now(logs: list[dict[str, Any]], event: str) -> bool:
    return any(e["event"] == event and e.get("node") == "xfs-0" for e in logs)


async def _logged(logs: list[dict[str, Any]], event: str) -> bool:
    """`event` logged for the xfs test's node (a probe failure: the engine seen down)."""
    return _logged_now(logs, event)


def _storage_opt(url: str, container: str) -> Any:
    client = docker.APIClient(base_url=url, version=API_VERSION)
    try:
        return client.inspect_container(container)["HostConfig"].get("StorageOpt")
    finally:
        client.close()


async def test_xfs_without_pquota_refuses_the_limit_once_then_is_monitored_until_restart(
    db_url: str, engine: AsyncEngine
) -> None:
    """`docker info` says xfs, so the node starts `enforced`; the engine refuses the size
    limit (no pquota), the same create without it succeeds: that experiment makes the node
    `monitored`. An engine restart forgets it: the node is `enforced` again until a create
    is refused again."""
    with xfs_engine("noquota") as cluster:
        op, url = Operator(engine), cluster.urls[0]
        await op.add_node("xfs-0", url)
        user = await op.add_user()
        with capture_logs() as logs:
            async with running_controller(settings_for_tests(db_url)):
                await _wait_node(op, "enforced")
                d = await op.add_deployment(user, "uncapped", replicas=2, storage_gb=1)
                await eventually(lambda: converged(op, [url], d, 2), within=60)
                seen = managed_containers([url], d)
                assert len(seen) == 2
                for container in seen:
                    assert not _storage_opt(url, container.id)
                await _wait_node(op, "monitored")
                # The fallback itself ran: a create with the limit was refused in the
                # engine's words and the same create without it succeeded (creates racing
                # before the first verdict may each have found that out).
                fallbacks = [e for e in logs if e["event"] == "storage_limit_unenforced"]
                assert fallbacks, [e["event"] for e in logs]
                assert {e["node"] for e in fallbacks} == {"xfs-0"}
                assert all(e["error"] for e in fallbacks)
                assert all("pquota" not in h["reason"] for h in await op.history(d))
                node = cluster.engines[0]
                await asyncio.to_thread(node.stop)
                await eventually(lambda: _logged(logs, "node_probe_failed"), within=30)
                await asyncio.to_thread(node.start)
                await _wait_node(op, "enforced")
                assert _logged_now(logs, "storage_limit_recheck")
                await asyncio.to_thread(remove_managed_containers, [url])
