"""``python -m bench scale``: the real controller at fog scale, on hollow nodes.

Why this shape:
- We cannot start a thousand Docker engines, so, as Kubernetes does with kubemark, the nodes
  are hollow (`controller.runtime.hollow.HollowRuntime`): engine calls cost nothing and what
  is measured is the controller itself: the real `Controller` (leader election and fencing,
  heartbeats, resync timer, work queue, workers, reconciler, planner, scheduler) against a
  fresh migrated PostgreSQL database, with production settings except those printed as tuned.
- The placement case (issue 15, bench/scale_rules.py): phase "place-rules" is "place" on the
  same fog with its nodes labelled over 20 zones and every deployment given a selector (or
  none), `spread_by: zone` and `max_per_node`, checked afterwards against its rules; phase
  "schedule" times the scheduler alone (`NodeIndex`) over the fog, plain and with rules.
- Three figures, each with the issue's aim. (a) Placement throughput ("place" phase): from
  the moment the controller starts (it must win the election, probe the nodes and write the
  replica rows first: that is "end to end") until every replica is `running` in the database
  *and* its container exists in the hollow runtime. (b) A no-op `resync()` pass ("resync"
  phase) over a converged fog written directly into the database and the hollow runtime (the
  state placement ends in, reached in seconds at any size; the pass itself must then enqueue
  nothing, which checks that the state is converged by the controller's own judgement),
  called directly with no timer or worker running beside it, its SQL statements counted on
  the store's engine (`before_cursor_execute`). When placement converges, the same passes are
  timed again on the state the controller made. (c) The resident memory of the process.
- Each (size, phase) runs in a child process, so that no figure carries the high-water mark
  of another; the parent prints the table and writes the JSON. Two sizes a factor of ten
  apart per run, so that the statement count per pass can be compared.
- Where the time goes: per-step unit costs on the converged fog (a listing of every node, a
  one-deployment load, the node usage query, one scheduling decision), and `--profile` for
  cProfile text of the placement and of one pass.
- Node rows leave capacity NULL: the controller detects it from `info()`, as for a real engine.
  Nodes are large enough that nothing is refused: the benchmark is about speed, not refusals.
- The in-process controller gets no Docker event streams: hollow nodes have none, and the real
  watcher would start one thread per node that fails at once. Everything else is the daemon's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast
from unittest import mock

from sqlalchemy import Table, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench import scale_rules
from bench.logs import ControllerLog
from controller import heap, scheduler
from controller import loop as loop_module
from controller.loop import Controller
from controller.model import NodeRecord, NodeStatus, Resources, spec_hash
from controller.plan import Observed
from controller.readmodel import DEPLOYMENTS, HISTORY, NODES, REPLICAS, RESOURCES
from controller.runtime import ContainerSpec
from controller.runtime.hollow import HollowNode, HollowRuntime, hollow_url
from controller.settings import Settings
from controller.store import Store
from schema.engine import create_engine
from schema.models import User
from tests.harness.database import TemplateDatabases, admin_url_from_env

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

AIM_REPLICAS_PER_SECOND = 2000.0
AIM_RESYNC_SECONDS = 1.0
AIM_SIZE = "full"  # the size the aims are stated for
IMAGE = "fog-test/busybox:latest"
REQUEST = Resources(cpu_cores=0.5, memory_mb=512, gpu_units=0, storage_gb=1)
# 64 cores and 128 GiB: 50 replicas of the request above fill 40 % of a node.
NODE = HollowNode(cpu_cores=64.0, memory_mb=131072)
INSERT_CHUNK = 5000
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Size:
    name: str
    nodes: int
    deployments: int
    replicas: int  # per deployment

    @property
    def total(self) -> int:
        return self.deployments * self.replicas

    @property
    def label(self) -> str:
        return f"{self.nodes:,} nodes / {self.deployments:,} deployments / {self.total:,} replicas"


SIZES = {
    "tiny": Size("tiny", nodes=10, deployments=100, replicas=5),
    "small": Size("small", nodes=100, deployments=1000, replicas=5),
    "full": Size("full", nodes=1000, deployments=10000, replicas=5),
    # One node holding 1,000 containers: the storage monitor's cost per node at that density.
    "dense": Size("dense", nodes=1, deployments=200, replicas=5),
}
# What `--scale` runs: two sizes a factor of ten apart, so the resync statement counts compare.
SCALES = {"small": ("tiny", "small"), "full": ("small", "full"), "dense": ("dense",)}


@dataclass(frozen=True)
class Tuning:
    """The settings the benchmark changes from the production defaults (printed and saved)."""

    workers: int = 256
    replica_burst: int = 500

    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            workers=self.workers,
            replica_burst=self.replica_burst,
            register_local_node=False,
            auto_migrate=False,
            log_format="json",
            metrics_addr="",
        )


@dataclass
class Options:
    tuning: Tuning = field(default_factory=Tuning)
    timeout_seconds: float = 900.0
    resync_repeats: int = 5
    profile: bool = False
    keep_log: bool = False


# --- measuring ------------------------------------------------------------------------------


def memory_kib() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, KiB."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    """`SELECT deployments`, `UPDATE deployment_replicas`, ...: verb and first table."""
    words = statement.split(None, 1)
    verb = words[0].upper() if words else "?"
    found = _TABLE.search(statement)
    return f"{verb} {found.group(1)}" if found else verb


class SqlCounter:
    """Counts the statements the store's engine sends, by kind."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.kinds: Counter[str] = Counter()
        self.checked_out = 0
        self.peak_checked_out = 0  # database connections in use at once, at most
        event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)
        event.listen(engine.sync_engine.pool, "checkout", self._on_checkout)
        event.listen(engine.sync_engine.pool, "checkin", self._on_checkin)

    def _on_checkout(self, *_args: Any) -> None:
        self.checked_out += 1
        self.peak_checked_out = max(self.peak_checked_out, self.checked_out)

    def _on_checkin(self, *_args: Any) -> None:
        self.checked_out -= 1

    def _on_execute(self, *args: Any) -> None:
        statement = args[2]
        self.kinds[statement_kind(str(statement))] += 1

    def reset(self) -> Counter[str]:
        taken, self.kinds = self.kinds, Counter()
        return taken


