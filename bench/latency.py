"""Reaction latency: from an operator's ``UPDATE deployments SET target_replicas = ...`` commit
to the controller's first Docker call, as the engine records it.

Why this shape:
- The controller runs as operators run it: a separate ``fog-controller run`` process
  (`tests.e2e.daemon.Daemon`) with the production timings (resync every 5 s, so a reaction
  within a second can only come from the wake-up path: NOTIFY on PostgreSQL, the 1 s
  ``updated_at`` poll on SQLite). In-process, the benchmark's own coroutines would share the
  controller's event loop and delay either side of the measurement.
- The edit is a plain SQL UPDATE in its own transaction; its commit time is taken when the
  commit returns (the commit happened within that last round trip, well under a millisecond
  on loopback). The controller's first call is the engine's ``create`` event (scale 0->1) or
  ``kill`` event (1->0, the graceful stop's SIGTERM), stamped with the engine's nanosecond
  clock; engine and benchmark share this machine's clock, so the two subtract directly.
- Edits alternate 0->1 and 1->0 on one deployment, and each waits until the controller is
  idle (work queue empty, no reconcile running, reconcile count steady, read from its
  /metrics), so every sample is one wake-up on a quiet controller; then a random pause of up
  to `jitter_seconds` puts the edit at a random phase of the controller's timers (heartbeat,
  resync), as operators meet them. On SQLite the pause spans a whole poll period: an edit
  made a fixed time after the previous poll-driven reconcile would meet the next poll at
  nearly the same offset every time (phase lock) and measure that offset, not the poll.
- Baseline (PostgreSQL): the benchmark LISTENs on the same channel itself, so each edit also
  records when a bare asyncpg listener got the NOTIFY. Reaction minus that is the
  controller's own share (enqueue, reconcile reads, the intent write, the Docker request).
- Baseline (engine): the ``create`` event is stamped when the engine has made the container
  (its layer mounted), not when the request arrived. After every 1->0 edit the benchmark
  makes one container itself with a plain SDK call and the controller's host config and
  records call -> ``create`` event: what the engine alone adds to a create reaction.
- The controller's log splits the reaction once more: its ``replicas_created`` /
  ``replica_stopping`` event is the decision, committed to the database before any Docker call.
- A resync pass that began between the commit and the engine event could have done the
  work instead of the wake-up: such samples are counted and reported, not dropped.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import docker
from prometheus_client.parser import text_string_to_metric_families

from bench.convergence import (
    BENCH_LABEL,
    MIN_RESOURCES,
    Config,
    controller_host_config,
    production_settings,
    setting_default,
)
from bench.events import ContainerEvent, EventRecorder, has_label
from bench.report import RESULTS_DIR
from controller.model import LABEL_DEPLOYMENT
from controller.pgsessions import asyncpg_dsn
from schema.models import NOTIFY_CHANNEL
from tests.e2e.daemon import FAST_ENV, Daemon, Sql, daemon_env, free_port
from tests.harness.database import TemplateDatabases, admin_url_from_env
from tests.harness.engines import API_VERSION, TEST_IMAGE, Engine

PG = "pg"
SQLITE = "sqlite"
BACKENDS = (PG, SQLITE)
WAKEUP = {PG: "NOTIFY", SQLITE: "updated_at poll (1 s)"}
AIM_P50_SECONDS = 0.100  # the aim, PostgreSQL: p50 under 100 ms
UP, DOWN = "create", "kill"  # the engine event that is the controller's first call
DONE = {UP: "start", DOWN: "destroy"}
STATUS = {UP: "running", DOWN: "stopped"}
DECISION = {UP: "replicas_created", DOWN: "replica_stopping"}
# What a scale-up reconcile records between its decision and its first Docker call.
STATUS_STEPS = ("pending", "scheduled")
IDLE_POLL_SECONDS = 0.02
STARTUP_TIMEOUT_SECONDS = 60.0
SQLITE_POLL_SECONDS = 1.0  # controller/watch.py POLL_SECONDS


@dataclass(frozen=True)
class LatencyConfig:
    edits: int = 100  # PostgreSQL, alternating 0->1 (creates) and 1->0 (stops)
    # SQLite's reaction is the 1 s poll by construction (uniform over 0-1 s, plus the
    # reconcile), and every SQLite edit costs a second of waiting: 50 edits pin its p50 well
    # enough and keep `make bench` (convergence + latency) near five minutes.
    sqlite_edits: int = 50
    backends: tuple[str, ...] = BACKENDS
    resync_seconds: float = setting_default("resync_seconds")
    jitter_seconds: float = 0.25
    edit_timeout: float = 30.0
    seed: int | None = None


@dataclass
class Edit:
    index: int
    kind: str  # UP (0->1) or DOWN (1->0)
    commit_s: float  # the operator's whole transaction, begin to commit returned
    committed_at: float  # wall clock when the commit returned
    reaction_s: float | None = None  # commit -> the controller's first engine event
    notify_s: float | None = None  # commit -> a bare LISTENer got the NOTIFY (PostgreSQL)
    decided_s: float | None = None  # commit -> the controller logged its decision
    resync_in_window: bool = False  # a resync pass began between commit and engine event
    # commit -> each logged step of the reconcile that acted, before its first Docker call
    steps: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BackendRun:
    backend: str
    edits: list[Edit] = field(default_factory=list)
    raw_create_s: list[float] = field(default_factory=list)  # SDK call -> create event
    error: str | None = None
    controller_log: str | None = None


# --- percentiles -----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation (with 50 samples,
    p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def figures(values: list[float | None]) -> dict[str, Any] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {
        "n": len(got),
        "p50": round(percentile(got, 50), 5),
        "p90": round(percentile(got, 90), 5),
        "p99": round(percentile(got, 99), 5),
        "min": round(min(got), 5),
        "max": round(max(got), 5),
        "mean": round(statistics.fmean(got), 5),
    }


def summarize(run: BackendRun) -> dict[str, Any]:
    ok = [e for e in run.edits if e.error is None]
    out: dict[str, Any] = {
        "wakeup": WAKEUP[run.backend],
        "edits": len(run.edits),
        "failed": len(run.edits) - len(ok),
        "resync_in_window": sum(e.resync_in_window for e in ok),
    }
    out["raw_create_s"] = figures(list(run.raw_create_s))
    out["steps_p50_s"] = {
        kind: {
            step: round(statistics.median(values), 5)
            for step in dict.fromkeys(k for e in ok if e.kind == kind for k in e.steps)
            if (values := [e.steps[step] for e in ok if e.kind == kind and step in e.steps])
        }
        for kind in (UP, DOWN)
    }
    for name, kinds in (("all", (UP, DOWN)), ("creates", (UP,)), ("stops", (DOWN,))):
        chosen = [e for e in ok if e.kind in kinds]
        out[name] = {
            "reaction_s": figures([e.reaction_s for e in chosen]),
            "notify_s": figures([e.notify_s for e in chosen]),
            "decided_s": figures([e.decided_s for e in chosen]),
            "commit_s": figures([e.commit_s for e in chosen]),
        }
    return out


# --- the controller's side -------------------------------------------------------------------


def scrape(address: str) -> dict[str, float]:
    """The daemon's /metrics, summed per sample name (labels dropped)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}/metrics", timeout=5) as response:
        body = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def wait_idle(address: str, within: float) -> None:
    """Until the work queue is empty, no reconcile runs, and no reconcile finished since the
    previous look: the next edit then meets a quiet controller."""
    deadline = time.monotonic() + within
    previous: float | None = None
    while True:
        m = await asyncio.to_thread(scrape, address)
        total = m.get("fog_controller_reconcile_total", 0.0)
        quiet = (
            m.get("fog_controller_workqueue_depth", 1.0) == 0
            and m.get("fog_controller_active_workers", 1.0) == 0
        )
        if quiet and previous == total:
            return
        previous = total if quiet else None
        if time.monotonic() > deadline:
            raise TimeoutError(f"the controller was not idle within {within:g}s: {m}")
        await asyncio.sleep(IDLE_POLL_SECONDS)


