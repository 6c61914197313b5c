"""``python -m bench [all|convergence|latency]`` (``make bench``: all): the convergence
benchmark, then the reaction-latency benchmark (`bench.latency`), end to end.
``python -m bench scale [--scale small|full]``: the scale benchmark on hollow nodes
(`bench.scale`; no Docker engine needed, PostgreSQL only).
``python -m bench prepull [--runs 3]``: what a rollout's pre-pull costs (`bench.prepull`).
``python -m bench rebalance [--runs 3]``: a returning node's wait for its share (`bench.rebalance`).

Starts one private Docker engine (``tests.harness.engines.Cluster``; or uses the first engine
named in ``FOG_TEST_DOCKER_URLS``), imports the test image into it, makes throwaway databases
(``tests.harness.database``; PostgreSQL at ``FOG_TEST_DATABASE_URL``), runs the interleaved
rounds of `bench.convergence`, prints the table and writes the figures to
``bench/results/convergence-<UTC timestamp>.json`` (the controller's log goes next to it).

Everything it started is stopped and removed on the way out, on error and on Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from bench.convergence import (
    FULL_RUN,
    PG,
    VARIANTS,
    Config,
    ConvergenceBench,
    setting_default,
    with_image,
)
from bench.events import EventRecorder
from bench.latency import BACKENDS, LatencyConfig, run_latency
from bench.logs import ControllerLog
from bench.report import (
    RESULTS_DIR,
    aim_lines,
    document,
    profile_lines,
    reaction_lines,
    summarize,
    table,
    write_json,
)
from bench.swarm import SIZES as SWARM_SIZES
from bench.swarm import STEADY_SECONDS as SWARM_STEADY_SECONDS
from bench.swarm import VARIANTS as SWARM_VARIANTS
from bench.swarm import Plan
from controller.runspec import EMPTY_RUN
from tests.harness.database import TemplateDatabases, admin_url_from_env
from tests.harness.engines import (
    API_VERSION,
    Cluster,
    Engine,
    build_test_image,
    ensure_docker_installed,
)

REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    defaults = Config()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Convergence benchmark (the controller against raw Docker SDK calls) and "
        "reaction-latency benchmark (UPDATE commit to the controller's first Docker call).",
    )
    p.add_argument(
        "suite",
        nargs="?",
        default="all",
        choices=("all", "convergence", "latency"),
        help="which benchmark to run (default: both)",
    )
    p.add_argument(
        "--edits",
        type=int,
        default=LatencyConfig().edits,
        help="latency: edits on PostgreSQL, alternating 0->1 and 1->0 (default 100)",
    )
    p.add_argument(
        "--sqlite-edits",
        type=int,
        default=LatencyConfig().sqlite_edits,
        help="latency: edits on SQLite (default 50: each waits for the 1 s poll)",
    )
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"latency: comma-separated subset of {','.join(BACKENDS)}",
    )
    p.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds (default 3)")
    p.add_argument("--replicas", type=int, default=defaults.replicas, help="default 50")
    p.add_argument(
        "--threads", type=int, default=defaults.threads, help="raw baseline threads (default 8)"
    )
    p.add_argument(
        "--variants",
        default=",".join(defaults.variants),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    p.add_argument(
        "--no-kick",
        action="store_true",
        help="do not call resync_now() after the UPDATE: the edit waits for the periodic resync",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=setting_default("resync_seconds"),
        help="FOG_RESYNC_SECONDS of the controller (default: the production default)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=defaults.phase_timeout,
        help="longest wait for one phase to converge, seconds (default 120)",
    )
    p.add_argument(
        "--swarm",
        action="store_true",
        help="instead: the side-by-side with Docker Swarm mode (bench.swarm; N=10 and 50)",
    )
    p.add_argument(
        "--stop-grace",
        type=int,
        default=defaults.stop_timeout_seconds,
        help="stop grace period, seconds: FOG_STOP_TIMEOUT_SECONDS, Swarm's stop_grace_period, "
        "raw stop's timeout (default 1)",
    )
    p.add_argument(
        "--stop-after",
        type=float,
        default=defaults.stop_after_seconds,
        help="seconds a container takes to exit after SIGTERM (default 0: at once)",
    )
    p.add_argument(
        "--full-spec",
        action="store_true",
        help="every variant's containers get a full spec: entrypoint, command, env, labels "
        "and a named volume (issue 14); default: image and resources only",
    )
    p.add_argument(
        "--sizes",
        default=",".join(str(n) for n in SWARM_SIZES),
        help="--swarm: replica counts to compare (default 10,50; repair runs at 10)",
    )
    p.add_argument(
        "--compare",
        default=",".join(SWARM_VARIANTS),
        help=f"--swarm: comma-separated subset of {','.join(SWARM_VARIANTS)}",
    )
    p.add_argument(
        "--steady-seconds",
        type=float,
        default=SWARM_STEADY_SECONDS,
        help="--swarm: the idle controller's CPU/RSS window (default 60; 0 skips it)",
    )
    return p


def _config(args: argparse.Namespace) -> Config:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.replicas < 1 or args.threads < 1:
        raise SystemExit("--rounds, --replicas and --threads must be at least 1")
    if args.stop_grace < 0 or args.stop_after < 0:
        raise SystemExit("--stop-grace and --stop-after must not be negative")
    return replace(
        Config(),
        rounds=args.rounds,
        replicas=args.replicas,
        threads=args.threads,
        variants=variants,
        kick=not args.no_kick,
        resync_seconds=args.resync_seconds,
        phase_timeout=args.timeout,
        stop_timeout_seconds=args.stop_grace,
        stop_after_seconds=args.stop_after,
        run=FULL_RUN if args.full_spec else EMPTY_RUN,
    )


def _plan(args: argparse.Namespace) -> Plan:
    compare = tuple(v.strip() for v in args.compare.split(",") if v.strip())
    if not compare or set(compare) - set(SWARM_VARIANTS):
        raise SystemExit(f"--compare: choose from {', '.join(SWARM_VARIANTS)}")
    try:
        sizes = tuple(int(n) for n in args.sizes.split(",") if n.strip())
    except ValueError:
        raise SystemExit("--sizes: comma-separated replica counts") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit("--sizes: comma-separated replica counts, each at least 1")
    return Plan(sizes=sizes, variants=compare, steady_seconds=args.steady_seconds)


def _git() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        result = subprocess.run(
            ["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
        return result.stdout.strip()

    try:
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def _host(engine: Engine) -> dict[str, Any]:
    client = docker.APIClient(base_url=engine.url, version=API_VERSION, timeout=30)
    try:
        version = client.version()
        info = client.info()
    finally:
        client.close()
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dockerd": version.get("Version"),
        "storage_driver": info.get("Driver"),
        "cgroup": f"{info.get('CgroupVersion')}/{info.get('CgroupDriver')}",
        "engine_external": engine.external,
        "git": _git(),
    }


def _say(line: str = "") -> None:
    print(line, flush=True)


async def _run(config: Config, engine: Engine, workdir: Path, command: str) -> int:
    started = datetime.now(UTC)
    log_path = RESULTS_DIR / f"convergence-{started:%Y%m%dT%H%M%SZ}.controller.log"
    log = ControllerLog(log_path)
    log.open()
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    recorder = EventRecorder(engine.url)
    try:
        await asyncio.to_thread(recorder.start)
        if PG in config.variants:
            await templates.pg_template()  # fail now, not after the first raw round
        host = await asyncio.to_thread(_host, engine)
        trigger = (
            "operator UPDATE, then controller.resync_now() at once (what a NOTIFY wake-up does; "
            f"without it an edit may wait for the next resync, every {config.resync_seconds:g} s;"
            " --no-kick measures the controller's own wake-up)"
            if config.kick
            else "operator UPDATE only: the controller must notice it by itself (a NOTIFY or "
            f"poll wake-up if it has one, else its next resync, every {config.resync_seconds:g} s"
            "); each edit waits a random 0-resync pause first"
        )
        _say(
            f"convergence: {config.replicas} replicas on 1 engine (dockerd {host['dockerd']}, "
            f"{host['storage_driver']}), {config.rounds} rounds, {host['cpus']} CPUs, "
            f"load {host['loadavg_before']}"
        )
        _say(f"trigger: {trigger}")
        _say(
            f"controller: production settings (resync {config.resync_seconds:g} s, node "
            f"concurrency {setting_default('node_concurrency')}, heartbeat "
            f"{setting_default('node_heartbeat_seconds'):g}"
            f" s), stop timeout {config.stop_timeout_seconds} s; raw: {config.threads} threads"
        )
        bench = ConvergenceBench(config, engine, recorder, templates, workdir, log, _say)
        samples = await bench.run()
    finally:
        await asyncio.to_thread(recorder.close)
        await templates.close()
        log.close()
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarize(samples)
    _say()
    for line in table(summary):
        _say(line)
    _say()
    for line in [*aim_lines(summary, samples), *reaction_lines(summary, samples)]:
        _say(line)
    _say()
    concurrency = int(setting_default("node_concurrency"))
    for line in profile_lines(summary, samples, config.replicas, concurrency):
        _say(line)
    path = write_json(
        document(config, samples, summary, host, started, datetime.now(UTC), command), started
    )
    _say()
    _say(f"figures: {path.relative_to(REPO)}   controller log: {log_path.relative_to(REPO)}")
    return 1 if any(s.error for s in samples) else 0


async def _suites(
    args: argparse.Namespace, config: Config, engine: Engine, workdir: Path, command: str
) -> int:
    code = 0
    if args.suite in ("all", "convergence"):
        code = await _run(config, engine, workdir, command)
    if args.suite in ("all", "latency"):
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        if not backends or set(backends) - set(BACKENDS) or min(args.edits, args.sqlite_edits) < 2:
            raise SystemExit(f"--backends: choose from {', '.join(BACKENDS)}; edits >= 2")
        latency = replace(
            LatencyConfig(), edits=args.edits, sqlite_edits=args.sqlite_edits, backends=backends
        )
        if args.suite == "all":
            _say()
        host = await asyncio.to_thread(_host, engine)
        code = max(code, await run_latency(latency, engine, workdir, host, command, _say))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:
        from bench import scale  # imported here: the convergence run needs none of it

        return scale.main(argv[1:])
    if argv[:1] == ["prepull"]:
        from bench import prepull  # imported here: only this suite needs a registry

        return prepull.main(argv[1:])
    if argv[:1] == ["rebalance"]:
        from bench import rebalance  # imported here: only this suite stops engines

        return rebalance.main(argv[1:])
    args = _parser().parse_args(argv)
    config = _config(args)
    command = shlex.join(["python", "-m", "bench", *argv])
    ensure_docker_installed()
    if args.swarm:
        from bench import swarm  # imported here: only this suite needs Swarm and matplotlib

        return swarm.main(config, command, plan=_plan(args))
    workdir = Path(tempfile.mkdtemp(prefix="fogbench-"))
    cluster: Cluster | None = None
    try:
        _say("starting a private Docker engine and importing the test image ...")
        # Under our own directory, so that our dockerd is told apart from the test suite's.
        cluster = Cluster.start(1, base_dir=workdir)
        build_test_image(cluster.engines[0])
        config = with_image(config, cluster.engines[0])
        return asyncio.run(_suites(args, config, cluster.engines[0], workdir, command))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the engine and dropping the databases", file=sys.stderr)
        return 130
    finally:
        if cluster is not None:
            cluster.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
