"""What a create asks the engine for: the container's options and its host configuration.

The hardening every container gets (restart unless stopped, no new privileges, a pids
limit) and the limits of its resources, as docker-py's `create_container` and
`create_host_config` take them.
"""

from __future__ import annotations

from typing import Any

from docker.types import DeviceRequest

from controller.runtime import ContainerSpec
from controller.settings import Settings


def host_options(settings: Settings, spec: ContainerSpec, *, with_storage: bool) -> dict[str, Any]:
    """`create_host_config`'s arguments; the disk size limit only `with_storage`."""
    host: dict[str, Any] = {
        "restart_policy": {"Name": "unless-stopped"},
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "pids_limit": settings.pids_limit,
    }
    if settings.container_network:
        host["network_mode"] = settings.container_network
    res = spec.resources
    if res is not None:
        host["nano_cpus"] = int(res.cpu_cores * 1e9)
        host["mem_limit"] = f"{res.memory_mb}m"
        if res.gpu_units > 0:
            host["device_requests"] = [DeviceRequest(count=res.gpu_units, capabilities=[["gpu"]])]
        if with_storage and res.storage_gb > 0:
            host["storage_opt"] = {"size": f"{res.storage_gb}G"}
    return host


def container_options(spec: ContainerSpec) -> dict[str, Any]:
    """`create_container`'s arguments but the host configuration."""
    return {"image": spec.image, "name": spec.name, "labels": spec.labels, "detach": True}
