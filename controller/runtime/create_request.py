"""What a create asks the engine for: the container's options and its host configuration.

The hardening every container gets (restart unless stopped, no new privileges, a pids
limit), the limits of its resources, and the deployment's run spec (controller.runspec:
entrypoint, command, env, network, ports, mounts, stop grace, healthcheck), as docker-py's
`create_container` and `create_host_config` take them. Pure: no engine is asked here, so
every option is unit-tested without one.

Named volumes are the deployment's on each node, not the replica's: `volume_name` derives
the engine's name from the deployment id and the spec's name, so a replacement replica on the
same node mounts the data its predecessor wrote.
"""

from __future__ import annotations

import uuid
from typing import Any

from docker.types import DeviceRequest, Healthcheck, Mount

from controller.model import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY_VALUE
from controller.runspec import HealthSpec, RunSpec
from controller.runtime import ContainerSpec
from controller.settings import Settings

# The spec's name of a named volume, on the engine's volume (its full name is longer).
LABEL_VOLUME = "fog.volume"
# Networks on which a container holds no port of its own: host binds the node's ports itself,
# none has no interface to publish on.
_UNPUBLISHED_NETWORKS = ("host", "none")
NANOSECONDS_PER_SECOND = 1_000_000_000


def volume_name(deployment_id: uuid.UUID, name: str) -> str:
    """The engine's name of the deployment's named volume `name` (the same on every node)."""
    return f"fog-{deployment_id}-{name}"


def volume_labels(deployment_id: uuid.UUID, name: str) -> dict[str, str]:
    """Our labels on a named volume: whose it is, and under which name the spec knows it."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY_VALUE,
        LABEL_DEPLOYMENT: str(deployment_id),
        LABEL_VOLUME: name,
    }


def network_mode(settings: Settings, run: RunSpec) -> str:
    """The deployment's network, else the controller's (FOG_CONTAINER_NETWORK); "" leaves the
    engine's default."""
    return run.network or settings.container_network


def host_options(settings: Settings, spec: ContainerSpec, *, with_storage: bool) -> dict[str, Any]:
    """`create_host_config`'s arguments; the disk size limit only `with_storage`."""
    host: dict[str, Any] = {
        "restart_policy": {"Name": "unless-stopped"},
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "pids_limit": settings.pids_limit,
    }
    network = network_mode(settings, spec.run)
    if network:
        host["network_mode"] = network
    res = spec.resources
    if res is not None:
        host["nano_cpus"] = int(res.cpu_cores * 1e9)
        host["mem_limit"] = f"{res.memory_mb}m"
        if res.gpu_units > 0:
            host["device_requests"] = [DeviceRequest(count=res.gpu_units, capabilities=[["gpu"]])]
        if with_storage and res.storage_gb > 0:
            host["storage_opt"] = {"size": f"{res.storage_gb}G"}
    bindings = port_bindings(network, spec.run)
    if bindings:
        host["port_bindings"] = bindings
    mounts = _mounts(spec.deployment_id, spec.run)
    if mounts:
        host["mounts"] = mounts
    return host


def container_options(settings: Settings, spec: ContainerSpec) -> dict[str, Any]:
    """`create_container`'s arguments but the host configuration."""
    run = spec.run
    options: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "labels": spec.labels,
        "detach": True,
    }
    if run.entrypoint is not None:
        options["entrypoint"] = list(run.entrypoint)
    if run.command is not None:
        options["command"] = list(run.command)
    if run.env:
        options["environment"] = [f"{key}={value}" for key, value in run.env]
    if port_bindings(network_mode(settings, run), run):
        # Published ports must be exposed too, or the engine has nothing to bind them to.
        options["ports"] = sorted({(p.container_port, p.protocol) for p in run.ports})
    if run.stop_grace_seconds is not None:
        options["stop_timeout"] = run.stop_grace_seconds
    if run.healthcheck is not None:
        options["healthcheck"] = healthcheck(run.healthcheck)
    return options


def port_bindings(network: str, run: RunSpec) -> dict[str, list[int | None]]:
    """`create_host_config(port_bindings=...)`: each `port/protocol` with the host ports it
    is published on (None: one the engine picks). Nothing on the host network (the container
    binds the node's ports itself) or on none."""
    if network in _UNPUBLISHED_NETWORKS:
        return {}
    bindings: dict[str, list[int | None]] = {}
    for port in run.ports:
        bindings.setdefault(f"{port.container_port}/{port.protocol}", []).append(port.host_port)
    return bindings


def _mounts(deployment_id: uuid.UUID, run: RunSpec) -> list[Mount]:
    mounts = []
    for volume in run.volumes:
        if volume.name is not None:
            source = volume_name(deployment_id, volume.name)
            mounts.append(Mount(volume.mount_path, source, "volume", volume.read_only))
        elif volume.host_path is not None:
            mounts.append(Mount(volume.mount_path, volume.host_path, "bind", volume.read_only))
        # neither: the schema refuses such a row; there is nothing to mount
    return mounts


def healthcheck(health: HealthSpec) -> Healthcheck:
    """Docker's HEALTHCHECK, durations in nanoseconds; a None field keeps the engine's
    default (the field is left out)."""
    fields: dict[str, Any] = {"test": list(health.command)}
    for key, seconds in (
        ("interval", health.interval_seconds),
        ("timeout", health.timeout_seconds),
        ("start_period", health.start_period_seconds),
    ):
        if seconds is not None:
            fields[key] = int(seconds * NANOSECONDS_PER_SECOND)
    if health.retries is not None:
        fields["retries"] = health.retries
    check = Healthcheck(**fields)
    for key in [key for key, value in check.items() if value is None]:
        del check[key]  # Healthcheck writes every key; a null would also mean "default"
    return check