@contextlib.contextmanager
def no_event_streams() -> Iterator[None]:
    """Give the controller a watcher that watches nothing: hollow nodes have no Docker event
    stream (see the module docstring)."""

    class _NoEvents:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        async def run(self, stop: asyncio.Event) -> None:
            await stop.wait()

    with mock.patch.object(loop_module, "EventWatcher", _NoEvents):
        yield


class GcPauses:
    """Collections and their pause time per generation while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.by_generation: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        taken = self.by_generation[info["generation"]]
        taken[0] += 1
        taken[1] += time.perf_counter() - self._started

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        gc.callbacks.append(self._on_gc)
        try:
            yield
        finally:
            gc.callbacks.remove(self._on_gc)

    def report(self) -> dict[str, dict[str, float]]:
        return {
            f"gen{g}": {"collections": int(n), "seconds": round(s, 3)}
            for g, (n, s) in self.by_generation.items()
        }


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """cProfile around the block when `path` is given: the top functions, as text, to `path`."""
    if path is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path.with_suffix(".pstats"))  # for pstats / snakeviz
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(60)
        path.write_text(out.getvalue())


def hollow_bytes_per_container(sample: int = 5000) -> float:
    """What one running hollow container costs this process (traced allocations), so the
    controller's own share of the resident memory can be told apart from the simulated fog's."""
    runtime = HollowRuntime({hollow_url("probe"): NODE})
    node = NodeRecord(uuid.uuid4(), "probe", hollow_url("probe"), NodeStatus.READY)
    specs = [
        ContainerSpec(uuid.uuid4(), uuid.uuid4(), IMAGE, REQUEST, "0123456789ab")
        for _ in range(sample)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]

        async def fill() -> None:
            for spec in specs:
                await runtime.ensure(node, spec)
            await runtime.list(node)

        asyncio.run(fill())
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / sample


# --- seeding --------------------------------------------------------------------------------


def node_name(i: int) -> str:
    return f"node-{i:04d}"


@dataclass(frozen=True)
class Seeded:
    nodes: dict[str, uuid.UUID]  # node name -> id
    deployments: list[uuid.UUID]


async def seed(
    engine: AsyncEngine, size: Size, *, status: str = "pending", rules: bool = False
) -> Seeded:
    """Nodes (capacity NULL: detected from info()), one user, deployments with resources;
    with `rules`, node labels and each deployment's placement (bench.scale_rules)."""
    user = uuid.uuid4()
    names = {node_name(i): uuid.uuid4() for i in range(1, size.nodes + 1)}
    nodes = [
        {"id": node_id, "name": name, "docker_url": hollow_url(name)}
        | ({"labels": scale_rules.node_labels(i)} if rules else {})
        for i, (name, node_id) in enumerate(names.items(), start=1)
    ]
    ids = [uuid.uuid4() for _ in range(size.deployments)]
    deployments = [
        {
            "id": d,
            "name": f"d-{i:05d}",
            "user_id": user,
            "container_image": IMAGE,
            "target_replicas": size.replicas,
            "status": status,
        }
        for i, d in enumerate(ids)
    ]
    resources = [
        {
            "id": uuid.uuid4(),
            "deployment_id": d,
            "cpu_cores": REQUEST.cpu_cores,
            "memory_mb": REQUEST.memory_mb,
            "gpu_units": REQUEST.gpu_units,
            "storage_gb": REQUEST.storage_gb,
        }
        for d in ids
    ]
    async with engine.begin() as conn:
        await conn.execute(
            insert(cast(Table, User.__table__)).values(id=user, username="scale-bench")
        )
        await _insert(conn, NODES, nodes)
        await _insert(conn, DEPLOYMENTS, deployments)
        await _insert(conn, RESOURCES, resources)
        if rules:
            await seed_placement(conn, ids)
    return Seeded(names, ids)


