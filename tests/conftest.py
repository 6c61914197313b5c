"""Shared fixtures."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness.bridge import HostBridge, bridged_cluster
from tests.harness.engines import (
    DEFAULT_ENGINE_KIND,
    ENGINE_KINDS,
    URLS_ENV,
    Cluster,
    build_test_image,
    ensure_docker_installed,
)
from tests.harness.registry import Registry

# --- docker engines ---
# Three real engines for the whole session: starting them costs about a second, but a test
# that stops or kills one must bring it back (``cluster.ensure_running()``) and every test must
# remove the containers it made, since the next test sees the same engines.


# docker SDK 7.x leaks the socket when connecting to a stopped engine fails
# (docker/transport/unixconn.py: UnixHTTPConnection.connect never closes it), and with
# filterwarnings=error the ResourceWarning fails whichever test happens to run the GC. Only an
# unconnected unix socket matches (no ``raddr``), so an unclosed client still fails its test.
_SDK_CONNECT_LEAK = (
    "ignore:Exception ignored in. <socket.socket fd=[0-9]+, family=1, type=1, proto=0>"
    ":pytest.PytestUnraisableExceptionWarning"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", _SDK_CONNECT_LEAK)


class KindClusters:
    """One cluster of three engines per engine kind (tests.harness.engines.ENGINE_KINDS), each
    started when a test first asks for it and kept for the session: a session that runs no
    core case on Podman starts no Podman."""

    def __init__(self) -> None:
        self._started: dict[str, Cluster] = {}

    def get(self, kind: str) -> Cluster:
        found = self._started.get(kind)
        if found is not None:
            return found
        if kind != DEFAULT_ENGINE_KIND and os.environ.get(URLS_ENV):
            pytest.skip(f"{URLS_ENV} is set: the harness starts no {kind} engines beside those")
        started = ENGINE_KINDS[kind].start(3)
        # Cluster.start registers one too; this keeps the guarantee visible here: even if
        # pytest is interrupted past fixture teardown, no engine outlives the session.
        atexit.register(started.stop_all)
        try:
            with ThreadPoolExecutor(max_workers=len(started.engines)) as pool:
                for future in [pool.submit(build_test_image, e) for e in started.engines]:
                    future.result()
        except BaseException:
            started.stop_all()
            raise
        self._started[kind] = started
        return started

    def stop_all(self) -> None:
        for started in self._started.values():
            atexit.unregister(started.stop_all)
            started.stop_all()
        self._started.clear()


@pytest.fixture(scope="session")
def kind_clusters() -> Iterator[KindClusters]:
    clusters = KindClusters()
    try:
        yield clusters
    finally:
        clusters.stop_all()


@pytest.fixture(scope="session")
def cluster(kind_clusters: KindClusters) -> Cluster:
    """The session's Docker engines (overlay2): what every test but the core cases runs on."""
    return kind_clusters.get(DEFAULT_ENGINE_KIND)


@pytest.fixture
def engine_kind() -> str:
    """The kind of engine a test runs on; the core cases parametrise it
    (tests/integration/kinds.py), every other test gets the default."""
    return DEFAULT_ENGINE_KIND


@pytest.fixture
def kind_cluster(engine_kind: str, kind_clusters: KindClusters) -> Cluster:
    """Three engines of ``engine_kind``."""
    started = kind_clusters.get(engine_kind)
    started.ensure_running()
    return started


@pytest.fixture
def kind_settings(engine_kind: str) -> dict[str, Any]:
    """Controller settings this kind of engine needs (``settings_for_tests(url, **these)``)."""
    network = ENGINE_KINDS[engine_kind].container_network
    return {"container_network": network} if network else {}


@pytest.fixture(scope="session")
def engine_urls(cluster: Cluster) -> list[str]:
    return list(cluster.urls)


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[Cluster]:
    """One engine that also listens on TLS-protected TCP (``Engine.tls_url``, certificates
    made for this run in ``Engine.certs``); its unix socket serves the harness's bookkeeping.
    Started only when a test asks: most sessions need no fourth engine."""
    if os.environ.get(URLS_ENV):
        pytest.skip(f"{URLS_ENV} is set: the harness holds no certificates for those engines")
    ensure_docker_installed()
    started = Cluster.start(1, tls=True)
    atexit.register(started.stop_all)
    try:
        build_test_image(started.engines[0])
        yield started
    finally:
        atexit.unregister(started.stop_all)
        started.stop_all()


@pytest.fixture(scope="session")
def vfs_cluster(kind_clusters: KindClusters) -> Cluster:
    """Three engines on the `vfs` storage driver (nested Docker, some edge boards): no
    copy-on-write, no disk quota on this machine's ext4, and no Backing Filesystem in
    `docker info`. The same engines the core cases run on as kind ``docker-vfs``."""
    started = kind_clusters.get("docker-vfs")
    started.ensure_running()
    return started


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A private registry (Debian's docker-registry, htpasswd auth) on 127.0.0.1 for the
    session; tests push what they pull (``Registry.push_test_image``)."""
    started = Registry.start_new()
    atexit.register(started.close)
    try:
        yield started
    finally:
        atexit.unregister(started.close)
        started.close()


@pytest.fixture(scope="session")
def bridged() -> Iterator[tuple[Cluster, HostBridge]]:
    """One dockerd on a bridge the harness made (published ports answer on 127.0.0.1);
    started only when a test asks, stopped and the bridge removed at the session's end."""
    if os.environ.get(URLS_ENV):
        pytest.skip(f"{URLS_ENV} is set: the harness starts no engine beside those")
    with bridged_cluster() as started:
        yield started
