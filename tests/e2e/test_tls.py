"""`fog-controller run` against a remote engine over TLS, configured only as an operator does:
a `tcp://` URL in `nodes`, files in `FOG_ENGINE_CERTS_DIR/<node>/`, nothing else.

What only a separate process shows: the settings come from the environment (which, here,
also carries REQUESTS_CA_BUNDLE, as many hosts do), and its one output, the JSON log on
stderr, must never carry key material, neither while containers run over TLS nor on the
failure path of a node whose certificates are wrong.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import requests.certs
import trustme

from tests.e2e.daemon import Daemons, Sql
from tests.harness.engines import TEST_IMAGE, Cluster
from tests.harness.fleet import managed_containers, remove_managed_containers

pytestmark = pytest.mark.docker


def key_lines(key_file: Path) -> list[str]:
    body = [line for line in key_file.read_text().splitlines() if not line.startswith("-----")]
    assert body, f"{key_file} holds no PEM body"
    return body


async def test_replicas_run_over_tls_and_no_key_material_reaches_the_log(
    pg_sql: Sql, tls_cluster: Cluster, daemons: Daemons, tmp_path: Path
) -> None:
    sql = pg_sql
    tls_cluster.ensure_running()
    engine = tls_cluster.engines[0]
    assert engine.certs is not None
    certs_root = tmp_path / "engines"
    # node-0: the engine's client files; node-1: the same engine, but a CA that did not sign it.
    good = Path(shutil.copytree(engine.certs.client_dir, certs_root / "node-0"))
    bad = engine.certs.write_client_dir(certs_root / "node-1", trusting=trustme.CA())
    secret = key_lines(good / "key.pem") + key_lines(bad / "key.pem")

    user = await sql.add_user()
    nodes = await sql.add_nodes([engine.tls_url, engine.tls_url])
    good_id = next(iter(nodes))
    daemon = daemons.start(
        FOG_DATABASE_URL=sql.url,
        FOG_ENGINE_CERTS_DIR=str(certs_root),
        # A bundle without the engine's CA: the node's own ca.pem must decide regardless.
        REQUESTS_CA_BUNDLE=requests.certs.where(),
    )
    try:
        await daemon.wait_event("controller_started")
        d = await sql.add_deployment(user, "over-tls", TEST_IMAGE, 2)

        async def converged() -> bool:
            live = await sql.live_replicas(d)
            assert [r["status"] for r in live] == ["running", "running"], live
            assert {r["node_id"] for r in live} == {good_id}
            seen = await asyncio.to_thread(managed_containers, [engine.url], d)
            assert sorted(s.id for s in seen if s.state == "running") == sorted(
                r["container_id"] for r in live
            )
            return True

        await daemon.until(converged, within=60, what="2 replicas running over TLS")
        (refused,) = await daemon.wait_event("node_probe_failed", node="node-1")
        assert "the engine's certificate was not accepted" in refused["error"]
        assert f"{bad}/ca.pem" in refused["error"]
        assert daemon.log().named("engine_tls", node="node-0")

        code, _ = await daemon.terminate(within=15)
        assert code == 0, daemon.tail()
    finally:
        daemon.close()
        await asyncio.to_thread(remove_managed_containers, [engine.url])

    daemon.assert_clean_log()
    output = daemon.output()
    assert "PRIVATE KEY" not in output
    leaked = [line for line in secret if line in output]
    assert not leaked, "key material in the daemon's output"