async def seed_placement(conn: AsyncConnection, ids: list[uuid.UUID]) -> None:
    """Each deployment's placement as an operator's SQL writes it (migration 0008_placement):
    `spread_by` and `max_per_node` on its spec row, its selector in
    `deployment_node_selectors`."""
    specs, selectors = [], []
    for i, d in enumerate(ids):
        placement = scale_rules.deployment_rules(i)
        specs.append(
            {"d": d, "spread_by": placement.spread_by, "max_per_node": placement.max_per_node}
        )
        selectors += [{"d": d, "k": k, "v": v} for k, v in sorted(placement.node_selector)]
    statements = (
        (
            "INSERT INTO deployment_specs (deployment_id, spread_by, max_per_node) "
            "VALUES (:d, :spread_by, :max_per_node)",
            specs,
        ),
        (
            "INSERT INTO deployment_node_selectors (deployment_id, key, value) VALUES (:d, :k, :v)",
            selectors,
        ),
    )
    for statement, rows in statements:
        for start in range(0, len(rows), INSERT_CHUNK):
            await conn.execute(text(statement), rows[start : start + INSERT_CHUNK])


async def _insert(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), INSERT_CHUNK):
        await conn.execute(insert(table), rows[start : start + INSERT_CHUNK])


async def analyze(engine: AsyncEngine) -> None:
    """Fresh planner statistics after the bulk insert (committed: rolled back, they vanish)."""
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))


async def seed_converged(engine: AsyncEngine, runtime: HollowRuntime, size: Size) -> None:
    """The state the controller converges to, written directly: every deployment `running`
    with the two history rows it would have (pending -> scheduled -> running), every replica
    `running` on a node (round robin) with its container running in the hollow runtime."""
    seeded = await seed(engine, size, status="running")
    names = list(seeded.nodes)
    now = datetime.now(UTC)
    digest = spec_hash(IMAGE, REQUEST)
    replicas: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    k = 0
    for d in seeded.deployments:
        for _ in range(size.replicas):
            name = names[k % len(names)]
            k += 1
            node = NodeRecord(seeded.nodes[name], name, hollow_url(name), NodeStatus.READY)
            replica = uuid.uuid4()
            container = await runtime.ensure(
                node, ContainerSpec(replica, d, IMAGE, REQUEST, digest, None)
            )
            replicas.append(
                {
                    "id": replica,
                    "deployment_id": d,
                    "node_id": node.id,
                    "status": "running",
                    "container_id": container,
                    "started_at": now,
                    "spec_hash": digest,
                    "created_at": now,
                }
            )
        for old, new, reason in (
            ("pending", "scheduled", f"0/{size.replicas} replicas running"),
            ("scheduled", "running", f"{size.replicas}/{size.replicas} replicas running"),
        ):
            history.append(
                {
                    "id": uuid.uuid4(),
                    "deployment_id": d,
                    "old_status": old,
                    "new_status": new,
                    "changed_at": now,
                    "reason": reason,
                }
            )
    async with engine.begin() as conn:
        await _insert(conn, REPLICAS, replicas)
        await _insert(conn, HISTORY, history)


# --- one size, in a child process -----------------------------------------------------------


@dataclass
class Progress:
    """One poll of the database and the hollow runtime while replicas are being placed."""

    t: float
    replicas: dict[str, int]
    deployments_running: int
    containers: int


async def poll(engine: AsyncEngine, runtime: HollowRuntime, started: float) -> Progress:
    rep, dep = REPLICAS, DEPLOYMENTS
    async with engine.connect() as conn:
        by_status = (
            await conn.execute(select(rep.c.status, func.count()).group_by(rep.c.status))
        ).all()
        running = (
            await conn.execute(
                select(func.count()).select_from(dep).where(dep.c.status == "running")
            )
        ).scalar_one()
    return Progress(
        t=round(time.perf_counter() - started, 3),
        replicas={str(row[0]): int(row[1]) for row in by_status},
        deployments_running=int(running),
        containers=runtime.count(),
    )


def _first(timeline: list[Progress], done: float, total: int) -> float | None:
    return next((p.t for p in timeline if p.replicas.get("running", 0) >= done * total), None)


async def place(
    controller: Controller,
    operator: AsyncEngine,
    runtime: HollowRuntime,
    size: Size,
    deadline_seconds: float,
) -> tuple[dict[str, Any], asyncio.Task[None]]:
    """Start the controller and poll until every replica runs and every deployment says so."""
    started = time.perf_counter()
    task = asyncio.create_task(controller.run())
    timeline: list[Progress] = []
    replicas_done: float | None = None
    status_done: float | None = None
    error: str | None = None
    while True:
        await asyncio.sleep(POLL_SECONDS)
        p = await poll(operator, runtime, started)
        timeline.append(p)
        if replicas_done is None and (
            p.replicas.get("running", 0) >= size.total and p.containers >= size.total
        ):
            replicas_done = p.t
        if replicas_done is not None and p.deployments_running >= size.deployments:
            status_done = p.t
            break
        if task.done():
            error = f"controller ended early: {task.exception()!r}"
            break
        if p.t > deadline_seconds:
            error = f"not converged within {deadline_seconds:g} s"
            break
    last = timeline[-1]
    seconds = replicas_done if replicas_done is not None else last.t
    placed = last.replicas.get("running", 0)
    t10, t90 = _first(timeline, 0.1, size.total), _first(timeline, 0.9, size.total)
    return (
        {
            "error": error,
            "seconds_to_all_running": replicas_done,
            "seconds_to_all_deployments_running": status_done,
            "replicas_running": placed,
            "replicas_per_second": round(placed / seconds, 1) if seconds else None,
            # The middle 80 %: the rate once the controller is up, before the tail.
            "replicas_per_second_10_to_90": (
                round(0.8 * size.total / (t90 - t10), 1) if t10 and t90 and t90 > t10 else None
            ),
            "first_running_at_s": _first(timeline, 1 / size.total, size.total),
            "timeline": [asdict(p) for p in timeline],
        },
        task,
    )


