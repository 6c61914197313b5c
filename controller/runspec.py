"""PURE: how a deployment's containers run, beyond image and resources (issue 14).

The store turns the spec rows (`deployment_specs`, `deployment_env`, `deployment_labels`,
`deployment_ports`, `deployment_volumes`) into one `RunSpec`; the planner hashes it into the
replica's spec, the scheduler reads its host ports, the runtime turns it into a create request.
Everything is a sorted tuple, so two loads of the same rows give equal values and equal hashes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

NETWORKS = ("host", "bridge", "none")
PROTOCOLS = ("tcp", "udp")
# Label keys under this prefix are the controller's own (model.LABEL_*): never an operator's.
RESERVED_LABEL_PREFIX = "fog."


@dataclass(frozen=True, slots=True, order=True)
class PortSpec:
    """A port the container serves. On a bridge network `host_port` publishes it on the node
    (None: the engine picks one, nothing reserved); on the host network the container binds
    the node's port itself, so `container_port` is the host port it holds."""

    container_port: int
    host_port: int | None = None
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True, order=True)
class VolumeSpec:
    """A mount: a named volume on the node (`name`) or a directory of the node (`host_path`)."""

    mount_path: str
    name: str | None = None
    host_path: str | None = None
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """Docker's HEALTHCHECK: `command` as the engine takes it (`["CMD-SHELL", "..."]`,
    `["CMD", ...]` or `["NONE"]`); None durations and retries keep the engine's defaults."""

    command: tuple[str, ...]
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    retries: int | None = None
    start_period_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RunSpec:
    """The rest of the spec. The defaults are "as the image says": a deployment that sets
    nothing has `EMPTY_RUN`, whose hash contribution is nothing (replicas started before this
    spec existed keep their hash, and no upgrade restarts a fleet)."""

    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()  # sorted by name
    network: str | None = None  # None: the node's default (Settings.container_network)
    ports: tuple[PortSpec, ...] = ()  # sorted
    volumes: tuple[VolumeSpec, ...] = ()  # sorted by mount path
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    stop_grace_seconds: int | None = None  # None: the controller's FOG_STOP_TIMEOUT_SECONDS
    healthcheck: HealthSpec | None = None
    image_pull_secret: str | None = None  # a registry credential of the deployment's user
    _canonical: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_canonical", _canonical(self))

    @property
    def canonical(self) -> str:
        """The spec as sorted JSON ("" when empty): what the replica's spec hash covers."""
        return self._canonical

    def host_ports(self) -> frozenset[tuple[int, str]]:
        """The node ports one replica holds: (port, protocol)."""
        if self.network == "host":
            return frozenset((p.container_port, p.protocol) for p in self.ports)
        if self.network == "none":
            return frozenset()
        return frozenset((p.host_port, p.protocol) for p in self.ports if p.host_port)

    def named_volumes(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.volumes if v.name is not None)


def _canonical(spec: RunSpec) -> str:
    data: dict[str, Any] = {}
    if spec.entrypoint is not None:
        data["entrypoint"] = list(spec.entrypoint)
    if spec.command is not None:
        data["command"] = list(spec.command)
    if spec.env:
        data["env"] = [list(kv) for kv in spec.env]
    if spec.network is not None:
        data["network"] = spec.network
    if spec.ports:
        data["ports"] = [[p.container_port, p.host_port, p.protocol] for p in spec.ports]
    if spec.volumes:
        data["volumes"] = [[v.mount_path, v.name, v.host_path, v.read_only] for v in spec.volumes]
    if spec.labels:
        data["labels"] = [list(kv) for kv in spec.labels]
    if spec.stop_grace_seconds is not None:
        data["stop_grace_seconds"] = spec.stop_grace_seconds
    if spec.healthcheck is not None:
        h = spec.healthcheck
        data["healthcheck"] = [
            list(h.command),
            h.interval_seconds,
            h.timeout_seconds,
            h.retries,
            h.start_period_seconds,
        ]
    if spec.image_pull_secret is not None:
        data["image_pull_secret"] = spec.image_pull_secret
    return json.dumps(data, sort_keys=True, separators=(",", ":")) if data else ""


EMPTY_RUN = RunSpec()


def host_path_refusal(spec: RunSpec, allowed: tuple[str, ...]) -> str | None:
    """Why a host-path volume may not be mounted, or None. A bind mount hands the container
    the node's files (a bind of `/` is root on the node), so only directories the operator
    allowed (FOG_ALLOWED_HOST_PATHS) may be mounted, and by default none."""
    for volume in spec.volumes:
        if volume.host_path is None:
            continue
        path = PurePosixPath(volume.host_path)
        if ".." in path.parts or not path.is_absolute():
            return f"host path {volume.host_path} must be absolute, without '..'"
        if not any(path == PurePosixPath(a) or PurePosixPath(a) in path.parents for a in allowed):
            where = ", ".join(allowed) if allowed else "none allowed"
            return f"host path {volume.host_path} is not under FOG_ALLOWED_HOST_PATHS ({where})"
    return None


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """A decrypted registry credential, for one pull. The password is never in a repr, so a
    log line or a traceback that shows this value does not show it."""

    registry: str
    username: str
    password: str = field(repr=False)
