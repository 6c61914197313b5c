"""Remote engines over TLS, on a real dockerd started with `--tlsverify` and certificates the
harness made for this run (tests/harness/engines.py, `tls_cluster`).

What is pinned down: a `tcp://` node with its certificate directory runs containers through
the runtime and through a whole reconcile; without certificates it is refused with a reason
naming the node and the files, and never contacted (a counting relay in front of the engine
sees no connection); a CA that did not sign the engine's certificate, or a client certificate
the engine does not trust, fails with a readable reason; plain TCP only with the switch; a key
that goes missing makes the node not ready the normal heartbeat way, and back when it returns;
no key material ever reaches a log line.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests.certs
import trustme
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from controller import errors
from controller.events import EventWatcher
from controller.model import NodeRecord, NodeStatus
from controller.readmodel import NODES
from controller.runtime import ContainerSpec
from controller.runtime.docker import DockerRuntime, EngineConnector
from controller.settings import Settings
from tests.harness.engines import TEST_IMAGE, Cluster, Engine
from tests.harness.fleet import (
    Operator,
    converged,
    eventually,
    managed_containers,
    remove_managed_containers,
    running_controller,
    settings_for_tests,
)
from tests.harness.relay import Relay

pytestmark = pytest.mark.docker

NODE = "edge-tls"


@pytest.fixture
def tls_engine(tls_cluster: Cluster) -> Iterator[Engine]:
    tls_cluster.ensure_running()
    engine = tls_cluster.engines[0]
    try:
        yield engine
    finally:
        remove_managed_containers([engine.url])


@pytest.fixture
def certs_root(tmp_path: Path) -> Path:
    """FOG_ENGINE_CERTS_DIR for this test: one directory per node below it."""
    root = tmp_path / "engines"
    root.mkdir()
    return root


def install_certs(certs_root: Path, node: str, source: Path) -> Path:
    """What an operator does: copy the engine's client files into the node's directory."""
    return Path(shutil.copytree(source, certs_root / node))


def record(url: str, name: str = NODE) -> NodeRecord:
    return NodeRecord(uuid.uuid4(), name, url, NodeStatus.READY)


def spec() -> ContainerSpec:
    return ContainerSpec(uuid.uuid4(), uuid.uuid4(), TEST_IMAGE, None)


def key_lines(key_file: Path) -> list[str]:
    """The base64 body of a PEM key, line by line: what must never appear in a log."""
    lines = key_file.read_text().splitlines()
    body = [line for line in lines if line and not line.startswith("-----")]
    assert body, f"{key_file} holds no PEM body"
    return body


@asynccontextmanager
async def runtime(certs_root: Path, **overrides: Any) -> AsyncIterator[DockerRuntime]:
    settings = Settings(
        database_url="sqlite+aiosqlite:///unused.db",
        engine_certs_dir=str(certs_root),
        docker_timeout_seconds=10.0,
        **overrides,
    )
    created = DockerRuntime(settings)
    try:
        yield created
    finally:
        await created.close()


# --- the runtime ----------------------------------------------------------------------------


async def test_a_container_runs_on_a_tls_engine_through_the_runtime(
    tls_engine: Engine, certs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: requests lets REQUESTS_CA_BUNDLE replace a session's CA (psf/requests#3829);
    # set to a bundle that does not hold the engine's CA, it must change nothing.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    assert tls_engine.certs is not None
    install_certs(certs_root, NODE, tls_engine.certs.client_dir)
    node = record(tls_engine.tls_url)
    async with runtime(certs_root) as rt:
        info = await rt.info(node)
        assert info.server_version
        container = await rt.ensure(node, spec())
        view = await rt.list(node)
        assert view.complete, view.error
        assert [c.id for c in view.containers] == [container]
        # The harness, over the engine's own unix socket, sees the same container running.
        seen = managed_containers([tls_engine.url])
        assert [(s.id, s.state) for s in seen] == [(container, "running")]
        await rt.stop(node, container, 1)
    assert managed_containers([tls_engine.url]) == []


async def test_the_environment_cannot_widen_whom_a_node_trusts(
    tls_engine: Engine, certs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE naming the engine's CA must not rescue a node whose own ca.pem is
    another CA's: the node's directory alone says whom to trust."""
    assert tls_engine.certs is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_engine.certs.client_dir / "ca.pem"))
    tls_engine.certs.write_client_dir(certs_root / NODE, trusting=trustme.CA())
    async with runtime(certs_root) as rt:
        with pytest.raises(errors.PermanentError, match="certificate was not accepted"):
            await rt.info(record(tls_engine.tls_url))