async def verify(
    operator: AsyncEngine, runtime: HollowRuntime, size: Size, rules: Seeded | None = None
) -> dict[str, Any]:
    """Converged for the right reasons: one running container per running replica, no more;
    with `rules` (the seeded labelled fog), no deployment breaks its placement."""
    rep = REPLICAS
    async with operator.connect() as conn:
        rows = (
            await conn.execute(select(rep.c.id, rep.c.status, rep.c.node_id, rep.c.deployment_id))
        ).all()
    running = {r.id for r in rows if r.status == "running"}
    containers = runtime.containers()
    per_node = Counter(str(r.node_id) for r in rows if r.status == "running")
    return {
        "running_rows": len(running),
        "other_rows": dict(Counter(str(r.status) for r in rows if r.status != "running")),
        "containers": len(containers),
        "containers_match_rows": {c.replica_id for c in containers} == running
        and len(containers) == len(running) == size.total,
        "replicas_per_node_min_max": [min(per_node.values()), max(per_node.values())]
        if per_node
        else None,
        "broken_placement_rules": None if rules is None else placement_broken(rows, rules),
    }


def placement_broken(rows: Any, seeded: Seeded) -> dict[str, int]:
    """Deployments whose running replicas break their seeded rules (or zone skew), by kind."""
    nodes = {
        node_id: scale_rules.labelled_node(
            int(name.rsplit("-", 1)[1]), node_id, NODE.cpu_cores, NODE.memory_mb
        )
        for name, node_id in seeded.nodes.items()
    }
    index = {d: i for i, d in enumerate(seeded.deployments)}
    placed: dict[int, list[uuid.UUID]] = {}
    for r in rows:
        if r.status == "running":
            placed.setdefault(index[r.deployment_id], []).append(r.node_id)
    return scale_rules.broken_rules(nodes, placed)


async def resync_passes(
    controller: Controller, counter: SqlCounter, repeats: int, profile_path: Path | None
) -> dict[str, Any]:
    """`repeats` no-op passes, each timed and its statements counted; one more profiled."""
    durations: list[float] = []
    statements: list[dict[str, int]] = []
    enqueued: list[int] = []
    for _ in range(repeats):
        counter.reset()
        t0 = time.perf_counter()
        enqueued.append(await controller.resync())
        durations.append(time.perf_counter() - t0)
        statements.append(dict(counter.reset()))
    phases = await resync_phases(controller, repeats)
    if profile_path is not None:
        with profiled(profile_path):
            await controller.resync()
    counts = [sum(s.values()) for s in statements]
    return {
        "median_s": round(statistics.median(durations), 4),
        "min_s": round(min(durations), 4),
        "max_s": round(max(durations), 4),
        "durations_s": [round(d, 4) for d in durations],
        "statements_per_pass": counts[0] if len(set(counts)) == 1 else counts,
        "statements_by_kind": statements[0],
        "enqueued": enqueued,
        "phases_median_s": phases,
    }


async def resync_phases(controller: Controller, repeats: int) -> dict[str, float]:
    """The pass's steps one by one (as `Controller.resync` runs them), median seconds each:
    where a slow pass spends its time."""
    taken: dict[str, list[float]] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        taken.setdefault(name, []).append(now - since)
        return now

    for _ in range(repeats):
        t = time.perf_counter()
        views = await controller.reconciler.observe(controller.nodes.reachable())
        t = lap("observe_all_nodes", t)
        deployments = await controller.store.load_active()
        t = lap("load_active", t)
        controller.reconciler.triage(deployments, views)
        t = lap("triage", t)
        await controller.store.prune_terminal_replicas(controller.settings.keep_terminal_replicas)
        lap("prune", t)
    return {name: round(statistics.median(v), 4) for name, v in taken.items()}


async def storage_passes(
    controller: Controller, runtime: HollowRuntime, repeats: int
) -> dict[str, Any]:
    """The storage monitor (controller.diskwatch) on the converged fog, every node hollow and
    so `monitored`: each container given a written size under its limit (the pass then
    replaces nothing), `repeats` passes timed alone, then the no-op resync timed with a pass
    started beside it."""
    urls = {r.id: r.docker_url for r in controller.nodes.reachable()}
    for i, c in enumerate(runtime.containers()):
        runtime.set_written(urls[c.node_id], c.id, (i % 900) * 1024**2)
    passes = []
    for _ in range(repeats):
        passes.append(await controller.storage.check())
    assert all(not p.over for p in passes), "a storage pass found a container over its limit"
    # A pass started with each resync: the most a resync can overlap one (in the daemon the
    # monitor runs once every FOG_STORAGE_CHECK_SECONDS, 60 by default).
    durations = []
    for _ in range(repeats):
        beside = asyncio.create_task(controller.storage.check())
        t0 = time.perf_counter()
        await controller.resync()
        durations.append(time.perf_counter() - t0)
        await beside
    seconds = [p.seconds for p in passes]
    per_container = statistics.median(seconds) / max(1, passes[0].containers)
    return {
        "nodes": passes[0].nodes,
        "containers": passes[0].containers,
        "median_s": round(statistics.median(seconds), 5),
        "max_s": round(max(seconds), 5),
        "per_1000_containers_ms": round(per_container * 1000 * 1000, 3),
        "resync_beside_median_s": round(statistics.median(durations), 4),
    }


