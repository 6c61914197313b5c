"""Convergence: how long the controller takes to bring 50 replicas up and down on one engine,
against the same 50 containers made by plain Docker SDK calls in the same run.

Why this shape:
- The baseline ("raw") is what any controller must pay: 50 create+start calls from 8 threads
  (the controller's `node_concurrency`), with the host config the controller sends, then 50
  force-removes. A second raw variant stops gracefully and then removes, as the controller
  does, so the scale-down ratio can be split into "design" (two calls per container) and
  "overhead".
- The controller variants run the real daemon in-process (`tests.harness.fleet`) on a fresh
  migrated PostgreSQL database or SQLite file, with production timings, and are driven the way
  an operator drives them: an UPDATE of `target_replicas`. There is no NOTIFY wake-up yet, so
  by default the benchmark calls `controller.resync_now()` right after the UPDATE (what a
  NOTIFY listener would do); `--no-kick` measures the edit waiting for the periodic resync.
- Durations come from the engine's own event clock (first `create` to last `start`, first
  `kill` to last `destroy`), identically for raw and controller. "From edit" adds the
  controller's reaction (resync pass, reconcile, row writes) before its first Docker call.
- Variants are interleaved and their order rotates every round, so a burst of load from
  another process on the shared machine hits all variants alike; ratios are taken per round
  (controller against the raw run of the same round) and the median ratio is reported.
- Each controller sample starts with a one-replica warm-up: a long-lived controller has long
  since opened its connections and learnt that the engine refuses `storage_opt` (one refused
  create per node and process), which would otherwise be charged to the first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.events import ContainerEvent, EventRecorder, distinct, has_label
from bench.logs import ControllerLog
from bench.probes import CpuSnapshot, LoopLag, engine_daemons
from bench.trace import Trace, batches, by_kind, instrument, occupancy
from controller.loop import Controller
from controller.model import LABEL_DEPLOYMENT, Resources
from controller.runspec import EMPTY_RUN, RunSpec, VolumeSpec
from controller.runtime import ContainerSpec
from controller.runtime.create_request import container_options, host_options, volume_name
from controller.settings import Settings
from schema.engine import create_engine
from tests.harness.database import TemplateDatabases
from tests.harness.engines import API_VERSION, TEST_IMAGE, Engine, build_image
from tests.harness.fleet import TEST_SETTINGS, Operator, running_controller, settings_for_tests

BENCH_LABEL = "fog.bench"
RAW = "raw"
RAW_STOP = "raw-stop"
PG = "pg"
SQLITE = "sqlite"
VARIANTS = (RAW, RAW_STOP, PG, SQLITE)
LABELS = {
    RAW: "raw SDK (rm -f)",
    RAW_STOP: "raw SDK (stop+rm)",
    PG: "controller/pg",
    SQLITE: "controller/sqlite",
}
# A kicked controller makes its first Docker call within ~0.1 s; one that has not within this
# lost the kick (see `Phase.kicks`) and is kicked again.
KICK_GRACE_SECONDS = 1.0
STATUS_TIMEOUT_SECONDS = 60.0
# The node row's capacity: 50 replicas at the schema's minimum request (0.5 cores, 512 MB)
# would not fit the engine's real 2 cores, and the benchmark is about speed, not refusals.
NODE_CPU_CORES = 64.0
NODE_MEMORY_MB = 65536


def setting_default(name: str) -> Any:
    """A Settings field's production default (a slots dataclass has no class attributes)."""
    return {f.name: f.default for f in fields(Settings)}[name]


# The smallest request the schema allows (deployment_resources check constraints).
MIN_RESOURCES = Resources(cpu_cores=0.5, memory_mb=512, gpu_units=0, storage_gb=1)


# `--full-spec`: what a real service sets (issue 14), sent alike by raw calls and the controller.
# The command is the test image's own (engines.DEFAULT_CMD), given explicitly.
FULL_RUN = RunSpec(
    entrypoint=("/bin/sh", "-c"),
    command=('trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done',),
    env=(("LOG_LEVEL", "debug"), ("SITE", "north")),
    labels=(("team", "edge"),),
    volumes=(VolumeSpec("/data", name="data"),),
)