async def test_without_certificates_a_tcp_engine_is_refused_and_never_contacted(
    tls_engine: Engine, certs_root: Path
) -> None:
    assert tls_engine.tls_port is not None
    assert tls_engine.certs is not None
    with Relay(("127.0.0.1", tls_engine.tls_port)) as relay:
        node = record(relay.url)
        async with runtime(certs_root) as rt:
            with pytest.raises(errors.PermanentError) as refused:
                await rt.info(node)
            reason = refused.value.reason
            assert f"node {NODE}: refusing plain TCP to {relay.url}" in reason
            assert f"{certs_root / NODE}/" in reason
            assert "ca.pem, cert.pem, key.pem" in reason
            view = await rt.list(node)
            assert not view.complete
            assert view.error == reason
            with pytest.raises(errors.PermanentError, match="refusing plain TCP"):
                await rt.ensure(node, spec())

            # The event stream is refused the same way, and keeps retrying quietly.
            with capture_logs() as logs:
                connector = EngineConnector(certs_root)
                async with EventWatcher(
                    lambda: [node], lambda *_: None, lambda _: None, connector=connector
                ):

                    async def stream_refused() -> bool:
                        lost = [e for e in list(logs) if e["event"] == "event_stream_lost"]
                        return any("refusing plain TCP" in e["error"] for e in lost)

                    await eventually(stream_refused, within=10)
            assert relay.accepted == 0, "a refused node was contacted"

            # The relay does relay: with the files in place the same node answers over TLS.
            install_certs(certs_root, NODE, tls_engine.certs.client_dir)
            assert (await rt.info(node)).server_version
        assert relay.accepted >= 1


