"""``python -m bench.walk``: one deployment id from wake-up to the Docker calls, counted.

A new deployment of 3 replicas on one hollow node (PostgreSQL, no Docker engine), reconciled
once by hand: how many deployment loads, node listings and writes that one reconcile costs.
It uses only what every version of the controller has (`Controller`, its reconciler and node
monitor, the hollow runtime), so the same file run against an older checkout gives the
"before" figures.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.scale import Size, SqlCounter, Tuning, seed
from controller.loop import Controller
from controller.runtime.hollow import HollowNode, HollowRuntime, hollow_url
from controller.store import Store
from schema.engine import create_engine
from tests.harness.database import TemplateDatabases, admin_url_from_env

SIZE = Size("walk", nodes=1, deployments=1, replicas=3)


def summary(kinds: Counter[str], lists: int) -> dict[str, Any]:
    """Loads (the first query of a deployment load), lists and writes from statement kinds."""
    selects = sum(n for k, n in kinds.items() if k.startswith("SELECT"))
    writes = sum(n for k, n in kinds.items() if k.split()[0] in ("INSERT", "UPDATE", "WITH"))
    return {
        "loads": kinds.get("SELECT deployments", 0),
        "selects": selects,
        "lists": lists,
        "writes": writes,
        "statements": dict(sorted(kinds.items())),
    }


async def walk(workdir: Path) -> dict[str, Any]:
    templates = TemplateDatabases(admin_url_from_env(), workdir)
    try:
        url = await templates.migrated_pg()
        operator = create_engine(url)
        store = Store(create_engine(url))
        try:
            seeded = await seed(operator, SIZE)
            [node] = seeded.nodes
            runtime = HollowRuntime({hollow_url(node): HollowNode()})
            controller = Controller(Tuning().settings(url), store, runtime)
            await controller.nodes.refresh()
            counter = SqlCounter(store.engine)
            calls = Counter(runtime.calls)
            [deployment_id] = seeded.deployments
            await controller.reconciler.reconcile(deployment_id)
            kinds = counter.reset()
            docker = Counter(runtime.calls) - calls
            out = summary(kinds, docker["list"])
            out["runtime_calls"] = dict(docker)
            out["containers"] = runtime.count()
            return out
        finally:
            await store.close()
            await operator.dispose()
    finally:
        await templates.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fog-walk-") as workdir:
        print(json.dumps(asyncio.run(walk(Path(workdir))), indent=2))


if __name__ == "__main__":
    main()