@dataclass(frozen=True)
class Config:
    replicas: int = 50
    rounds: int = 3
    threads: int = 8
    variants: tuple[str, ...] = VARIANTS
    kick: bool = True
    resync_seconds: float = setting_default("resync_seconds")
    stop_timeout_seconds: int = 1  # the test image exits at once on SIGTERM
    phase_timeout: float = 120.0
    settle_seconds: float = 1.0
    resources: Resources = MIN_RESOURCES
    image: str = TEST_IMAGE  # every variant's containers (see `with_image`)
    stop_after_seconds: float = 0.0  # how long a container takes to exit on SIGTERM
    run: RunSpec = EMPTY_RUN  # the rest of the spec (--full-spec: FULL_RUN)


@dataclass
class Phase:
    """One scale-up or scale-down; seconds."""

    work_s: float  # first engine event of the phase -> last container running / removed
    from_edit_s: float | None = None  # controller: UPDATE committed -> last running / removed
    reaction_s: float | None = None  # controller: UPDATE committed -> first engine event
    status_s: float | None = None  # controller: UPDATE committed -> status row written
    client_s: float | None = None  # raw: first call made -> last call returned
    kicks: int = 0  # resync_now() calls it took (more than 1: a wake-up was lost)
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    variant: str
    round: int
    up: Phase | None = None
    down: Phase | None = None
    error: str | None = None
    warnings: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def production_settings(database_url: str, config: Config) -> Settings:
    """Production defaults for every timing the test settings shorten, except the stop grace
    period (the test image exits on SIGTERM at once) and whatever the command line sets."""
    defaults = {f.name: f.default for f in fields(Settings) if f.name in TEST_SETTINGS}
    return settings_for_tests(
        database_url,
        **{
            **defaults,
            "register_local_node": False,
            "auto_migrate": False,
            "log_format": "json",
            "resync_seconds": config.resync_seconds,
            "stop_timeout_seconds": config.stop_timeout_seconds,
        },
    )


def controller_host_config(settings: Settings, res: Resources) -> dict[str, Any]:
    """The host config `DockerRuntime._create_args` sends for a replica needing `res`, once
    the engine has refused `storage_opt` (the test engines' overlay2 on ext4 always does)."""
    host: dict[str, Any] = {
        "restart_policy": {"Name": "unless-stopped"},
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "pids_limit": settings.pids_limit,
        "nano_cpus": int(res.cpu_cores * 1e9),
        "mem_limit": f"{res.memory_mb}m",
    }
    if settings.container_network:
        host["network_mode"] = settings.container_network
    return host