@pytest.mark.parametrize(
    ("variant", "needles"),
    [
        pytest.param(
            "foreign-ca",
            ("the engine's certificate was not accepted", "unable to get local issuer", "ca.pem"),
            id="ca-did-not-sign-the-engine",
        ),
        pytest.param(
            "foreign-client",
            ("the engine refused our client certificate", "bad certificate", "cert.pem"),
            id="client-cert-of-another-ca",
        ),
        pytest.param(
            "expired-client",
            ("the engine refused our client certificate", "cert.pem", "still valid"),
            id="client-cert-expired",
        ),
        pytest.param(
            "garbage-key",
            ("cannot use the client certificate and key",),
            id="key-that-is-no-key",
        ),
    ],
)
async def test_a_tls_failure_is_permanent_with_a_readable_reason(
    tls_engine: Engine, certs_root: Path, variant: str, needles: tuple[str, ...]
) -> None:
    certs = tls_engine.certs
    assert certs is not None
    target = certs_root / NODE
    if variant == "foreign-ca":
        certs.write_client_dir(target, trusting=trustme.CA())
    elif variant == "foreign-client":
        certs.write_client_dir(target, signed_by=trustme.CA())
    elif variant == "expired-client":
        certs.write_client_dir(target, not_after=datetime.now(UTC) - timedelta(days=1))
    else:
        install_certs(certs_root, NODE, certs.client_dir)
        (target / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n")
    node = record(tls_engine.tls_url)
    async with runtime(certs_root) as rt:
        with pytest.raises(errors.PermanentError) as failed:
            await rt.info(node)
        reason = failed.value.reason
        assert reason.startswith("probe: TLS: "), reason
        for needle in needles:
            assert needle in reason, reason
        assert "bm90IGEga2V5" not in reason
        # A listing fails the same way, and says so instead of raising.
        view = await rt.list(node)
        assert not view.complete
        assert "TLS" in (view.error or "")


async def test_plain_tcp_only_with_the_switch_and_a_warning_once(
    cluster: Cluster, certs_root: Path
) -> None:
    engine = cluster.engines[0]
    cluster.ensure_running()
    with Relay(str(engine.socket_path)) as plain:  # a plain-TCP engine
        node = record(plain.url, name="plain")
        async with runtime(certs_root) as rt:
            with pytest.raises(errors.PermanentError, match="FOG_ENGINE_ALLOW_PLAINTEXT=true"):
                await rt.info(node)
        assert plain.accepted == 0
        with capture_logs() as logs:
            async with runtime(certs_root, engine_allow_plaintext=True) as rt:
                for _ in range(3):
                    assert (await rt.info(node)).server_version
                view = await rt.list(node)
                assert view.complete, view.error
        assert plain.accepted >= 1
    warnings = [e for e in logs if e["event"] == "engine_plaintext"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["node"] == "plain"
    assert warnings[0]["log_level"] == "warning"


# --- the controller -------------------------------------------------------------------------


async def _node_status(op: Operator, node_id: uuid.UUID) -> str:
    async with op.engine.connect() as conn:
        row = (await conn.execute(NODES.select().where(NODES.c.id == node_id))).one()
    return str(row.status)


async def test_a_reconcile_runs_replicas_on_a_tls_node_and_a_lost_key_makes_it_not_ready(
    pg_url: str, pg_engine: AsyncEngine, tls_engine: Engine, certs_root: Path
) -> None:
    """Also: a second node, on the same engine but without certificates, is reported once
    (`node_probe_failed`, with the refusal) and never contacted, and nothing is placed there."""
    assert tls_engine.certs is not None
    assert tls_engine.tls_port is not None
    op = Operator(pg_engine)
    node_id = await op.add_node(NODE, tls_engine.tls_url)
    user = await op.add_user()
    directory = install_certs(certs_root, NODE, tls_engine.certs.client_dir)
    key = directory / "key.pem"
    secret = key_lines(key)
    settings = replace(
        settings_for_tests(pg_url),
        engine_certs_dir=str(certs_root),
        node_heartbeat_seconds=0.3,
        node_grace_seconds=1.5,
    )

    async def status_is(wanted: str) -> bool:
        return await _node_status(op, node_id) == wanted

    with Relay(("127.0.0.1", tls_engine.tls_port)) as relay, capture_logs() as logs:
        bare_id = await op.add_node("edge-bare", relay.url)
        async with running_controller(settings) as controller:
            d = await op.add_deployment(user, "secure", replicas=2)
            await eventually(lambda: converged(op, [tls_engine.url], d, 2), within=60)

            # The key goes missing: the probes fail, the node goes not ready after the grace,
            # the controller carries on; the containers are left alone.
            saved = key.read_bytes()
            key.unlink()
            await eventually(lambda: status_is("not_ready"), within=20)

            # A few more resync passes (each after failed heartbeats) while it stays so.
            def passes() -> float:
                name = "fog_controller_resync_duration_seconds_count"
                return controller.metrics.registry.get_sample_value(name) or 0.0

            seen = passes()

            async def resynced_twice() -> bool:
                return passes() >= seen + 2

            await eventually(resynced_twice, within=20)
            assert await status_is("not_ready")
            assert len(managed_containers([tls_engine.url], d)) == 2

            key.write_bytes(saved)
            key.chmod(0o600)
            await eventually(lambda: status_is("ready"), within=20)
            await eventually(lambda: converged(op, [tls_engine.url], d, 2), within=30)

    not_ready = [e for e in logs if e["event"] == "node_not_ready"]
    assert not_ready, [e["event"] for e in logs]
    assert "key.pem missing" in not_ready[0]["reason"]

    assert relay.accepted == 0, "a node without certificates was contacted"
    assert await _node_status(op, bare_id) == "unknown"
    bare = [e for e in logs if e["event"] == "node_probe_failed" and e["node"] == "edge-bare"]
    assert len(bare) == 1, bare  # once, not on every heartbeat
    assert "refusing plain TCP" in bare[0]["error"]
    placed = {r["node_id"] for r in await op.replicas(d)}
    assert placed == {node_id}
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    text = repr(logs)
    leaked = [line for line in secret if line in text]
    assert not leaked, "key material in the log"
