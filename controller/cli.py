"""`fog-controller`: the daemon's entry point. `run` (the default) and `migrate`.

Builds Settings from the environment, configures logging, wires the store and the runtime into
the loop, and turns SIGTERM/SIGINT into a graceful stop that leaves containers running.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from controller import __version__
from controller import log as logsetup
from controller.loop import Controller
from controller.runtime.docker import DockerRuntime
from controller.settings import Settings, SettingsError
from controller.store import Store
from schema import migrate
from schema.engine import create_engine, mask_url

log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fog-controller",
        description="Reconcile the deployments in the database with containers on fog nodes.",
    )
    parser.add_argument("--version", action="version", version=f"fog-controller {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the controller daemon (the default)")
    sub.add_parser("migrate", help="upgrade the database schema to head and exit")
    return parser


async def _run(settings: Settings) -> int:
    if settings.auto_migrate:
        await migrate.upgrade_async(settings.database_url)
        log.info("schema_ready", database=mask_url(settings.database_url))
    store = Store(create_engine(settings.database_url))
    runtime = DockerRuntime(settings)
    controller = Controller(settings, store, runtime)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop)
    try:
        await controller.run()
    finally:
        await runtime.close()
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"fog-controller: {exc}", file=sys.stderr)
        sys.exit(2)
    logsetup.configure(settings.log_format, settings.log_level)
    if args.command == "migrate":
        migrate.upgrade(settings.database_url)
        log.info("schema_migrated", database=mask_url(settings.database_url))
        sys.exit(0)
    sys.exit(asyncio.run(_run(settings)))