def log_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def attribute(run: BackendRun, daemon: Daemon, deployment: uuid.UUID) -> None:
    """Decision times and resync passes from the controller's log, edit by edit."""
    log = daemon.log()
    key = str(deployment)
    decisions = {
        kind: sorted(log_time(e) for e in log.named(event, deployment_id=key))
        for kind, event in DECISION.items()
    }
    passes = [log_time(e) - float(e.get("duration_ms", 0)) / 1000 for e in log.named("resync_done")]
    statuses = [
        (log_time(e), str(e.get("new_status")))
        for e in log.named("deployment_status_changed", deployment_id=key)
    ]
    for edit in run.edits:
        if edit.reaction_s is None:
            continue
        acted = edit.committed_at + edit.reaction_s
        after = [t for t in decisions[edit.kind] if edit.committed_at - edit.commit_s <= t]
        if after and after[0] <= acted + 0.001:  # the log's clock is the same machine's
            edit.decided_s = round(after[0] - edit.committed_at, 5)
            edit.steps[DECISION[edit.kind]] = edit.decided_s
            for t, status in statuses:
                if edit.kind == UP and status in STATUS_STEPS and after[0] <= t <= acted + 0.001:
                    edit.steps.setdefault(f"status {status}", round(t - edit.committed_at, 5))
            edit.steps[f"{edit.kind} event"] = edit.reaction_s
        edit.resync_in_window = any(edit.committed_at - edit.commit_s <= t <= acted for t in passes)