async def unit_costs(controller: Controller, repeats: int) -> dict[str, float]:
    """What one reconcile pays for each step that grows with the fog, on the converged fog,
    median milliseconds: the per-replica budget at 2,000 replicas/s is 0.5 ms in all."""
    deployments = await controller.store.load_deployments()
    sample = deployments[:: max(1, len(deployments) // repeats)][:repeats]
    nodes = controller.nodes.nodes()
    taken: dict[str, list[float]] = {}

    async def timed(name: str, step: Awaitable[Any]) -> Any:
        t = time.perf_counter()
        out = await step
        taken.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def timed_sync(name: str, step: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = step()
        taken.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for d in sample:
        reachable = controller.nodes.reachable()
        await timed(
            "observe_all_nodes_one_deployment", controller.reconciler.observe(reachable, d.id)
        )
        views = await timed(
            "observe_all_nodes_unfiltered", controller.reconciler.observe(reachable)
        )
        # What each plan paid before listings were narrowed to the deployment: a scan of every
        # container of the fog for this deployment's.
        timed_sync("index_one_deployment_in_whole_fog", partial(Observed.index, d.id, views))
        await timed("load_deployment", controller.store.load_deployment(d.id))
        usage = await timed("node_usage", controller.store.node_usage())
        timed_sync(
            "schedule_one_replica",
            partial(scheduler.schedule, [uuid.uuid4()], REQUEST, nodes, usage, {}),
        )
        timed_sync("nodes_list", controller.nodes.nodes)
    return {name: round(statistics.median(v) * 1000, 3) for name, v in taken.items()}


async def run_placement(
    size: Size, options: Options, workdir: Path, stem: str, *, rules: bool = False
) -> dict[str, Any]:
    """From zero to every replica running, then (if it got there) the no-op resync passes;
    with `rules`, on the labelled fog whose deployments have placement rules."""
    memory: dict[str, dict[str, int]] = {"start": memory_kib()}
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    log = ControllerLog(_log_dir(options, workdir) / f"{stem}-{size.name}.controller.log")
    profile = options.profile
    try:
        url = await templates.migrated_pg()
        operator = create_engine(url)
        store = Store(create_engine(url, pool_size=options.tuning.settings(url).db_pool_size))
        try:
            t0 = time.perf_counter()
            seeded = await seed(operator, size, rules=rules)
            await analyze(operator)
            seed_s = time.perf_counter() - t0
            runtime = HollowRuntime(
                {hollow_url(node_name(i)): NODE for i in range(1, size.nodes + 1)}
            )
            settings = options.tuning.settings(url)
            counter = SqlCounter(store.engine)
            log.open()
            controller = Controller(settings, store, runtime)
            memory["before_controller"] = memory_kib()
            with no_event_streams():
                counter.reset()
                calls_before = Counter(runtime.calls)
                phase = "place-rules" if rules else "place"
                place_profile = RESULTS_DIR / f"{stem}-{size.name}.{phase}.prof.txt"
                pauses = GcPauses()
                with pauses.installed(), profiled(place_profile if profile else None):
                    placement, task = await place(
                        controller, operator, runtime, size, options.timeout_seconds
                    )
                placement["statements"] = dict(counter.reset())
                placement["group_commit"] = store.group_commit
                placement["db_connections_peak"] = counter.peak_checked_out
                placement["gc_pauses"] = pauses.report()
                placement["runtime_calls"] = dict(Counter(runtime.calls) - calls_before)
                memory["converged"] = memory_kib()
                controller.stop()
                await asyncio.wait_for(task, settings.shutdown_grace_seconds + 30)
            placement["verify"] = await verify(operator, runtime, size, seeded if rules else None)
            resync: dict[str, Any] | None = None
            if placement["error"] is None:
                resync = await resync_passes(controller, counter, options.resync_repeats, None)
            memory["after_resync"] = memory_kib()
        finally:
            await store.close()
            await operator.dispose()
            log.close()
    finally:
        await templates.close()
    placement["seed_seconds"] = round(seed_s, 2)
    placement["resync_after"] = resync
    placement["memory_kib"] = memory
    placement["controller_warnings"] = dict(log.warnings())
    return placement


async def run_resync(size: Size, options: Options, workdir: Path, stem: str) -> dict[str, Any]:
    """No-op passes over a converged fog written directly (`seed_converged`): quick at any
    size, and the same state the placement phase ends in."""
    memory: dict[str, dict[str, int]] = {"start": memory_kib()}
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    log = ControllerLog(_log_dir(options, workdir) / f"{stem}-{size.name}.resync.log")
    try:
        url = await templates.migrated_pg()
        operator = create_engine(url)
        store = Store(create_engine(url, pool_size=options.tuning.settings(url).db_pool_size))
        try:
            runtime = HollowRuntime(
                {hollow_url(node_name(i)): NODE for i in range(1, size.nodes + 1)}
            )
            t0 = time.perf_counter()
            await seed_converged(operator, runtime, size)
            await analyze(operator)
            seed_s = time.perf_counter() - t0
            memory["seeded"] = memory_kib()
            log.open()
            controller = Controller(options.tuning.settings(url), store, runtime)
            counter = SqlCounter(store.engine)
            await controller.nodes.refresh()  # what a new leader does first: nodes ready
            resync_profile = RESULTS_DIR / f"{stem}-{size.name}.resync.prof.txt"
            result = await resync_passes(
                controller,
                counter,
                options.resync_repeats,
                resync_profile if options.profile else None,
            )
            result["unit_costs_ms"] = await unit_costs(controller, options.resync_repeats)
            result["storage"] = await storage_passes(controller, runtime, options.resync_repeats)
            memory["after_passes"] = memory_kib()
        finally:
            await store.close()
            await operator.dispose()
            log.close()
    finally:
        await templates.close()
    result["seed_seconds"] = round(seed_s, 2)
    result["memory_kib"] = memory
    result["controller_warnings"] = dict(log.warnings())
    return result


def _log_dir(options: Options, workdir: Path) -> Path:
    return RESULTS_DIR if options.keep_log else workdir


# --- the parent: sizes in children, the table, the JSON ------------------------------------

PHASES = ("resync", "place", "place-rules", "schedule")


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f}"


def _num(value: Any, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _get(value: Any, *path: str) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _per_replica(r: dict[str, Any]) -> float | None:
    statements = _get(r, "place", "statements")
    running = _get(r, "place", "replicas_running")
    return sum(statements.values()) / running if statements and running else None


def table(results: list[dict[str, Any]], tuning: Tuning) -> list[str]:
    rows: list[tuple[str, list[str], str]] = []

    def row(name: str, cells: list[str], aim: str = "") -> None:
        rows.append((name, cells, aim))

    def each(*path: str, fmt: str = ",.0f") -> list[str]:
        return [_num(_get(r, *path), fmt) for r in results]

    row(
        "nodes / deployments",
        [f"{r['size']['nodes']:,} / {r['size']['deployments']:,}" for r in results],
    )
    row("replicas", [f"{r['size']['deployments'] * r['size']['replicas']:,}" for r in results])
    row(
        "placement: replicas/s, 0 -> all running",
        each("place", "replicas_per_second"),
        f">= {AIM_REPLICAS_PER_SECOND:,.0f} at {AIM_SIZE}",
    )
    row("  replicas running at the end", each("place", "replicas_running"))
    row("  replicas/s, 10% -> 90% running", each("place", "replicas_per_second_10_to_90"))
    row("  s to all replicas running", each("place", "seconds_to_all_running", fmt=",.1f"))
    row(
        "  s to all deployments running",
        each("place", "seconds_to_all_deployments_running", fmt=",.1f"),
    )
    row("  SQL statements per replica", [_num(_per_replica(r), ".2f") for r in results])
    row("  peak database connections in use", each("place", "db_connections_peak"))
    row(
        "  GC pauses while placing, s (full collections)",
        [
            f"{sum(g['seconds'] for g in p.values()):.2f} ({p['gen2']['collections']})"
            if (p := _get(r, "place", "gc_pauses"))
            else "-"
            for r in results
        ],
    )
    row(
        "placement with rules (20 zones, selectors, cap): replicas/s",
        each("place-rules", "replicas_per_second"),
        f">= {AIM_REPLICAS_PER_SECOND:,.0f} at {AIM_SIZE}",
    )
    row("  s to all replicas running", each("place-rules", "seconds_to_all_running", fmt=",.1f"))
    row(
        "  deployments breaking their rules",
        [
            "-"
            if (b := _get(r, "place-rules", "verify", "broken_placement_rules")) is None
            else str(sum(b.values()))
            for r in results
        ],
        "0",
    )
    row("scheduler alone, replicas/s: plain", each("schedule", "plain", "replicas_per_second"))
    row("  with rules", each("schedule", "rules", "replicas_per_second"))
    row(
        "no-op resync, median s",
        each("resync", "median_s", fmt=".3f"),
        f"< {AIM_RESYNC_SECONDS:g} s at {AIM_SIZE}",
    )
    row(
        "  SQL statements per pass",
        [str(_get(r, "resync", "statements_per_pass") or "-") for r in results],
        "the same at every size",
    )
    row(
        "  deployments enqueued (0 = no-op)",
        [str(_get(r, "resync", "enqueued") or "-") for r in results],
    )
    row("  after the controller converged, s", each("place", "resync_after", "median_s", fmt=".3f"))
    row(
        "storage monitor pass (all nodes monitored), median s",
        each("resync", "storage", "median_s", fmt=".4f"),
        "off the resync path",
    )
    row(
        "  per 1,000 containers, ms", each("resync", "storage", "per_1000_containers_ms", fmt=".2f")
    )
    row(
        "  no-op resync with a storage pass beside it, median s",
        each("resync", "storage", "resync_beside_median_s", fmt=".3f"),
        f"< {AIM_RESYNC_SECONDS:g} s at {AIM_SIZE}",
    )
    row(
        "RSS holding the size (resync), MiB",
        [_mib(_get(r, "resync", "memory_kib", "after_passes", "VmRSS")) for r in results],
        "report",
    )
    row(
        "RSS before the controller ran, MiB",
        [_mib(_get(r, "place", "memory_kib", "before_controller", "VmRSS")) for r in results],
    )
    row(
        "RSS at the end of placement, MiB",
        [_mib(_get(r, "place", "memory_kib", "converged", "VmRSS")) for r in results],
    )
    row(
        "  of which the hollow fog (est.), MiB",
        [_num(r.get("hollow_state_mib_estimate")) for r in results],
    )
    row(
        "peak RSS of placement (VmHWM), MiB",
        [_mib(_get(r, "place", "memory_kib", "after_resync", "VmHWM")) for r in results],
    )
    cols = [r["size"]["name"] for r in results]
    width = max(len(name) for name, _, _ in rows)
    colw = [max(len(c), *(len(cells[i]) for _, cells, _ in rows)) for i, c in enumerate(cols)]

    def line(name: str, cells: list[str], aim: str) -> str:
        body = "  ".join(f"{c:>{w}}" for c, w in zip(cells, colw, strict=True))
        return f"{name:<{width}}  {body}" + (f"  {aim}" if aim else "")

    out = [line("", cols, "aim")]
    out += [line(name, cells, aim) for name, cells, aim in rows]
    out.append(
        f"tuned: FOG_WORKERS={tuning.workers}, FOG_REPLICA_BURST={tuning.replica_burst}; "
        "all else the production default"
    )
    return out


def aim_lines(results: list[dict[str, Any]]) -> list[str]:
    at = next((r for r in results if r["size"]["name"] == AIM_SIZE), None)
    if at is None:
        return [
            f"the aims are stated for the {AIM_SIZE} size ({SIZES[AIM_SIZE].label}): "
            "run `python -m bench scale --scale full`"
        ]
    rate = _get(at, "place", "replicas_per_second")
    ruled = _get(at, "place-rules", "replicas_per_second")
    broken = _get(at, "place-rules", "verify", "broken_placement_rules")
    resync = _get(at, "resync", "median_s")
    counts = {str(_get(r, "resync", "statements_per_pass")) for r in results}
    placed_ok = (
        rate is not None and rate >= AIM_REPLICAS_PER_SECOND and not _get(at, "place", "error")
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        f"placement: {_num(rate)} replicas/s (aim >= {AIM_REPLICAS_PER_SECOND:,.0f}): "
        f"{verdict(placed_ok)}",
        f"placement with rules: {_num(ruled)} replicas/s (aim >= "
        f"{AIM_REPLICAS_PER_SECOND:,.0f}, no rule broken): "
        f"{verdict(ruled is not None and ruled >= AIM_REPLICAS_PER_SECOND and broken == {})}",
        f"no-op resync: {_num(resync, '.3f')} s (aim < {AIM_RESYNC_SECONDS:g} s): "
        f"{verdict(resync is not None and resync < AIM_RESYNC_SECONDS)}",
        f"SQL statements per resync pass: {', '.join(sorted(counts))} across sizes: "
        f"{verdict(len(counts) == 1 and 'None' not in counts)}",
    ]


def _host() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            done = subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": run("psql", "--version"),
        "git": {
            "commit": run("git", "rev-parse", "HEAD"),
            "dirty": bool(run("git", "status", "--porcelain")),
        },
    }


def _parser() -> argparse.ArgumentParser:
    defaults, tuning = Options(), Tuning()
    p = argparse.ArgumentParser(
        prog="python -m bench scale",
        description="Scale benchmark: the real controller on hollow nodes and PostgreSQL.",
    )
    p.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="small",
        help="small: 100 and 1,000 deployments (default); full: 1,000 and 10,000 (the aims); "
        "dense: 1,000 containers on one node (the storage monitor's per-node cost)",
    )
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated subset of resync (seeded converged fog), place (from zero)",
    )
    p.add_argument(
        "--workers", type=int, default=tuning.workers, help=f"FOG_WORKERS ({tuning.workers})"
    )
    p.add_argument(
        "--replica-burst",
        type=int,
        default=tuning.replica_burst,
        help=f"FOG_REPLICA_BURST ({tuning.replica_burst})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout_seconds,
        help=f"longest placement per size, s ({defaults.timeout_seconds:g}); the rate so far "
        "is reported when it is reached",
    )
    p.add_argument("--resync-repeats", type=int, default=defaults.resync_repeats)
    p.add_argument("--profile", action="store_true", help="cProfile placement and one resync pass")
    p.add_argument(
        "--keep-log", action="store_true", help="keep the controller logs in bench/results"
    )
    p.add_argument("--child", choices=sorted(SIZES), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--stem", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p


def _options(args: argparse.Namespace) -> Options:
    if args.workers < 1 or args.replica_burst < 1 or args.resync_repeats < 1:
        raise SystemExit("--workers, --replica-burst and --resync-repeats must be at least 1")
    return Options(
        tuning=Tuning(workers=args.workers, replica_burst=args.replica_burst),
        timeout_seconds=args.timeout,
        resync_repeats=args.resync_repeats,
        profile=args.profile,
        keep_log=args.keep_log,
    )


def _phases(args: argparse.Namespace) -> tuple[str, ...]:
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or set(phases) - set(PHASES):
        raise SystemExit(f"--phases: choose from {', '.join(PHASES)}")
    return phases


def _child(args: argparse.Namespace) -> int:
    heap.tune_collector()  # as `fog-controller run` does before its loop starts
    size, options = SIZES[args.child], _options(args)
    with tempfile.TemporaryDirectory(prefix="fogscale-") as tmp:
        if args.phase in ("place", "place-rules"):
            rules = args.phase == "place-rules"
            try:
                result = asyncio.run(
                    run_placement(size, options, Path(tmp), args.stem, rules=rules)
                )
            except DBAPIError as exc:  # a database without migration 0008_placement
                result = {"error": f"seeding failed: {str(exc.orig).splitlines()[0]}"}
            failed = result["error"] is not None or bool(
                _get(result, "verify", "broken_placement_rules")
            )
        elif args.phase == "schedule":
            result = scale_rules.scheduler_alone(
                size.nodes,
                size.deployments,
                size.replicas,
                REQUEST,
                (NODE.cpu_cores, NODE.memory_mb),
            )
            failed = bool(result["rules"]["broken"] or result["rules"]["unplaced"])
        else:
            result = asyncio.run(run_resync(size, options, Path(tmp), args.stem))
            failed = any(result["enqueued"])
    args.out.write_text(json.dumps(result, default=str))
    return 1 if failed else 0


def _say(line: str = "") -> None:
    print(line, flush=True)


def _run_child(argv: list[str], name: str, phase: str, stem: str, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{name}-{phase}.json"
    child = [
        *(sys.executable, "-m", "bench", "scale", *argv),
        *("--child", name, "--phase", phase, "--stem", stem, "--out", str(out)),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(child, cwd=REPO, check=False)
    if not out.exists():
        raise SystemExit(f"{name}/{phase}: the child failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(out.read_text())
    result["child_seconds"] = round(time.perf_counter() - t0, 1)
    result["child_exit"] = done.returncode
    return result


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args)
    options, phases = _options(args), _phases(args)
    command = shlex.join(["python", "-m", "bench", "scale", *argv])
    started = datetime.now(UTC)
    stem = f"scale-{started:%Y%m%dT%H%M%SZ}"
    host = _host()
    _say(
        f"scale: the controller on hollow nodes, PostgreSQL at "
        f"{admin_url_from_env().rsplit('@', 1)[-1]}, {host['cpus']} CPUs, "
        f"load {host['loadavg_before']}"
    )
    results: list[dict[str, Any]] = []
    failed = False
    per_container = hollow_bytes_per_container()
    with tempfile.TemporaryDirectory(prefix="fogscale-") as tmp:
        for name in SCALES[args.scale]:
            size = SIZES[name]
            result: dict[str, Any] = {
                "size": asdict(size),
                "hollow_state_mib_estimate": round(per_container * size.total / 2**20, 1),
            }
            for phase in phases:
                _say(f"  {name} ({size.label}): {phase} ...")
                got = _run_child(argv, name, phase, stem, Path(tmp))
                result[phase] = got
                failed = failed or got["child_exit"] != 0
                if phase in ("place", "place-rules") and "timeline" not in got:
                    _say(f"    {got['error']}")
                elif phase in ("place", "place-rules"):
                    broken = _get(got, "verify", "broken_placement_rules")
                    _say(
                        f"    {got['replicas_running']:,} replicas running after "
                        f"{_num(got['seconds_to_all_running'] or got['timeline'][-1]['t'], ',.1f')}"
                        f" s: {_num(got['replicas_per_second'])}/s"
                        + (f"; {got['error']}" if got["error"] else "")
                        + (f"; placement rules broken: {broken}" if broken else "")
                    )
                elif phase == "schedule":
                    _say(
                        "    scheduler alone: "
                        f"{_num(got['plain']['replicas_per_second'])}/s plain, "
                        f"{_num(got['rules']['replicas_per_second'])}/s with rules"
                        + (f"; broken: {got['rules']['broken']}" if got["rules"]["broken"] else "")
                    )
                else:
                    _say(
                        f"    no-op pass {got['median_s']:.3f} s (median of "
                        f"{len(got['durations_s'])}), {got['statements_per_pass']} statements, "
                        f"enqueued {got['enqueued']}"
                    )
            results.append(result)
    _say()
    for line in table(results, options.tuning):
        _say(line)
    _say()
    for line in aim_lines(results):
        _say(line)
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    settings = options.tuning.settings("")
    document = {
        "benchmark": "scale",
        "format": 1,
        "command": command,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "host": host,
        "tuning": asdict(options.tuning),
        "settings": {
            f.name: getattr(settings, f.name) for f in fields(Settings) if f.name != "database_url"
        },
        "node": asdict(NODE),
        "request": asdict(REQUEST),
        "hollow_bytes_per_container": round(per_container, 1),
        "aims": {
            "replicas_per_second": AIM_REPLICAS_PER_SECOND,
            "resync_seconds": AIM_RESYNC_SECONDS,
            "at": AIM_SIZE,
        },
        "results": results,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{stem}.json"
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp_path.replace(path)
    _say()
    _say(f"figures: {path.relative_to(REPO)}   command: {command}")
    if options.profile:
        _say(f"profiles: bench/results/{stem}-<size>.{{place,resync}}.prof.txt")
    return 1 if failed else 0
