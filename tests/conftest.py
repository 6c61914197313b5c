"""Shared fixtures."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness.engines import URLS_ENV, Cluster, build_test_image, ensure_docker_installed

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    ensure_docker_installed()
    started = Cluster.start(3)
    # Cluster.start registers one too; this keeps the guarantee visible here: even if pytest is
    # interrupted past fixture teardown, no dockerd outlives the session.
    atexit.register(started.stop_all)
    try:
        with ThreadPoolExecutor(max_workers=len(started.engines)) as pool:
            for future in [pool.submit(build_test_image, e) for e in started.engines]:
                future.result()
        yield started
    finally:
        atexit.unregister(started.stop_all)
        started.stop_all()


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
def vfs_cluster() -> Iterator[Cluster]:
    """Three engines on the `vfs` storage driver (nested Docker, some edge boards): no
    copy-on-write, no disk quota on this machine's ext4, and no Backing Filesystem in
    `docker info`. Started only when a test asks."""
    if os.environ.get(URLS_ENV):
        pytest.skip(f"{URLS_ENV} is set: the harness cannot choose those engines' storage driver")
    ensure_docker_installed()
    started = Cluster.start(3, storage_driver="vfs")
    atexit.register(started.stop_all)
    try:
        with ThreadPoolExecutor(max_workers=len(started.engines)) as pool:
            for future in [pool.submit(build_test_image, e) for e in started.engines]:
                future.result()
        yield started
    finally:
        atexit.unregister(started.stop_all)
        started.stop_all()
