"""Side by side with Docker Swarm mode (``python -m bench --swarm``).

On one private engine of the harness (``--bridge=none --iptables=false``) Swarm mode runs:
``swarm init`` on 127.0.0.1 works, the daemon makes its ``ingress`` overlay network, and a
service with ``EndpointSpec(mode="dnsrr")``, no published ports and no networks gets tasks
whose containers have loopback only, like ours. The test image exists only locally, so the
daemon is started with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`` (inherited from this process):
otherwise every Swarm task first tries a registry pull that fails (no network), which is not
Swarm's own cost. Measured on the 2-core machine (load 12-35 from other runs, N=50, median of
3 after a warm-up): 8.0 s to 50 running with the variable, 14.1 s without it.

On the same engine and image, in one run, interleaved (order rotated per round), for N in
(10, 50):

1. scale up 0 -> N: command (raw: first SDK call; Swarm: ``service.scale(N)``; controller:
   the operator's UPDATE committed) until the engine's event stream shows N ``start`` events;
2. scale down N -> 0 with the same stop grace (Swarm ``stop_grace_period``, ours
   ``FOG_STOP_TIMEOUT_SECONDS``, raw ``stop(timeout)`` then remove): until N containers have
   died (Swarm keeps its shut-down task containers as history; raw and controller also
   remove theirs, so "removed" is reported for them as well);
3. repair (N=10 only): ``docker rm -f`` of one running replica until a new container of the
   same service/deployment starts (controller: no kick; it notices on its own).

Plus the controller's steady-state cost: ``fog-controller run`` as a subprocess with 100
converged one-replica deployments, CPU seconds per minute and resident memory from
``/proc/<pid>``.

Raw and controller variants reuse `bench.convergence` (the raw SDK calls, the host config the
controller sends, production settings, the operator's UPDATE plus kick).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
from docker.models.services import Service
from docker.types import EndpointSpec, Resources, RestartPolicy, ServiceMode

from bench.chart import replicas_over_time
from bench.convergence import (
    BENCH_LABEL,
    NODE_CPU_CORES,
    NODE_MEMORY_MB,
    PG,
    RAW_STOP,
    SQLITE,
    Config,
    ConvergenceBench,
    RawCalls,
    _wait_status,
    controller_host_config,
    production_settings,
    remove_labelled,
    with_image,
)
from bench.events import ContainerEvent, EventRecorder, distinct, has_label
from bench.logs import ControllerLog
from bench.report import RESULTS_DIR
from bench.trace import Trace
from controller.model import LABEL_DEPLOYMENT
from schema.engine import create_engine
from tests.harness.database import TemplateDatabases, admin_url_from_env
from tests.harness.engines import API_VERSION, Cluster, Engine, build_test_image
from tests.harness.fleet import Operator, running_controller

RAW = "raw"
RAW_RMF = "raw-rmf"
SWARM = "swarm"
VARIANTS = (RAW, RAW_RMF, SWARM, PG, SQLITE)
LABELS = {
    RAW: "raw stop+rm",
    RAW_RMF: "raw rm -f",
    SWARM: "Docker Swarm",
    PG: "fog/pg",
    SQLITE: "fog/sqlite",
}
SIZES = (10, 50)
REPAIR_SIZE = 10
STEADY_DEPLOYMENTS = 100
STEADY_SECONDS = 60.0
# Each controller variant's figure is divided by each baseline's of the same round and size.
BASELINES = (RAW, RAW_RMF, SWARM)
SWARM_OFFLINE_ENV = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one run compares: `make bench` runs the scale-down comparison alone (N=50, no
    steady-state minute); ``python -m bench --swarm`` runs everything."""

    sizes: tuple[int, ...] = SIZES
    variants: tuple[str, ...] = VARIANTS
    steady_seconds: float = STEADY_SECONDS


EVERYTHING = Plan()


