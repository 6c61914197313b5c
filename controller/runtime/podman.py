"""Which engine serves the Docker API on a node, and where Podman answers differently.

Keyed on what the engine says it is (`/version`), never on error text. Pure: the runtime
asks, these decide.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from controller.runtime import ContainerSpec

# The component Podman lists in `/version` (Podman 4.3: "Podman Engine", "Conmon", "OCI Runtime
# (runc)"; dockerd 20.10: "Engine", "containerd", "runc", "docker-init").
PODMAN_COMPONENT = "Podman Engine"


# The health states the controller acts on, asked of Podman's listing one filter at a time.
PODMAN_HEALTH_STATES = ("starting", "unhealthy")


class EngineFlavour(StrEnum):
    """Which engine serves the Docker API on a node. Measured differences of Podman 4.3 from
    dockerd 20.10 that the controller handles:
    - a name already taken is HTTP 500, not 409 (`_create` asks the engine for the name);
    - GPU device requests are accepted and ignored: the container starts without its GPU
      (`unsupported_request` refuses them);
    - events carry Podman's own names in filters (`died`, `remove`: controller/events.py);
    - a failed pull answers 200 with the error in the progress stream (`pull_failure`, read
      on every engine);
    - the listing's `Status` carries no health (`_podman_health` asks its `health` filter).
    """

    DOCKER = "docker"
    PODMAN = "podman"


def engine_flavour(version: Mapping[str, Any]) -> EngineFlavour:
    """PURE: the engine that answered `GET /version`; anything not naming Podman is Docker."""
    components = version.get("Components")
    if isinstance(components, list):
        for component in components:
            if isinstance(component, Mapping) and component.get("Name") == PODMAN_COMPONENT:
                return EngineFlavour.PODMAN
    return EngineFlavour.DOCKER


def unsupported_request(flavour: EngineFlavour, spec: ContainerSpec) -> str | None:
    """PURE: why `spec` cannot run as asked on this kind of engine, or None if it can."""
    if flavour is EngineFlavour.PODMAN and spec.resources and spec.resources.gpu_units > 0:
        return (
            f"GPU request ({spec.resources.gpu_units} units) on a Podman node: Podman's Docker "
            "API ignores GPU device requests, so the container would start without its GPU"
        )
    return None


def pull_failure(output: object) -> str | None:
    """PURE: the error a pull reported inside its progress stream (concatenated JSON objects),
    or None. Podman answers a failed pull this way with HTTP 200."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    if not isinstance(output, str):
        return None
    decoder = json.JSONDecoder()
    index = 0
    while index < len(output):
        while index < len(output) and output[index].isspace():
            index += 1
        if index >= len(output):
            break
        try:
            item, index = decoder.raw_decode(output, index)
        except ValueError:
            return None
        if isinstance(item, Mapping):
            detail = item.get("errorDetail")
            message = detail.get("message") if isinstance(detail, Mapping) else None
            message = message or item.get("error")
            if message:
                return str(message)
    return None
