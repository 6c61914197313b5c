"""``python -m bench rebalance [--runs 3] [--replicas 12] [--min-ready 5]``: how long a node
that returns waits for its share.

Three real engines (``tests.harness.engines.Cluster``), one deployment of 12 replicas spread
4/4/4. One engine is stopped (SIGTERM to dockerd: a real node failure); once its node is
`not_ready` and its replicas are replaced on the other two (6/6), the engine is started again.
Measured, per run: from the node being `ready` again (its row, as the controller writes it)
to the spread back at 4/4/4 with every replica running, and the least number of running
containers seen while that happened (sampled every 100 ms; it must never drop below 12).
Rebalancing moves one replica at a time and waits `--min-ready` seconds (FOG_MIN_READY_SECONDS,
production default 5) before stopping the old one, so the time is about 4 moves x (start +
min-ready). The controller runs in-process on PostgreSQL (``FOG_TEST_DATABASE_URL``) with the
test suite's settings and short node grace and eviction. Prints each run and the medians, and
writes ``bench/results/rebalance-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.report import run_suite, write_results
from controller.readmodel import NODES
from schema import engine as engine_mod
from tests.harness.database import TemplateDatabases, admin_url_from_env
from tests.harness.engines import Cluster, build_test_image, ensure_docker_installed
from tests.harness.fleet import (
    ContainerSampler,
    Operator,
    converged,
    eventually,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)


@dataclass(frozen=True)
class Run:
    run: int
    ready_to_balanced_seconds: float
    engine_start_to_ready_seconds: float
    least_running: int


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _spread(op: Operator, d: Any, nodes: dict[Any, str]) -> Counter[str]:
    return Counter(nodes[r["node_id"]] for r in await op.replicas(d, "running"))


async def _one(
    cluster: Cluster, templates: TemplateDatabases, args: argparse.Namespace, index: int
) -> Run:
    urls = list(cluster.urls)
    url = await templates.migrated_pg()
    engine = engine_mod.create_engine(url)
    n = args.replicas
    even = Counter({f"node-{i}": n // 3 for i in range(3)})
    try:
        op = Operator(engine)
        ids = [
            await op.add_node(f"node-{i}", u, cpu_cores=8, memory_mb=16384)
            for i, u in enumerate(urls)
        ]
        nodes = {nid: f"node-{i}" for i, nid in enumerate(ids)}
        user = await op.add_user()
        settings = settings_for_tests(
            url,
            min_ready_seconds=args.min_ready,
            node_grace_seconds=2.0,
            eviction_seconds=1.0,
            eviction_interval_seconds=1.0,
        )
        async with running_controller(settings):
            d = await op.add_deployment(user, "web", replicas=n)

            async def balanced() -> bool:
                return await converged(op, urls, d, n) and await _spread(op, d, nodes) == even

            await eventually(balanced, within=120)
            lost = cluster.engines[2]
            await asyncio.to_thread(lost.stop)

            async def moved() -> bool:
                spread = await _spread(op, d, nodes)
                return await converged(op, urls[:2], d, n) and spread["node-2"] == 0

            await eventually(moved, within=120)
            started = time.monotonic()
            await asyncio.to_thread(lost.start)

            async def ready_at() -> float | None:
                async with engine.connect() as conn:
                    status = await conn.scalar(select(NODES.c.status).where(NODES.c.id == ids[2]))
                return time.monotonic() if status == "ready" else None

            with ContainerSampler(urls, d) as sampler:
                ready = await eventually(ready_at, within=60, interval=0.05)
                done = await eventually(lambda: _when(balanced), within=300, interval=0.1)
            return Run(index, done - ready, ready - started, min(sampler.running()))
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)
        await engine.dispose()
        await templates.drop(url)


async def _when(check: Any) -> float | None:
    return time.monotonic() if await check() else None


async def _main(args: argparse.Namespace, workdir: Path, command: str) -> int:
    cluster = Cluster.start(3, base_dir=workdir)
    for e in cluster.engines:
        build_test_image(e)
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    runs: list[Run] = []
    try:
        for i in range(args.runs):
            started = time.monotonic()
            run = await _one(cluster, templates, args, i)
            runs.append(run)
            _say(
                f"run {i}: node ready -> balanced {run.ready_to_balanced_seconds:.2f} s "
                f"(engine start -> ready {run.engine_start_to_ready_seconds:.2f} s), least "
                f"running {run.least_running}/{args.replicas} (run took "
                f"{time.monotonic() - started:.0f} s)"
            )
    finally:
        await templates.close()
        cluster.stop_all()
    median = statistics.median(r.ready_to_balanced_seconds for r in runs)
    print(
        f"{args.replicas} replicas over 3 nodes, a node returns: ready -> balanced "
        f"{args.replicas // 3}/{args.replicas // 3}/{args.replicas // 3}, median of "
        f"{len(runs)}: {median:.2f} s (min-ready {args.min_ready:g} s); least running "
        f"in any sample: {min(r.least_running for r in runs)}"
    )
    out: dict[str, Any] = {
        "command": command,
        "replicas": args.replicas,
        "min_ready_seconds": args.min_ready,
        "runs": [asdict(r) for r in runs],
        "median_ready_to_balanced_seconds": median,
    }
    _say(f"written: {write_results('rebalance', out)}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench rebalance", description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="default 3")
    p.add_argument("--replicas", type=int, default=12, help="a multiple of 3 (default 12)")
    p.add_argument("--min-ready", type=float, default=5.0, help="seconds (default 5)")
    args = p.parse_args(argv)
    ensure_docker_installed()
    return run_suite("rebalance", argv, lambda workdir, command: _main(args, workdir, command))
