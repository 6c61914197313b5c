"""Placement end to end (issue 15), as an operator uses it: `fogctl node add --label`,
`fogctl node label`, `fogctl apply -f` with a placement block, and the daemon as a process.

Three real engines: node-0 and node-1 in zone a, node-2 in zone b. A deployment of 3 asks
for zone a and at most one replica per node: two run, the third waits with the scheduler's
counted reason. Relabelling node-2 into zone a (one fogctl command) lets the third run there.
The controller's own labels (`fog.io/engine`, `fog.io/os`, `fog.io/arch`) show in
`fogctl get nodes --show-labels`, and fogctl refuses to set one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.daemon import Daemons, Sql, daemon_env
from tests.harness.engines import TEST_IMAGE

pytestmark = pytest.mark.docker

EDGE_YAML = """\
name: edge
container_image: {image}
target_replicas: 3
resources: {{cpu_cores: 0.5, memory_mb: 512, storage_gb: 1}}
placement:
  node_selector: {{zone: a}}
  max_per_node: 1
"""


def _fogctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("fogctl")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ok(env: dict[str, str], *args: str) -> str:
    done = _fogctl(env, *args)
    assert done.returncode == 0, f"fogctl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


async def test_zone_selector_cap_and_relabel(
    db_url: str, sql: Sql, engines: list[str], daemons: Daemons, tmp_path: Path
) -> None:
    env = daemon_env(tmp_path / "state", {"FOG_DATABASE_URL": db_url, "FOG_USER": "alice"})
    _ok(env, "user", "add", "alice")
    for i, (url, zone) in enumerate(zip(engines, "aab", strict=True)):
        _ok(env, "node", "add", f"node-{i}", "--docker-url", url, "--label", f"zone={zone}")
    (tmp_path / "edge.yaml").write_text(EDGE_YAML.format(image=TEST_IMAGE))
    _ok(env, "apply", "-f", str(tmp_path / "edge.yaml"))
    daemon = daemons.start(FOG_DATABASE_URL=db_url)

    async def per_node() -> dict[str, int]:
        rows = await sql.rows(
            "SELECT n.name FROM deployment_replicas r JOIN nodes n ON n.id = r.node_id "
            "JOIN deployments d ON d.id = r.deployment_id "
            "WHERE d.name = 'edge' AND r.status = 'running'"
        )
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["name"]] = counts.get(row["name"], 0) + 1
        return counts

    async def two_and_a_reason() -> str:
        assert await per_node() == {"node-0": 1, "node-1": 1}
        described = _ok(env, "describe", "deployment", "edge")
        assert "0/3 nodes fit: 2 max 1 per node, 1 node selector zone=a not matched" in described
        return described

    described = await daemon.until(two_and_a_reason, what="two replicas and the third's reason")
    assert "zone=a" in described
    assert "max 1 per node" in described

    async def engine_labels() -> str:
        shown = _ok(env, "get", "nodes", "--show-labels")
        assert shown.count("fog.io/engine=docker") == 3, shown
        assert shown.count("fog.io/os=linux") == 3, shown
        return shown

    shown = await daemon.until(engine_labels, what="the controller's labels on every node")
    assert "zone=b" in shown

    refused = _fogctl(env, "node", "label", "node-2", "fog.io/arch=arm64")
    assert refused.returncode != 0
    assert "fog.io/" in refused.stdout + refused.stderr

    _ok(env, "node", "label", "node-2", "zone=a")

    async def three() -> bool:
        assert await per_node() == {"node-0": 1, "node-1": 1, "node-2": 1}
        return True

    await daemon.until(three, what="the third replica on the relabelled node")
    assert "unchanged" in _ok(env, "apply", "-f", str(tmp_path / "edge.yaml"))
    code, _ = await daemon.terminate(within=15)
    assert code == 0, daemon.tail()