@dataclass
class Run:
    """One variant at one size in one round; seconds from the command."""

    variant: str
    size: int
    round: int
    up_s: float | None = None  # command -> N started
    up_work_s: float | None = None  # first create -> last start (engine clock)
    down_s: float | None = None  # command -> N died
    down_removed_s: float | None = None  # command -> N removed (raw, controller)
    # command -> scale-down done: Swarm N died (it keeps its task containers); raw N removed;
    # controller N removed and the deployment's status `stopped` recorded (after every row)
    down_done_s: float | None = None
    repair_s: float | None = None  # rm -f -> replacement started
    timeline: list[float] = field(default_factory=list)  # start times after the command
    error: str | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _since(events: list[ContainerEvent], action: str, t0: float) -> list[float]:
    return [round(e.at - t0, 4) for e in distinct(events, action)]


def _count(action: str, n: int) -> Callable[[list[ContainerEvent]], bool]:
    return lambda events: len(distinct(events, action)) >= n


class SwarmBench:
    def __init__(
        self,
        engine: Engine,
        recorder: EventRecorder,
        templates: TemplateDatabases,
        workdir: Path,
        log: ControllerLog,
        config: Config,
        say: Say,
        plan: Plan = EVERYTHING,
    ) -> None:
        self.plan = plan
        self.engine = engine
        self.recorder = recorder
        self.templates = templates
        self.workdir = workdir
        self.config = config
        self.say = say
        self.conv = ConvergenceBench(config, engine, recorder, templates, workdir, log, say)
        self.client = docker.DockerClient(base_url=engine.url, version=API_VERSION, timeout=120)

    # --- Swarm ---------------------------------------------------------------------------

    def swarm_init(self) -> dict[str, Any]:
        port = _free_port()
        node = self.client.swarm.init(
            advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{port}", force_new_cluster=False
        )
        info = self.client.info().get("Swarm", {})
        return {
            "node_id": node,
            "listen_addr": f"127.0.0.1:{port}",
            "state": info.get("LocalNodeState"),
            "networks": sorted(n.name for n in self.client.networks.list()),
            "endpoint_mode": "dnsrr, no published ports, no networks",
            "prefer_offline_image": os.environ.get(SWARM_OFFLINE_ENV),
        }

    def swarm_leave(self) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.client.swarm.leave(force=True)

    def _service(self, tag: str) -> Service:
        c = self.config
        res = c.resources
        created = self.client.services.create(  # type: ignore[no-untyped-call]
            c.image,
            name=f"bench-{tag}",
            mode=ServiceMode("replicated", replicas=0),
            endpoint_spec=EndpointSpec(mode="dnsrr"),
            # The controller's `unless-stopped`: restart whatever the exit; no back-off delay
            # (Swarm's default 5 s delay would be charged to repair).
            restart_policy=RestartPolicy(condition="any", delay=0),
            stop_grace_period=c.stop_timeout_seconds * 1_000_000_000,
            resources=Resources(
                cpu_limit=int(res.cpu_cores * 1e9), mem_limit=res.memory_mb * 1024 * 1024
            ),
            container_labels={BENCH_LABEL: tag},
        )
        return cast(Service, created)

    async def _swarm(self, run: Run, repair: bool) -> None:
        c, n = self.config, run.size
        tag = f"swarm-{n}-{run.round}-{uuid.uuid4().hex[:8]}"
        select = has_label(BENCH_LABEL, tag)
        service = await asyncio.to_thread(self._service, tag)
        try:
            mark = self.recorder.mark()
            t0 = time.time()
            await asyncio.to_thread(service.scale, n)
            events = await self.recorder.wait(
                mark, select, _count("start", n), within=c.phase_timeout, what=f"{n} swarm starts"
            )
            run.up_s = round(distinct(events, "start")[-1].at - t0, 4)
            run.up_work_s = round(distinct(events, "start")[-1].at - events[0].at, 4)
            run.timeline = _since(events, "start", t0)
            await asyncio.sleep(c.settle_seconds)
            if repair:
                run.repair_s = await self._repair(select)
                await asyncio.sleep(c.settle_seconds)
            service.reload()
            mark = self.recorder.mark()
            t0 = time.time()
            await asyncio.to_thread(service.scale, 0)
            events = await self.recorder.wait(
                mark, select, _count("die", n), within=c.phase_timeout, what=f"{n} swarm deaths"
            )
            run.down_s = round(distinct(events, "die")[-1].at - t0, 4)
            run.down_done_s = run.down_s
        finally:
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(service.remove)
            await asyncio.to_thread(self._wait_gone, f"{BENCH_LABEL}={tag}")

    def _wait_gone(self, label: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = self.client.api.containers(all=True, quiet=True, filters={"label": label})
            if not left:
                return
            time.sleep(0.2)
        remove_labelled(self.engine.url, label)

    async def _repair(self, select: Callable[[ContainerEvent], bool]) -> float:
        """rm -f one running container of `select`; seconds until another one starts."""
        label_events = self.recorder.since(0, select)
        alive = {e.container_id for e in label_events if e.action == "start"} - {
            e.container_id for e in label_events if e.action in ("die", "destroy")
        }
        victim = sorted(alive)[0]
        mark = self.recorder.mark()
        t0 = time.time()
        await asyncio.to_thread(self.client.api.remove_container, victim, force=True)

        def replaced(events: list[ContainerEvent]) -> bool:
            return any(e.action == "start" and e.container_id != victim for e in events)

        events = await self.recorder.wait(
            mark, select, replaced, within=self.config.phase_timeout, what="a replacement"
        )
        start = next(e for e in events if e.action == "start" and e.container_id != victim)
        return round(start.at - t0, 4)

    # --- raw -----------------------------------------------------------------------------

    async def _raw(self, run: Run) -> None:
        c, n = self.config, run.size
        tag = f"raw-{n}-{run.round}-{uuid.uuid4().hex[:8]}"
        host = controller_host_config(production_settings("sqlite://", c), c.resources)
        calls = RawCalls(self.engine.url, c.threads, Trace(), c.image)
        select = has_label(BENCH_LABEL, tag)
        mark = self.recorder.mark()
        ids, t0, _ = await asyncio.to_thread(calls.up, n, f"bench-{tag}", {BENCH_LABEL: tag}, host)
        events = await self.recorder.wait(
            mark, select, _count("start", n), within=c.phase_timeout, what=f"{n} raw starts"
        )
        run.up_s = round(distinct(events, "start")[-1].at - t0, 4)
        run.up_work_s = round(distinct(events, "start")[-1].at - events[0].at, 4)
        run.timeline = _since(events, "start", t0)
        await asyncio.sleep(c.settle_seconds)
        mark = self.recorder.mark()
        grace = c.stop_timeout_seconds if run.variant == RAW else None
        t0, _ = await asyncio.to_thread(calls.down, ids, grace)
        events = await self.recorder.wait(
            mark, select, _count("destroy", n), within=c.phase_timeout, what=f"{n} raw removals"
        )
        run.down_s = round(distinct(events, "die")[-1].at - t0, 4)
        run.down_removed_s = round(distinct(events, "destroy")[-1].at - t0, 4)
        run.down_done_s = run.down_removed_s

    # --- the controller ------------------------------------------------------------------

    async def _controller(self, run: Run, repair: bool) -> None:
        c, n = self.config, run.size
        if run.variant == PG:
            url = await self.templates.migrated_pg()
        else:
            url = await self.templates.migrated_sqlite(self.workdir)
        operator_engine = create_engine(url)
        d: uuid.UUID | None = None
        try:
            op = Operator(operator_engine)
            await op.add_node(
                "bench-node", self.engine.url, cpu_cores=NODE_CPU_CORES, memory_mb=NODE_MEMORY_MB
            )
            user = await op.add_user("bench")
            res = c.resources
            d = await op.add_deployment(
                user,
                "bench",
                image=c.image,
                replicas=0,
                cpu_cores=res.cpu_cores,
                memory_mb=res.memory_mb,
                gpu_units=res.gpu_units,
                storage_gb=res.storage_gb,
            )
            select = has_label(LABEL_DEPLOYMENT, str(d))
            trace = Trace()
            phase = self.conv._controller_phase
            async with running_controller(production_settings(url, c)) as controller:
                await _wait_status(op, d, "stopped", "the controller to take the deployment over")
                await phase(controller, op, d, 1, select, trace)  # warm-up, as in convergence
                await phase(controller, op, d, 0, select, trace, expected=1)
                await asyncio.sleep(c.settle_seconds)
                mark = self.recorder.mark()
                up = await phase(controller, op, d, n, select, trace)
                events = self.recorder.since(mark, select)
                edit = distinct(events, "start")[-1].at - (up.from_edit_s or 0.0)
                run.up_s, run.up_work_s = up.from_edit_s, up.work_s
                run.timeline = _since(events, "start", edit)
                await asyncio.sleep(c.settle_seconds)
                if repair:
                    run.repair_s = await self._repair(select)
                    await _wait_status(op, d, "running", "running after the repair")
                    await asyncio.sleep(c.settle_seconds)
                mark = self.recorder.mark()
                down = await phase(controller, op, d, 0, select, trace, expected=n)
                events = self.recorder.since(mark, select)
                edit = distinct(events, "destroy")[-1].at - (down.from_edit_s or 0.0)
                run.down_s = round(distinct(events, "die")[-1].at - edit, 4)
                run.down_removed_s = down.from_edit_s
                if down.from_edit_s is not None and down.status_s is not None:
                    run.down_done_s = max(down.from_edit_s, down.status_s)
        finally:
            await operator_engine.dispose()
            if d is not None:
                remove_labelled(self.engine.url, f"{LABEL_DEPLOYMENT}={d}")
            with contextlib.suppress(Exception):
                await self.templates.drop(url)

    # --- rounds --------------------------------------------------------------------------

    async def one(self, variant: str, size: int, round_no: int) -> Run:
        run = Run(variant=variant, size=size, round=round_no)
        repair = size == REPAIR_SIZE
        try:
            if variant in (RAW, RAW_RMF):
                await self._raw(run)
            elif variant == SWARM:
                await self._swarm(run, repair)
            else:
                await self._controller(run, repair)
        except Exception as exc:  # one broken sample must not cost the others
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.to_thread(remove_labelled, self.engine.url, BENCH_LABEL)
        await asyncio.sleep(self.config.settle_seconds)
        return run

    async def rounds(self) -> list[Run]:
        runs: list[Run] = []
        # A fresh engine's first containers are slower: one unrecorded raw run takes that.
        await self.one(RAW, max(self.plan.sizes), 0)
        variants = self.plan.variants
        for round_no in range(1, self.config.rounds + 1):
            for size in self.plan.sizes:
                k = (round_no - 1) % len(variants)
                for variant in [*variants[k:], *variants[:k]]:
                    run = await self.one(variant, size, round_no)
                    runs.append(run)
                    self.say(describe(run, self.config.rounds))
        return runs

    # --- steady state --------------------------------------------------------------------

    async def steady(self, seconds: float) -> dict[str, Any]:
        """`fog-controller run` with 100 converged deployments and nothing to do."""
        url = await self.templates.migrated_pg()
        operator_engine = create_engine(url)
        op = Operator(operator_engine)
        proc: asyncio.subprocess.Process | None = None
        deployments: list[uuid.UUID] = []
        try:
            await op.add_node(
                "bench-node", self.engine.url, cpu_cores=NODE_CPU_CORES, memory_mb=NODE_MEMORY_MB
            )
            user = await op.add_user("bench")
            for i in range(STEADY_DEPLOYMENTS):
                deployments.append(await op.add_deployment(user, f"steady-{i}", replicas=1))
            s = production_settings(url, self.config)
            env = {
                **os.environ,
                "FOG_DATABASE_URL": url,
                "FOG_REGISTER_LOCAL_NODE": "false",
                "FOG_AUTO_MIGRATE": "false",
                "FOG_STOP_TIMEOUT_SECONDS": str(s.stop_timeout_seconds),
                "FOG_LOG_FORMAT": "json",
                "FOG_METRICS_ADDR": "",
            }
            exe = shutil.which("fog-controller", path=str(Path(sys.executable).parent))
            cmd = [exe] if exe else [sys.executable, "-m", "controller.cli"]
            with (self.workdir / "steady.log").open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, "run", env=env, stdout=log, stderr=log
                )
            started = time.monotonic()
            for d in deployments:
                await _wait_status(op, d, "running", f"{d} running")
            converge_s = time.monotonic() - started
            await asyncio.sleep(5.0)  # let the post-convergence passes settle
            cpu0, t0 = _proc_cpu(proc.pid), time.monotonic()
            rss: list[int] = []
            while time.monotonic() - t0 < seconds:
                rss.append(_proc_rss_kb(proc.pid))
                await asyncio.sleep(1.0)
            cpu1, t1 = _proc_cpu(proc.pid), time.monotonic()
            if proc.returncode is not None:
                raise RuntimeError(f"fog-controller exited with {proc.returncode}")
            return {
                "backend": "pg",
                "deployments": STEADY_DEPLOYMENTS,
                "converge_s": round(converge_s, 2),
                "window_s": round(t1 - t0, 2),
                "cpu_s_per_min": round((cpu1 - cpu0) / (t1 - t0) * 60.0, 3),
                "rss_mb_median": round(statistics.median(rss) / 1024, 1),
                "rss_mb_max": round(max(rss) / 1024, 1),
                "resync_seconds": s.resync_seconds,
            }
        finally:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await operator_engine.dispose()
            for d in deployments:
                remove_labelled(self.engine.url, f"{LABEL_DEPLOYMENT}={d}")
            with contextlib.suppress(Exception):
                await self.templates.drop(url)


