"""A Linux bridge the harness owns, and a dockerd that puts its containers on it.

Why: the session's engines run with ``--bridge=none`` (no host network state), so a port a
container publishes goes nowhere. Published ports need an engine with a bridge; rather than
touch ``docker0`` or the host's iptables, the harness makes a bridge of its own with ``ip``
(a name and a 10.213.x.0/24 subnet no interface or route of the machine uses), hands it to
one dockerd (``--bridge``), and removes it at teardown. That engine keeps ``--iptables=false``:
docker-proxy forwards each published port from 127.0.0.1 (``--ip``) to the container's
address on the bridge, so a test connects to 127.0.0.1 only, and docker-proxy to an address
of this bridge only.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import random
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.engines import (
    Cluster,
    Engine,
    build_test_image,
    ensure_docker_installed,
    install_packages,
    which,
)

__all__ = ["HostBridge", "bridged_cluster"]

_SUBNETS = ipaddress.ip_network("10.213.0.0/16")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    if which("ip") is None:  # a minimal image may lack it; docker.io does not pull it in
        install_packages(["iproute2"])
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine has an address or a route in."""
    found = []
    words = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    for word in words.split():
        with contextlib.suppress(ValueError):
            if "/" in word:
                found.append(ipaddress.ip_network(word, strict=False))
    return [n for n in found if isinstance(n, ipaddress.IPv4Network)]


@dataclass(frozen=True)
class HostBridge:
    """A bridge made by the harness: ``name`` (15 bytes at most, as the kernel allows) with
    ``gateway`` (the host's address on it) in ``subnet``."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.subnet.hosts())

    @classmethod
    def create(cls) -> HostBridge:
        used = _networks_in_use()
        free = [s for s in _SUBNETS.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)]
        if not free:
            raise RuntimeError(f"no free /24 in {_SUBNETS} for a test bridge")
        bridge = cls(name=f"fogbr{secrets.token_hex(4)}", subnet=random.choice(free))
        steps = (
            ("link", "add", bridge.name, "type", "bridge"),
            ("addr", "add", f"{bridge.gateway}/{bridge.subnet.prefixlen}", "dev", bridge.name),
            ("link", "set", bridge.name, "up"),
        )
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                bridge.remove()
                raise RuntimeError(f"ip {' '.join(step)} failed: {done.stderr.strip()}")
        return bridge

    def remove(self) -> None:
        """Delete the bridge (a no-op when it is gone)."""
        _ip("link", "del", self.name)

    def exists(self) -> bool:
        return _ip("link", "show", self.name).returncode == 0


@contextlib.contextmanager
def bridged_cluster(name: str = "fog-bridged-0") -> Iterator[tuple[Cluster, HostBridge]]:
    """One dockerd whose containers sit on a bridge made for it, with the test image; the
    engine is stopped, its directory and the bridge removed, on exit."""
    ensure_docker_installed()
    bridge = HostBridge.create()
    atexit.register(bridge.remove)  # even if the session is cut short past its teardown
    try:
        base = Path(tempfile.mkdtemp(prefix="fogtest-bridge-", dir="/tmp"))
        engine = Engine.in_dir(name, base, bridge=bridge.name)
        cluster = Cluster(engines=[engine], base_dir=base, owns_base_dir=True)
        try:
            engine.start()
            build_test_image(engine)
            yield cluster, bridge
        finally:
            cluster.stop_all()
    finally:
        atexit.unregister(bridge.remove)
        bridge.remove()