def raw_spec_options(
    settings: Settings, config: Config, volume_owner: uuid.UUID
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the controller's create request adds for `config.run` (create_request's own
    functions, so raw and controller send the same): container options beyond image, name,
    labels and detach, and host options beyond `controller_host_config`. The named volume is
    made by the engine at the first mount (the controller makes it with one call per node)."""
    if config.run == EMPTY_RUN:
        return {}, {}
    spec = ContainerSpec(uuid.uuid4(), volume_owner, config.image, config.resources, run=config.run)
    options = container_options(settings, spec)
    for own in ("image", "name", "labels", "detach"):
        options.pop(own)
    host = host_options(settings, spec, with_storage=False)
    return options, {k: v for k, v in host.items() if k == "mounts"}


def with_image(config: Config, engine: Engine) -> Config:
    """`config` with its containers' image built on `engine`: the test image, or one whose
    process takes `stop_after_seconds` to exit after SIGTERM (an application finishing its
    requests), so that the stop grace period is used, as in production."""
    seconds = config.stop_after_seconds
    if seconds <= 0:
        return config
    tag = f"fog-test/stop-after-{seconds:g}s:latest"
    command = f'trap "sleep {seconds:g}; exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
    build_image(engine, tag, ("/bin/sh", "-c", command))
    return replace(config, image=tag)


def remove_labelled(url: str, label: str) -> int:
    """Force-remove every container carrying `label` (``key=value``); returns how many."""
    client = docker.APIClient(base_url=url, version=API_VERSION, timeout=60)
    removed = 0
    try:
        for c in client.containers(all=True, quiet=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_container(c["Id"], force=True)
                removed += 1
    finally:
        client.close()
    return removed


def remove_volumes(url: str, owners: list[uuid.UUID]) -> None:
    """Remove the named volumes of FULL_RUN made for `owners` (deployments or raw runs)."""
    client = docker.APIClient(base_url=url, version=API_VERSION, timeout=60)
    try:
        for owner in owners:
            for volume in FULL_RUN.named_volumes():
                with contextlib.suppress(docker.errors.NotFound):
                    client.remove_volume(volume_name(owner, volume), force=True)
    finally:
        client.close()


async def write_run(engine: AsyncEngine, d: uuid.UUID, run: RunSpec) -> None:
    """The operator's rows for `run` (only what FULL_RUN sets), in plain SQL."""
    if run == EMPTY_RUN:
        return
    statements: list[tuple[str, dict[str, Any]]] = [
        (
            "INSERT INTO deployment_specs (deployment_id, entrypoint, command) "
            "VALUES (:d, :entrypoint, :command)",
            {
                "d": str(d),
                "entrypoint": json.dumps(list(run.entrypoint or ())),
                "command": json.dumps(list(run.command or ())),
            },
        ),
        *(
            (
                "INSERT INTO deployment_env (deployment_id, name, value) VALUES (:d, :k, :v)",
                {"d": str(d), "k": k, "v": v},
            )
            for k, v in run.env
        ),
        *(
            (
                "INSERT INTO deployment_labels (deployment_id, key, value) VALUES (:d, :k, :v)",
                {"d": str(d), "k": k, "v": v},
            )
            for k, v in run.labels
        ),
        *(
            (
                "INSERT INTO deployment_volumes (deployment_id, name, mount_path) "
                "VALUES (:d, :name, :path)",
                {"d": str(d), "name": v.name, "path": v.mount_path},
            )
            for v in run.volumes
        ),
    ]
    async with engine.begin() as conn:
        for statement, params in statements:
            await conn.execute(text(statement), params)


# --- the raw baseline --------------------------------------------------------------------------


