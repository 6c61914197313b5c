"""``python -m bench prepull [--runs 3] [--replicas 10]``: what the rollout's pre-pull costs.

A rolling update of 10 replicas over 3 real engines (``tests.harness.engines.Cluster``), from
a local image to one in a real private registry (``tests.harness.registry``: docker-registry
with htpasswd, pulled with an image pull secret). Measured: from the image edit (just before
the UPDATE) to the first old replica stopped (its row's ``stopped_at``, written once its
container is stopped and removed), in two cases run alternately on a fresh database each:

- ``cold``: the new image is on no node, so the pre-pull really pulls it on the nodes where
  old replicas stop before the first stop;
- ``warm``: the image is already on every node (pulled beforehand), so the pre-pull is an
  image inspect per node (the runtime's IfNotPresent for a tag other than ``latest``).

The difference is the pre-pull's cost on this image (the harness's static busybox, about
1 MB) over a loopback registry: a bigger image or a remote registry costs more, and that cost
is paid before any capacity is lost instead of after. The controller runs in-process on
PostgreSQL (``FOG_TEST_DATABASE_URL``), with the test suite's settings. Prints each run and
the medians, and writes ``bench/results/prepull-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.report import run_suite, write_results
from controller.readmodel import CREDENTIALS, DEPLOYMENTS, REPLICAS, SPECS
from controller.secrets import SecretBox
from schema import engine as engine_mod
from tests.harness.database import TemplateDatabases, admin_url_from_env
from tests.harness.engines import Cluster, build_image, ensure_docker_installed
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.harness.registry import Registry

OLD_IMAGE = "fog-bench/prepull:1"
SERVE = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done']
SECRET = "bench-registry"
SETTLE_SECONDS = 3.0


@dataclass(frozen=True)
class Run:
    case: str  # cold | warm
    run: int
    edit_to_first_stop_seconds: float


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _stopped_since(engine: AsyncEngine, d: uuid.UUID, old_hash: str) -> datetime | None:
    """The first `stopped_at` of an old replica of `d`, if one has stopped."""
    rep = REPLICAS
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.min(rep.c.stopped_at)).where(
                rep.c.deployment_id == d,
                rep.c.spec_hash == old_hash,
                rep.c.status == "stopped",
            )
        )
    return found  # type: ignore[no-any-return]


class PrepullBench:
    def __init__(
        self, cluster: Cluster, registry: Registry, templates: TemplateDatabases, workdir: Path
    ) -> None:
        self.cluster = cluster
        self.registry = registry
        self.templates = templates
        self.key_file = workdir / "secret.key"
        self.box = SecretBox.from_file(self.key_file)
        self.new_image = registry.push_test_image(cluster.engines[0], "bench/prepull", "2")

    def _images(self, present: bool) -> None:
        """The new image on every node (pulled with the credential), or on none."""
        for e in self.cluster.engines:
            with contextlib.closing(e.client()) as client:
                if present:
                    client.api.pull(
                        self.new_image.rsplit(":", 1)[0],
                        "2",
                        auth_config=self.registry.auth_config(),
                    )
                else:
                    with contextlib.suppress(Exception):
                        client.api.remove_image(self.new_image, force=True)

    async def one(self, case: str, replicas: int) -> float:
        urls = list(self.cluster.urls)
        url = await self.templates.migrated_pg()
        engine = engine_mod.create_engine(url)
        try:
            op = Operator(engine)
            for i, u in enumerate(urls):
                # Room for 10 replicas and the rollout's surge whatever this machine has.
                await op.add_node(f"node-{i}", u, cpu_cores=8, memory_mb=16384)
            user = await op.add_user()
            async with engine.begin() as conn:
                await conn.execute(
                    insert(CREDENTIALS).values(
                        id=uuid.uuid4(),
                        user_id=user,
                        name=SECRET,
                        registry_host=self.registry.host,
                        username=self.registry.username,
                        password_encrypted=self.box.encrypt(self.registry.password),
                    )
                )
            settings = settings_for_tests(url, secret_key_file=str(self.key_file))
            async with running_controller(settings):
                d = await op.add_deployment(user, "web", image=OLD_IMAGE, replicas=replicas)
                await eventually(lambda: converged(op, urls, d, replicas), within=120)
                old_hash = (await op.live_replicas(d))[0]["spec_hash"]
                await asyncio.to_thread(self._images, case == "warm")
                # An old replica counts as serving (and so may be let go) once its container
                # has been up a second (plan._counts_toward_floor): settled, the first
                # reconcile after the edit stops some at once, whatever the case.
                await asyncio.sleep(SETTLE_SECONDS)
                edited = datetime.now(UTC)
                async with engine.begin() as conn:
                    await conn.execute(
                        insert(SPECS).values(deployment_id=d, image_pull_secret=SECRET)
                    )
                    await conn.execute(
                        update(DEPLOYMENTS)
                        .where(DEPLOYMENTS.c.id == d)
                        .values(container_image=self.new_image)
                    )
                first = await eventually(
                    lambda: _stopped_since(engine, d, old_hash), within=120, interval=0.02
                )
                await eventually(lambda: converged(op, urls, d, replicas), within=180)
            return (first - edited).total_seconds()
        finally:
            await asyncio.to_thread(remove_managed_containers, urls)
            await engine.dispose()
            await self.templates.drop(url)


async def _main(args: argparse.Namespace, workdir: Path, command: str) -> int:
    cluster = Cluster.start(3, base_dir=workdir)
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    try:
        with contextlib.closing(Registry.start_new(base_dir=workdir)) as registry:
            for e in cluster.engines:
                build_image(e, OLD_IMAGE, SERVE)
            bench = PrepullBench(cluster, registry, templates, workdir)
            runs: list[Run] = []
            for n in range(args.runs):
                for case in ("cold", "warm") if n % 2 == 0 else ("warm", "cold"):
                    started = time.monotonic()
                    seconds = await bench.one(case, args.replicas)
                    runs.append(Run(case, n, seconds))
                    _say(
                        f"run {n} {case}: edit -> first old replica stopped {seconds:.3f} s "
                        f"(run took {time.monotonic() - started:.0f} s)"
                    )
    finally:
        await templates.close()
        cluster.stop_all()
    medians = {
        case: statistics.median(r.edit_to_first_stop_seconds for r in runs if r.case == case)
        for case in ("cold", "warm")
    }
    print(
        f"rollout of {args.replicas} replicas over 3 nodes, edit -> first old replica stopped, "
        f"median of {args.runs}: pre-pull of a missing image {medians['cold']:.3f} s, image "
        f"already on every node {medians['warm']:.3f} s, cost "
        f"{medians['cold'] - medians['warm']:+.3f} s"
    )
    out: dict[str, Any] = {
        "command": command,
        "replicas": args.replicas,
        "nodes": 3,
        "image": "harness static busybox via a loopback docker-registry with htpasswd",
        "runs": [asdict(r) for r in runs],
        "median_seconds": medians,
    }
    _say(f"written: {write_results('prepull', out)}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench prepull", description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="runs of each case (default 3)")
    p.add_argument("--replicas", type=int, default=10, help="default 10")
    args = p.parse_args(argv)
    ensure_docker_installed()
    return run_suite("prepull", argv, lambda workdir, command: _main(args, workdir, command))
