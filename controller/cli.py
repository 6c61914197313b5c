"""`fog-controller`: the daemon's entry point. `run` (the default), `migrate`, `check-health`.

Builds Settings from the environment, configures logging, wires the store and the runtime into
the loop, and turns SIGTERM/SIGINT into a graceful stop that leaves containers running. It also
builds what the daemon shows the outside (metrics, /livez, /readyz on FOG_METRICS_ADDR, and the
systemd notifier) and passes it down. `check-health` asks a running daemon's /livez and /readyz
and exits 0 or 1, for Docker's HEALTHCHECK or any probe that runs a command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import urllib.error
import urllib.request

import structlog

from controller import __version__, heap, sdnotify
from controller import log as logsetup
from controller.leader import AlreadyRunning
from controller.loop import Controller
from controller.metrics import Health, Metrics, MetricsServer, stall_seconds
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings, SettingsError
from controller.store import Store
from schema import migrate
from schema.engine import create_engine, mask_url

log = structlog.get_logger(__name__)

# check-health gives a daemon this long to answer each endpoint: both requests fit inside the
# Dockerfile's HEALTHCHECK --timeout=10s.
CHECK_TIMEOUT_SECONDS = 4.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fog-controller",
        description="Reconcile the deployments in the database with containers on fog nodes.",
    )
    parser.add_argument("--version", action="version", version=f"fog-controller {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the controller daemon (the default)")
    sub.add_parser("migrate", help="upgrade the database schema to head and exit")
    sub.add_parser(
        "check-health",
        help="exit 0 when the daemon at FOG_METRICS_ADDR answers /livez and /readyz with 200",
    )
    return parser


async def _run(settings: Settings) -> int:
    metrics = Metrics()
    health = Health(stall_seconds(settings))
    server: MetricsServer | None = None
    address = settings.metrics_address
    if address is not None:
        server = MetricsServer(*address, metrics, health)
        try:
            server.start()
        except OSError as exc:
            # Fail loudly: carrying on without the listener would leave check-health talking to
            # whatever else holds the port, or to nothing.
            log.error("metrics_listen_failed", address=settings.metrics_addr, error=str(exc))
            return 1
        log.info("metrics_listening", address=settings.metrics_addr)
    notifier = sdnotify.Notifier.from_env(os.environ)
    try:
        # Signal handlers first: a SIGTERM while waiting for the database or migrating must
        # still be a graceful stop (the controller migrates once the database answers).
        store = Store(create_engine(settings.database_url, pool_size=settings.db_pool_size))
        runtime = DockerRuntime(settings, metrics)
        controller = Controller(
            settings, store, runtime, metrics=metrics, health=health, notifier=notifier
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        try:
            await controller.run()
        except AlreadyRunning as exc:
            log.error("controller_refused", reason=exc.reason)
            return 1
        finally:
            await runtime.close()
            await store.close()
    finally:
        notifier.close()
        if server is not None:
            await asyncio.to_thread(server.stop)
    return 0


def check_health(settings: Settings) -> tuple[bool, str]:
    """GET /livez then /readyz; (True, "") when both answer 200, else (False, why)."""
    address = settings.metrics_address
    if address is None:
        return False, "FOG_METRICS_ADDR is empty: the daemon serves no health endpoints"
    host, port = address
    # A daemon listening on every address is asked on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # No proxy: HTTP_PROXY in a container's environment must not reroute a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in ("/livez", "/readyz"):
        try:
            with opener.open(base + path, timeout=CHECK_TIMEOUT_SECONDS) as response:
                if response.status != 200:
                    return False, f"{path}: HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace").strip().splitlines()
            return False, f"{path}: HTTP {exc.code}: {body[0] if body else exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return False, f"{path}: cannot reach {base}: {reason}"
    return True, ""


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"fog-controller: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command == "check-health":
        ok, why = check_health(settings)
        if not ok:
            print(f"fog-controller: unhealthy: {why}", file=sys.stderr)
        sys.exit(0 if ok else 1)
    logsetup.configure(settings.log_format, settings.log_level)
    if args.command == "migrate":
        migrate.upgrade(settings.database_url)
        log.info("schema_migrated", database=mask_url(settings.database_url))
        sys.exit(0)
    heap.tune_collector()
    sys.exit(asyncio.run(_run(settings)))