@dataclass(frozen=True)
class RawCalls:
    """Plain docker-py calls from a thread pool, each recorded into `trace`."""

    url: str
    threads: int
    trace: Trace
    image: str = TEST_IMAGE
    options: dict[str, Any] = field(default_factory=dict)  # more create_container arguments

    def _call(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.trace.add(f"docker:{kind}", start, time.time())

    def up(
        self, count: int, prefix: str, labels: dict[str, str], host: dict[str, Any]
    ) -> tuple[list[str], float, float]:
        """Create and start `count` containers; (ids, first call, last return)."""
        client = docker.APIClient(
            base_url=self.url, version=API_VERSION, timeout=30, max_pool_size=self.threads
        )

        def one(i: int) -> str:
            created = self._call(
                "create_container",
                client.create_container,
                self.image,
                name=f"{prefix}-{i}",
                labels=labels,
                detach=True,
                host_config=client.create_host_config(**host),
                **self.options,
            )
            self._call("start", client.start, created["Id"])
            return str(created["Id"])

        try:
            started = time.time()
            with ThreadPoolExecutor(self.threads, thread_name_prefix="bench-raw") as pool:
                ids = list(pool.map(one, range(count)))
            return ids, started, time.time()
        finally:
            client.close()

    def down(self, ids: list[str], graceful_timeout: int | None) -> tuple[float, float]:
        """Force-remove (or stop, then remove) the containers; (first call, last return)."""
        client = docker.APIClient(
            base_url=self.url, version=API_VERSION, timeout=30, max_pool_size=self.threads
        )

        def one(container: str) -> None:
            if graceful_timeout is not None:
                self._call("stop", client.stop, container, timeout=graceful_timeout)
            self._call("remove_container", client.remove_container, container, force=True)

        try:
            started = time.time()
            with ThreadPoolExecutor(self.threads, thread_name_prefix="bench-raw") as pool:
                list(pool.map(one, ids))
            return started, time.time()
        finally:
            client.close()


# --- the benchmark ---------------------------------------------------------------------------


class ConvergenceBench:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        recorder: EventRecorder,
        templates: TemplateDatabases,
        workdir: Path,
        log: ControllerLog,
        progress: Callable[[str], None],
    ) -> None:
        self.config = config
        self.engine = engine
        self.recorder = recorder
        self.templates = templates
        self.workdir = workdir
        self.log = log
        self.progress = progress
        self.samples: list[Sample] = []
        self._deployments: list[uuid.UUID] = []  # made by the benchmark, cleaned after use
        self._volume_owners: list[uuid.UUID] = []  # raw samples' volumes, removed after use
        self._engine_pids = engine_daemons(engine.pid)

    def order(self, round_no: int) -> list[str]:
        """The variants of one round, rotated so that none always runs first or last."""
        variants = list(self.config.variants)
        k = round_no % len(variants)
        return variants[k:] + variants[:k]

    async def run(self) -> list[Sample]:
        if RAW in self.config.variants or RAW_STOP in self.config.variants:
            # The first 50 containers a fresh engine makes are slower than the next (and the
            # machine's caches are cold): one unrecorded raw sample takes that cost.
            warm = await self.sample(RAW, -1)
            self.progress(describe(warm, self.config.rounds, head="warm-up (not recorded)"))
        for round_no in range(self.config.rounds):
            for variant in self.order(round_no):
                sample = await self.sample(variant, round_no)
                self.samples.append(sample)
                self.progress(describe(sample, self.config.rounds))
        return self.samples

    async def sample(self, variant: str, round_no: int) -> Sample:
        before = self.log.warnings()
        sample = Sample(variant=variant, round=round_no + 1)
        try:
            if variant in (RAW, RAW_STOP):
                await self._raw(sample)
            else:
                await self._controller(sample)
        except Exception as exc:  # one broken sample must not cost the others
            sample.error = f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.to_thread(self._clean_engine)
        sample.warnings = dict(self.log.warnings() - before)
        await asyncio.sleep(self.config.settle_seconds)
        return sample

    def _clean_engine(self) -> None:
        """Nothing of ours may outlive a sample: the next one must start on an empty engine.
        Only what the benchmark made goes (an external engine may run other containers)."""
        remove_labelled(self.engine.url, BENCH_LABEL)
        for deployment in self._deployments:
            remove_labelled(self.engine.url, f"{LABEL_DEPLOYMENT}={deployment}")
        remove_volumes(self.engine.url, [*self._deployments, *self._volume_owners])

    # --- raw -----------------------------------------------------------------------------

    async def _raw(self, sample: Sample) -> None:
        c = self.config
        tag = f"{sample.variant}-{sample.round}-{uuid.uuid4().hex[:8]}"
        # Only the settings' container options matter here; the URL is never opened.
        settings = production_settings("sqlite://", c)
        host = controller_host_config(settings, c.resources)
        owner = uuid.uuid4()  # the raw run's volume is named as a deployment's would be
        self._volume_owners.append(owner)
        options, host_extra = raw_spec_options(settings, c, owner)
        host |= host_extra
        graceful = c.stop_timeout_seconds if sample.variant == RAW_STOP else None
        trace = Trace()
        calls = RawCalls(self.engine.url, c.threads, trace, c.image, options)

        # Warm-up, as for the controller: one container up and down through the same client.
        warm = {BENCH_LABEL: f"{tag}-warm"}
        ids, _, _ = await asyncio.to_thread(calls.up, 1, f"bench-{tag}-warm", warm, host)
        await asyncio.to_thread(calls.down, ids, graceful)

        labels = {**dict(c.run.labels), BENCH_LABEL: tag}
        select = has_label(BENCH_LABEL, tag)
        n = c.replicas

        mark, cpu, lag = self.recorder.mark(), CpuSnapshot.take(self._engine_pids), LoopLag()
        lag.start()
        ids, t0, t1 = await asyncio.wait_for(
            asyncio.to_thread(calls.up, n, f"bench-{tag}", labels, host), c.phase_timeout
        )
        events = await self.recorder.wait(
            mark, select, _count("start", n), within=c.phase_timeout, what=f"{n} raw starts"
        )
        sample.up = self._raw_phase(events, "start", t0, t1, trace, cpu, await lag.stop())

        await asyncio.sleep(c.settle_seconds)
        mark, cpu = self.recorder.mark(), CpuSnapshot.take(self._engine_pids)
        lag.start()
        t0, t1 = await asyncio.wait_for(
            asyncio.to_thread(calls.down, ids, graceful), c.phase_timeout
        )
        events = await self.recorder.wait(
            mark, select, _count("destroy", n), within=c.phase_timeout, what=f"{n} raw removals"
        )
        sample.down = self._raw_phase(events, "destroy", t0, t1, trace, cpu, await lag.stop())

    def _raw_phase(
        self,
        events: list[ContainerEvent],
        last_action: str,
        t0: float,
        t1: float,
        trace: Trace,
        cpu: CpuSnapshot,
        lag: dict[str, Any],
    ) -> Phase:
        begin, end = events[0].at, distinct(events, last_action)[-1].at
        spans = trace.between(t0, t1)
        return Phase(
            work_s=round(end - begin, 4),
            client_s=round(t1 - t0, 4),
            profile={
                "calls": by_kind(spans),
                "docker_occupancy": occupancy(spans, t0, t1),
                "cpu": cpu.until(CpuSnapshot.take(self._engine_pids)),
                "loop_lag": lag,
            },
        )

    # --- controller ----------------------------------------------------------------------

    async def _controller(self, sample: Sample) -> None:
        if sample.variant == PG:
            url = await self.templates.migrated_pg()
        else:
            url = await self.templates.migrated_sqlite(self.workdir)
        operator_engine = create_engine(url)
        try:
            await self._controller_on(sample, url, operator_engine)
        finally:
            await operator_engine.dispose()
            with contextlib.suppress(Exception):
                await self.templates.drop(url)

    async def _controller_on(self, sample: Sample, url: str, operator_engine: AsyncEngine) -> None:
        c = self.config
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
        self._deployments.append(d)
        await write_run(operator_engine, d, c.run)
        select = has_label(LABEL_DEPLOYMENT, str(d))
        trace = Trace()
        async with running_controller(production_settings(url, c)) as controller:
            missing = instrument(controller, trace)
            await _wait_status(op, d, "stopped", "the controller to take the deployment over")
            # Warm-up (see the module docstring), then the measured phases.
            await self._controller_phase(controller, op, d, 1, select, trace)
            await self._controller_phase(controller, op, d, 0, select, trace, expected=1)
            await asyncio.sleep(c.settle_seconds)
            sample.up = await self._controller_phase(controller, op, d, c.replicas, select, trace)
            await asyncio.sleep(c.settle_seconds)
            sample.down = await self._controller_phase(
                controller, op, d, 0, select, trace, expected=c.replicas
            )
        if missing:
            for phase in (sample.up, sample.down):
                if phase is not None:
                    phase.profile["not_instrumented"] = missing

    async def _controller_phase(
        self,
        controller: Controller,
        op: Operator,
        d: uuid.UUID,
        target: int,
        select: Callable[[ContainerEvent], bool],
        trace: Trace,
        expected: int = 0,
    ) -> Phase:
        """Scale `d` to `target` as an operator would; `expected` containers go on scale-down."""
        c = self.config
        up = target > 0
        last_action, count = ("start", target) if up else ("destroy", expected)
        if not c.kick:
            # Without a kick the reaction is the wait for the next periodic pass; an edit at a
            # random moment samples it as operators meet it (uniform over one period), where
            # a fixed pause after the previous phase would always hit the same offset.
            await asyncio.sleep(random.uniform(0.0, c.resync_seconds))
        mark = self.recorder.mark()
        await op.scale(d, target)
        edit = time.time()
        kicks = 0
        if c.kick:
            kicks = await self._kick(controller, mark, select)
        else:
            await self.recorder.wait(
                mark,
                select,
                bool,
                within=c.resync_seconds + c.phase_timeout,
                what="the controller's first engine call after the edit",
            )
        # CPU and loop lag are taken over the controller's work, not over the wait for it.
        cpu, lag = CpuSnapshot.take(self._engine_pids), LoopLag()
        lag.start()
        events = await self.recorder.wait(
            mark,
            select,
            _count(last_action, count),
            within=c.phase_timeout,
            what=f"{count} containers to {'start' if up else 'go'} (target {target})",
        )
        cpu_used = cpu.until(CpuSnapshot.take(self._engine_pids))
        lag_stats = await lag.stop()
        status = "running" if up else "stopped"
        await _wait_status(op, d, status, f"status {status} after scaling to {target}")
        recorded = await _status_time(op, d, status, edit)

        begin, end = events[0].at, distinct(events, last_action)[-1].at
        spans = trace.between(edit, recorded if recorded is not None else end)
        docker_spans = [s for s in spans if s.kind.startswith("docker:")]
        first_call = min((s.start for s in docker_spans if s.kind in _PHASE_CALLS), default=begin)
        profile: dict[str, Any] = {
            "calls": by_kind(spans),
            "docker_occupancy": occupancy(docker_spans, first_call, end),
            # What ran, start to finish, between the edit and the first container call.
            "reaction": by_kind([s for s in spans if s.end <= first_call]),
            "cpu": cpu_used,
            "loop_lag": lag_stats,
        }
        if up:
            profile["batches"] = batches(spans, end)
        return Phase(
            work_s=round(end - begin, 4),
            from_edit_s=round(end - edit, 4),
            reaction_s=round(begin - edit, 4),
            status_s=round(recorded - edit, 4) if recorded is not None else None,
            kicks=kicks,
            profile=profile,
        )

    async def _kick(
        self, controller: Controller, mark: int, select: Callable[[ContainerEvent], bool]
    ) -> int:
        """`resync_now()` until the engine shows the controller acting; returns the kicks.

        `Controller._resync_loop` clears the wake-up event after a pass, so a kick that lands
        while a pass is running (after it loaded the deployments) is lost until the next
        periodic resync; kicking again after a second makes that visible instead of costly.
        """
        deadline = time.monotonic() + self.config.phase_timeout
        kicks = 0
        while time.monotonic() < deadline:
            controller.resync_now()
            kicks += 1
            try:
                await self.recorder.wait(
                    mark, select, bool, within=KICK_GRACE_SECONDS, what="a first engine event"
                )
                return kicks
            except TimeoutError:
                continue
        return kicks