# --- one backend -----------------------------------------------------------------------------


class NotifyTimes:
    """A bare LISTEN on the controller's channel: when each NOTIFY reached a plain client."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._conn: Any = None

    def _got(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.times.append(time.time())

    async def start(self, url: str) -> None:
        self._conn = await asyncpg.connect(asyncpg_dsn(url))
        await self._conn.add_listener(NOTIFY_CHANNEL, self._got)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    def first_after(self, t: float) -> float | None:
        return next((x for x in self.times if x >= t), None)


class RawCreate:
    """Plain docker-py creates with the controller's host config: the engine's own share."""

    def __init__(self, url: str) -> None:
        self.client = docker.APIClient(base_url=url, version=API_VERSION, timeout=30)
        self.host = self.client.create_host_config(
            **controller_host_config(production_settings("sqlite://", Config()), MIN_RESOURCES)
        )

    def create(self, tag: str) -> tuple[str, float]:
        called = time.time()
        made = self.client.create_container(
            TEST_IMAGE,
            name=f"bench-latency-{tag}",
            labels={BENCH_LABEL: tag},
            host_config=self.host,
        )
        return str(made["Id"]), called

    def remove(self, container: str) -> None:
        self.client.remove_container(container, force=True)

    def close(self) -> None:
        self.client.close()


class LatencyBench:
    def __init__(
        self,
        config: LatencyConfig,
        engine: Engine,
        recorder: EventRecorder,
        templates: TemplateDatabases,
        workdir: Path,
        stamp: str,
        progress: Callable[[str], None],
    ) -> None:
        self.config = config
        self.engine = engine
        self.recorder = recorder
        self.templates = templates
        self.workdir = workdir
        self.stamp = stamp
        self.progress = progress
        self.rng = random.Random(config.seed)
        self.raw = RawCreate(engine.url)

    def env(self, url: str, metrics: str) -> dict[str, str]:
        # Production timings: drop every FAST_ENV shortening but the stop grace (the test
        # image exits on SIGTERM at once) and what makes the daemon fit a benchmark.
        overrides: dict[str, str | None] = dict.fromkeys(FAST_ENV)
        overrides.update(
            {
                "FOG_DATABASE_URL": url,
                "FOG_RESYNC_SECONDS": f"{self.config.resync_seconds:g}",
                "FOG_STOP_TIMEOUT_SECONDS": "1",
                "FOG_REGISTER_LOCAL_NODE": "false",
                "FOG_AUTO_MIGRATE": "false",
                "FOG_LOG_FORMAT": "json",
                "FOG_METRICS_ADDR": metrics,
            }
        )
        return daemon_env(self.workdir / "state", overrides)

    async def run(self, backend: str) -> BackendRun:
        run = BackendRun(backend)
        if backend == PG:
            url = await self.templates.migrated_pg()
        else:
            url = await self.templates.migrated_sqlite(self.workdir)
        sql = Sql(url)
        notify = NotifyTimes() if backend == PG else None
        daemon: Daemon | None = None
        try:
            await sql.add_nodes([self.engine.url])
            user = await sql.add_user("bench")
            d = await sql.add_deployment(user, "latency", TEST_IMAGE, 0)
            metrics = f"127.0.0.1:{free_port()}"
            daemon = Daemon(f"latency-{backend}", self.env(url, metrics), self.workdir / "logs")
            await daemon.wait_event("controller_started", within=STARTUP_TIMEOUT_SECONDS)
            if backend == PG:
                await daemon.wait_event("listener_connected", within=STARTUP_TIMEOUT_SECONDS)
            await daemon.until(self._status(sql, d, "stopped"), within=STARTUP_TIMEOUT_SECONDS)
            if notify is not None:
                await notify.start(url)
            # Warm-up, not recorded: the first create per process learns that the engine
            # refuses storage_opt, and connections are opened.
            jitter = self.config.jitter_seconds
            if backend == SQLITE:
                jitter = max(jitter, SQLITE_POLL_SECONDS)
            for target, kind in ((1, UP), (0, DOWN)):
                await self._edit(sql, daemon, metrics, d, target, kind, -1, notify, jitter)
            count = self.config.sqlite_edits if backend == SQLITE else self.config.edits
            for i in range(count):
                kind = UP if i % 2 == 0 else DOWN
                edit = await self._edit(
                    sql, daemon, metrics, d, 1 if kind == UP else 0, kind, i, notify, jitter
                )
                run.edits.append(edit)
                if kind == DOWN and edit.error is None:
                    await self._raw_create(run, metrics)
                if edit.error is not None:
                    self.progress(f"  {backend} edit {i}: {edit.error}")
                    # Let the edit finish late, so the next one starts from the state it
                    # expects (a controller that never gets there fails the whole backend).
                    await daemon.until(self._status(sql, d, STATUS[kind]), within=60)
                elif (i + 1) % 20 == 0:
                    self.progress(f"  {backend}: {i + 1}/{count} edits")
            attribute(run, daemon, d)
        except Exception as exc:  # one broken backend must not cost the other
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            if notify is not None:
                await notify.close()
            if daemon is not None:
                daemon.close()
                saved = RESULTS_DIR / f"latency-{self.stamp}.{backend}.controller.log"
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(daemon.stderr_path, saved)
                run.controller_log = saved.name
            await sql.close()
            await self.templates.drop(url)
        return run

    async def _raw_create(self, run: BackendRun, metrics: str) -> None:
        await wait_idle(metrics, self.config.edit_timeout)
        tag = uuid.uuid4().hex[:12]
        mark = self.recorder.mark()
        container, called = await asyncio.to_thread(self.raw.create, tag)
        try:
            events = await self.recorder.wait(
                mark, has_label(BENCH_LABEL, tag), bool, within=30, what="a raw create event"
            )
            run.raw_create_s.append(round(events[0].at - called, 5))
        finally:
            await asyncio.to_thread(self.raw.remove, container)

    @staticmethod
    def _status(sql: Sql, d: uuid.UUID, want: str) -> Callable[[], Any]:
        async def check() -> bool:
            return await sql.status(d) == want

        return check

    async def _edit(
        self,
        sql: Sql,
        daemon: Daemon,
        metrics: str,
        d: uuid.UUID,
        target: int,
        kind: str,
        index: int,
        notify: NotifyTimes | None,
        jitter: float,
    ) -> Edit:
        c = self.config
        await wait_idle(metrics, c.edit_timeout)
        await asyncio.sleep(self.rng.uniform(0.0, jitter))
        select = has_label(LABEL_DEPLOYMENT, str(d))
        mark = self.recorder.mark()
        begun = time.time()
        await sql.scale(d, target)
        committed = time.time()
        edit = Edit(index, kind, round(committed - begun, 5), committed)
        try:
            first = await self.recorder.wait(
                mark, select, bool, within=c.edit_timeout, what=f"the first event after {kind}"
            )
            event: ContainerEvent = first[0]
            if event.action != kind:
                raise RuntimeError(f"first engine event was {event.action}, expected {kind}")
            edit.reaction_s = round(event.at - committed, 5)
            if notify is not None:
                got = notify.first_after(begun)
                edit.notify_s = None if got is None else round(got - committed, 5)
            await self.recorder.wait(
                mark,
                select,
                lambda events: any(e.action == DONE[kind] for e in events),
                within=c.edit_timeout,
                what=f"{DONE[kind]} after {kind}",
            )
            # Idle after the engine's last event: the reconcile that acted has recorded the
            # deployment's status, which must now be the one the edit asked for.
            await wait_idle(metrics, c.edit_timeout)
            status = await sql.status(d)
            if status != STATUS[kind]:
                raise RuntimeError(f"status {status} once idle, expected {STATUS[kind]}")
        except Exception as exc:
            edit.error = f"{type(exc).__name__}: {exc}"
        return edit


# --- printing and the file -------------------------------------------------------------------


def _ms(st: dict[str, Any] | None, key: str) -> str:
    return "-" if st is None else f"{st[key] * 1000:.1f}"


def table(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"{'backend':<8} {'wake-up':<22} {'edits':<10} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'NOTIFY p50':>10} {'decided p50':>11} {'raw create p50':>14}",
    ]
    for backend in BACKENDS:
        entry = summary.get(backend)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"{backend:<8} FAILED: {entry['error']}")
            continue
        for name, label in (("creates", "0->1 create"), ("stops", "1->0 stop"), ("all", "all")):
            r = entry[name]["reaction_s"]
            n = 0 if r is None else r["n"]
            lines.append(
                f"{backend:<8} {entry['wakeup']:<22} {label:<10} {n:>4} {_ms(r, 'p50'):>8} "
                f"{_ms(r, 'p99'):>8} {_ms(r, 'max'):>8} "
                f"{_ms(entry[name]['notify_s'], 'p50'):>10} "
                f"{_ms(entry[name]['decided_s'], 'p50'):>11} "
                f"{_ms(entry['raw_create_s'] if name == 'creates' else None, 'p50'):>14}"
            )
        extra = []
        if entry["failed"]:
            extra.append(f"{entry['failed']} of {entry['edits']} edits failed")
        if entry["resync_in_window"]:
            extra.append(
                f"{entry['resync_in_window']} edits had a resync pass begin inside the window"
            )
        if extra:
            lines.append(f"{'':<8} {'; '.join(extra)}")
        for kind, label in ((UP, "creates"), (DOWN, "stops")):
            steps = entry["steps_p50_s"].get(kind)
            if steps:
                path = " -> ".join(f"{k} {v * 1000:.1f}" for k, v in steps.items())
                lines.append(f"{'':<8} {label}, p50 ms from commit: {path}")
    lines += [
        "reaction: operator's UPDATE commit returned -> the engine's create (0->1) or kill",
        "(1->0) event of the controller's first call; p99 is nearest-rank (an observed value).",
        "NOTIFY: commit -> a bare asyncpg LISTENer in the benchmark got the notification (the",
        "floor of the PostgreSQL path). decided: commit -> the controller logged its decision",
        "(replicas_created / replica_stopping), written to the database before any Docker call.",
        "raw create: a plain SDK create_container call -> its create event, interleaved with the",
        "edits (the engine's own time to make a container, included in every create reaction).",
    ]
    return lines


def aim_lines(summary: dict[str, Any]) -> list[str]:
    entry = summary.get(PG)
    if entry is None or "error" in entry or entry["creates"]["reaction_s"] is None:
        return []
    p50 = entry["creates"]["reaction_s"]["p50"]
    verdict = "met" if p50 < AIM_P50_SECONDS else "MISSED"
    raw = entry["raw_create_s"]
    engine = (
        "" if raw is None else f" (the engine's own create time, p50: {raw['p50'] * 1000:.1f} ms)"
    )
    return [
        f"aim p50 < {AIM_P50_SECONDS * 1000:.0f} ms on PostgreSQL (UPDATE commit -> first "
        f"create event): {p50 * 1000:.1f} ms{engine} -> {verdict}"
    ]


def write_json(document: dict[str, Any], stamp: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"latency-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


async def run_latency(
    config: LatencyConfig,
    engine: Engine,
    workdir: Path,
    host: dict[str, Any],
    command: str,
    say: Callable[[str], None],
) -> int:
    """Run every configured backend, print the table, write the JSON; 1 if anything failed."""
    started = datetime.now(UTC)
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    recorder = EventRecorder(engine.url)
    runs: list[BackendRun] = []
    say(
        f"latency: {config.edits} edits on PostgreSQL, {config.sqlite_edits} on SQLite, "
        "alternating 0->1 and 1->0, controller as "
        f"a process with production timings (resync {config.resync_seconds:g} s)"
    )
    try:
        await asyncio.to_thread(recorder.start)
        bench = LatencyBench(config, engine, recorder, templates, workdir, stamp, say)
        try:
            for backend in config.backends:
                t0 = time.monotonic()
                run = await bench.run(backend)
                runs.append(run)
                state = f"FAILED: {run.error}" if run.error else "done"
                say(f"  {backend}: {state} in {time.monotonic() - t0:.0f} s")
        finally:
            bench.raw.close()
    finally:
        await asyncio.to_thread(recorder.close)
        await templates.close()
    summary: dict[str, Any] = {}
    for run in runs:
        summary[run.backend] = {"error": run.error} if run.error else summarize(run)
    say("")
    for line in [*table(summary), "", *aim_lines(summary)]:
        say(line)
    document = {
        "benchmark": "latency",
        "format": 1,
        "command": command,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "host": host,
        "config": asdict(config),
        "aim_p50_seconds": AIM_P50_SECONDS,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    path = write_json(document, stamp)
    say(f"figures: bench/results/{path.name}")
    return 1 if any(r.error or any(e.error for e in r.edits) for r in runs) else 0
