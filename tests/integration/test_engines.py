"""The harness's own guarantees, checked on real engines.

Every other docker test trusts that each engine runs the test image, that a stopped node is
really unreachable, and that a node coming back restores its ``unless-stopped`` containers
the way a rebooted fog node would. If these fail, nothing built on the harness means much.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Iterator
from contextlib import closing

import docker
import docker.errors
import pytest
import requests

from tests.harness.engines import TEST_IMAGE, TEST_LABEL, Cluster, Engine, wait_until

pytestmark = pytest.mark.docker

TIMEOUT = 30.0


def _status(client: docker.DockerClient, container_id: str) -> str | None:
    try:
        state: str = client.api.inspect_container(container_id)["State"]["Status"]
    except docker.errors.NotFound:
        return None
    return state


def _wait_status(client: docker.DockerClient, container_id: str, wanted: str | None) -> None:
    wait_until(
        lambda: _status(client, container_id) == wanted,
        TIMEOUT,
        f"container {container_id[:12]} to be {wanted or 'gone'}",
    )


def _run(engine: Engine, restart: str = "no") -> str:
    with closing(engine.client()) as client:
        container = client.api.create_container(
            TEST_IMAGE,
            name=f"harness-{uuid.uuid4().hex[:8]}",
            labels={TEST_LABEL: "1"},
            host_config=client.api.create_host_config(restart_policy={"Name": restart}),
        )
        container_id: str = container["Id"]
        client.api.start(container_id)
        return container_id


@pytest.fixture
def restores_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, put back as the session expects it even if the test fails half-way."""
    yield cluster
    cluster.ensure_running()
    cluster.remove_containers(TEST_LABEL)


def test_container_runs_and_is_removed_on_every_engine(cluster: Cluster) -> None:
    assert len(cluster.engines) == 3
    for engine in cluster.engines:
        container_id = _run(engine)
        with closing(engine.client()) as client:
            _wait_status(client, container_id, "running")
            client.api.remove_container(container_id, force=True)
            _wait_status(client, container_id, None)
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(container_id)


def test_engines_are_distinct_nodes(cluster: Cluster) -> None:
    ids = set()
    for engine in cluster.engines:
        with closing(engine.client()) as client:
            ids.add(client.info()["ID"])
    assert len(ids) == len(cluster.engines)


def test_stopped_engine_refuses_and_restores_unless_stopped(restores_cluster: Cluster) -> None:
    engine = restores_cluster.engines[-1]
    if engine.external:
        pytest.skip("external engines are never stopped")
    kept = _run(engine, restart="unless-stopped")
    dropped = _run(engine)

    engine.stop()

    assert not engine.is_running()
    with closing(engine.client()) as client, pytest.raises(requests.exceptions.ConnectionError):
        client.ping()
    # the other nodes do not notice
    for other in restores_cluster.engines[:-1]:
        assert other.is_running()

    engine.start()

    with closing(engine.client()) as client:
        _wait_status(client, kept, "running")
        assert _status(client, dropped) == "exited"
        exit_code = client.api.inspect_container(dropped)["State"]["ExitCode"]
        assert exit_code == 0, "the test image must exit cleanly on SIGTERM"


def test_killed_engine_loses_processes_and_restores_unless_stopped(
    restores_cluster: Cluster,
) -> None:
    engine = restores_cluster.engines[0]
    if engine.external:
        pytest.skip("external engines are never killed")
    kept = _run(engine, restart="unless-stopped")
    dropped = _run(engine)

    engine.kill()

    assert not engine.is_running()
    assert not engine._engine_pids(), "a power cut leaves no shim or container process"
    with closing(engine.client()) as client, pytest.raises(requests.exceptions.ConnectionError):
        client.ping()

    engine.start()

    with closing(engine.client()) as client:
        _wait_status(client, kept, "running")
        assert _status(client, dropped) == "exited"
        assert client.api.inspect_container(dropped)["State"]["ExitCode"] == 255


def test_a_tls_engine_answers_only_a_client_with_its_certificate(tls_cluster: Cluster) -> None:
    """The TLS tests' premise: the listener really checks client certificates (`--tlsverify`),
    so a refusal there is the engine's, and an answer proves the certificates work."""
    engine = tls_cluster.engines[0]
    assert engine.certs is not None
    assert engine.tls_port is not None
    assert engine.is_running()  # for a TLS engine: its unix socket and its TLS listener answer

    # Server verified, but no client certificate offered: the engine ends the handshake.
    context = ssl.create_default_context(cafile=str(engine.certs.client_dir / "ca.pem"))
    with pytest.raises(ssl.SSLError, match="certificate"):
        _tls_ping(context, engine.tls_port)


def _tls_ping(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        return tls.recv(4096)