# Logged once per controller process by the warm-up: the test engines cannot cap disk size.
EXPECTED_WARNINGS = frozenset({"storage_limit_unenforced"})
# Docker calls that change containers: the phase's own work starts with the first of them.
_PHASE_CALLS = frozenset({"docker:create_container", "docker:start", "docker:stop"})


def _count(action: str, n: int) -> Callable[[list[ContainerEvent]], bool]:
    def done(events: list[ContainerEvent]) -> bool:
        return len(distinct(events, action)) >= n

    return done


async def _wait_status(op: Operator, d: uuid.UUID, status: str, what: str) -> None:
    deadline = time.monotonic() + STATUS_TIMEOUT_SECONDS
    while True:
        current = await op.status(d)
        if current == status:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {STATUS_TIMEOUT_SECONDS:g}s waiting for {what}; "
                f"the deployment is {current}"
            )
        await asyncio.sleep(0.1)


async def _status_time(op: Operator, d: uuid.UUID, status: str, since: float) -> float | None:
    """When the controller recorded `status` after `since` (its history row's clock)."""
    times = [
        _epoch(h["changed_at"])
        for h in await op.history(d)
        if h["new_status"] == status and _epoch(h["changed_at"]) >= since
    ]
    return min(times) if times else None


def _epoch(value: datetime) -> float:
    return value.timestamp()


def describe(sample: Sample, rounds: int, head: str | None = None) -> str:
    """One progress line per sample, printed as the run goes."""
    head = f"{head or f'round {sample.round}/{rounds}':<12} {LABELS[sample.variant]:<18}"
    if sample.error:
        return f"{head}  FAILED: {sample.error}"
    parts = []
    for name, phase in (("up", sample.up), ("down", sample.down)):
        if phase is None:
            continue
        text = f"{name} {phase.work_s:6.2f} s"
        if phase.from_edit_s is not None:
            text += f" (from edit {phase.from_edit_s:.2f} s"
            text += f", kicks {phase.kicks})" if phase.kicks > 1 else ")"
        parts.append(text)
    unexpected = {k: v for k, v in sample.warnings.items() if k not in EXPECTED_WARNINGS}
    warnings = f"  controller warnings {unexpected}" if unexpected else ""
    return f"{head}  {'   '.join(parts)}{warnings}"