def _proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- report ------------------------------------------------------------------------------


def describe(run: Run, rounds: int) -> str:
    head = f"round {run.round}/{rounds} N={run.size:<3} {LABELS[run.variant]:<13}"
    if run.error:
        return f"{head} FAILED: {run.error}"
    parts = [f"up {run.up_s:6.2f} s", f"down {run.down_s:6.2f} s"]
    if run.down_done_s is not None and run.down_done_s != run.down_s:
        parts.append(f"down done {run.down_done_s:6.2f} s")
    if run.repair_s is not None:
        parts.append(f"repair {run.repair_s:5.2f} s")
    return f"{head} {'   '.join(parts)}"


def _median(runs: list[Run], variant: str, size: int, attr: str) -> float | None:
    values = [
        getattr(r, attr)
        for r in runs
        if r.variant == variant and r.size == size and not r.error and getattr(r, attr) is not None
    ]
    return round(statistics.median(values), 3) if values else None


METRICS = ("up_s", "up_work_s", "down_s", "down_removed_s", "down_done_s", "repair_s")


def _paired(runs: list[Run], variant: str, base: str, size: int, attr: str) -> float | None:
    """Median over rounds of `variant`'s figure over `base`'s figure of the same round."""
    by_round: dict[tuple[str, int], float] = {
        (r.variant, r.round): getattr(r, attr)
        for r in runs
        if r.size == size and not r.error and getattr(r, attr)
    }
    ratios = [
        value / by_round[(base, rnd)]
        for (v, rnd), value in by_round.items()
        if v == variant and (base, rnd) in by_round
    ]
    return round(statistics.median(ratios), 3) if ratios else None


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per metric and size: each variant's median, and each controller variant's median
    per-round ratio to each baseline (paired: the same round ran them back to back)."""
    out: dict[str, Any] = {}
    sizes = sorted({r.size for r in runs})
    for size in sizes:
        for metric in METRICS:
            row = {v: _median(runs, v, size, metric) for v in VARIANTS}
            if all(x is None for x in row.values()):
                continue
            ratios = {
                f"{v}/{b}": _paired(runs, v, b, size, metric)
                for v in (PG, SQLITE)
                for b in BASELINES
            }
            out[f"{metric}@{size}"] = {**row, "ratios": ratios}
    return out


def table(summary: dict[str, Any]) -> list[str]:
    cols = "".join(f"{LABELS[v]:>14}" for v in VARIANTS)
    lines = [f"{'median seconds':<22}{cols}"]
    for key, row in summary.items():
        cells = "".join(
            f"{row[v]:>14.2f}" if row[v] is not None else f"{'-':>14}" for v in VARIANTS
        )
        lines.append(f"{key:<22}{cells}")
    lines.append("median per-round ratios (same round, back to back), vs stop+rm / rm -f / Swarm:")
    for key, row in summary.items():
        for v in (PG, SQLITE):
            cells = [row["ratios"].get(f"{v}/{b}") for b in BASELINES]
            if any(c is not None for c in cells):
                text = " / ".join("-" if c is None else f"{c:.2f}x" for c in cells)
                lines.append(f"  {key:<20} {LABELS[v]:<11} {text}")
    lines.append(
        "down_done: Swarm all N died (it keeps task containers); raw all removed; fog all "
        "removed and status stopped recorded (after every replica row)"
    )
    return lines


def chart(runs: list[Run], size: int, path: Path) -> Path:
    """Containers running over time during the size-`size` scale-up: each variant's median
    run (by time to N running)."""
    series: dict[str, list[float]] = {}
    for variant in VARIANTS:
        ok = sorted(
            (r for r in runs if r.variant == variant and r.size == size and r.up_s and not r.error),
            key=lambda r: r.up_s or 0.0,
        )
        if ok:
            median_run = ok[len(ok) // 2]
            series[f"{LABELS[variant]} ({median_run.up_s:.2f} s)"] = median_run.timeline
    return replicas_over_time(
        series,
        f"Scale-up 0 -> {size} on one engine (median round)",
        "seconds since the command (raw: first SDK call; Swarm: service scale; "
        "fog-controller: UPDATE committed)",
        path,
    )


# --- entry point -------------------------------------------------------------------------


async def _main_async(
    config: Config, plan: Plan, engine: Engine, workdir: Path, command: str, say: Say
) -> int:
    started = datetime.now(UTC)
    log = ControllerLog(RESULTS_DIR / f"swarm-{started:%Y%m%dT%H%M%SZ}.controller.log")
    log.open()
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    recorder = EventRecorder(engine.url)
    bench = SwarmBench(engine, recorder, templates, workdir, log, config, say, plan)
    swarm_info: dict[str, Any] = {}
    try:
        await asyncio.to_thread(recorder.start)
        await templates.pg_template()
        swarm_info = await asyncio.to_thread(bench.swarm_init)
        say(f"swarm: {swarm_info}")
        say(
            f"stop grace {config.stop_timeout_seconds} s for every variant; containers exit "
            f"{config.stop_after_seconds:g} s after SIGTERM ({config.image})"
        )
        runs = await bench.rounds()
        steady: dict[str, Any] = {"skipped": True}
        if plan.steady_seconds > 0 and PG in plan.variants:
            say("steady state: 100 deployments, fog-controller run as a subprocess ...")
            try:
                steady = await bench.steady(plan.steady_seconds)
            except Exception as exc:
                steady = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await asyncio.to_thread(bench.swarm_leave)
        await asyncio.to_thread(recorder.close)
        await templates.close()
        log.close()
        bench.client.close()
    summary = summarize(runs)
    say("")
    for line in table(summary):
        say(line)
    say(f"steady state (fog-controller run, PG, {STEADY_DEPLOYMENTS} converged): {steady}")
    png = chart(runs, max(plan.sizes), RESULTS_DIR / f"scaleup-{max(plan.sizes)}.png")
    doc = {
        "command": command,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": {
            "rounds": config.rounds,
            "threads": config.threads,
            "stop_timeout_seconds": config.stop_timeout_seconds,
            "stop_after_seconds": config.stop_after_seconds,
            "image": config.image,
            "resync_seconds": config.resync_seconds,
            "sizes": plan.sizes,
            "variants": plan.variants,
            "cpus": os.cpu_count(),
        },
        "swarm": swarm_info,
        "summary": summary,
        "steady_state": steady,
        "runs": [r.__dict__ for r in runs],
    }
    path = RESULTS_DIR / f"swarm-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    say(f"figures: {path}   chart: {png}")
    return 1 if any(r.error for r in runs) else 0


def main(config: Config, command: str, say: Say = print, plan: Plan = EVERYTHING) -> int:
    """Start one private engine (Swarm-capable: see the module docstring), run, clean up."""
    os.environ.setdefault(SWARM_OFFLINE_ENV, "1")  # inherited by the dockerd we start
    workdir = Path(tempfile.mkdtemp(prefix="fogswarm-"))
    cluster: Cluster | None = None
    try:
        say("starting a private Docker engine for the Swarm comparison ...")
        cluster = Cluster.start(1, base_dir=workdir)
        build_test_image(cluster.engines[0])
        config = with_image(replace(config, variants=(RAW_STOP, PG, SQLITE)), cluster.engines[0])
        return asyncio.run(_main_async(config, plan, cluster.engines[0], workdir, command, say))
    finally:
        if cluster is not None:
            cluster.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
