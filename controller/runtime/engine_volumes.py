"""A deployment's named volumes on a node: made before its containers, removed on request.

Each is named for the deployment and the spec's name (`create_request.volume_name`) and
carries our labels, so every replica of the deployment on that node mounts the same data and a
replacement finds what its predecessor wrote (data is node-local). An engine would make a
missing volume itself at create, without our labels; we make it first so that
`remove_volumes` finds it by label. A volume with our name but not our labels is a conflict,
never adopted, as for containers.
"""

from __future__ import annotations

import uuid
from typing import Any

import docker.errors
import structlog

from controller import errors
from controller.model import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY_VALUE, NodeRecord
from controller.runtime import ContainerSpec
from controller.runtime.create_request import volume_labels, volume_name
from controller.runtime.engine_calls import EngineCalls

log = structlog.get_logger("controller.runtime.docker")


class VolumeCalls(EngineCalls):
    """Named volumes, for `ensure` (`_ensure_volumes`) and the port's `remove_volumes`."""

    async def _ensure_volumes(self, node: NodeRecord, spec: ContainerSpec) -> None:
        for name in spec.run.named_volumes():
            await self._ensure_volume(node, spec.deployment_id, name)

    async def _ensure_volume(self, node: NodeRecord, deployment_id: uuid.UUID, name: str) -> None:
        """Create, or find: dockerd 20.10 and Podman 4.3 both answer a create of a name that
        exists with that volume as it is (labels and all), so one call makes it or finds it,
        also when replicas of the deployment are created on the node at once."""
        engine_name = volume_name(deployment_id, name)
        found: dict[str, Any] = await self._call(
            node,
            "create volume",
            self._client(node).create_volume,
            engine_name,
            labels=volume_labels(deployment_id, name),
        )
        labels = found.get("Labels") or {}
        owner = (labels.get(LABEL_MANAGED_BY), labels.get(LABEL_DEPLOYMENT))
        if owner != (MANAGED_BY_VALUE, str(deployment_id)):
            raise errors.ConflictError(
                f"a volume named {engine_name} exists without our labels; not mounting it"
            )

    async def remove_volumes(self, node: NodeRecord, deployment_id: uuid.UUID) -> int:
        client = self._client(node)
        filters = {
            "label": [
                f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}",
                f"{LABEL_DEPLOYMENT}={deployment_id}",
            ]
        }
        listed = await self._call(node, "list volumes", client.volumes, filters=filters)
        names = sorted(str(v["Name"]) for v in (listed or {}).get("Volumes") or ())
        removed = 0
        refused: list[str] = []
        for name in names:
            try:
                await self._call(node, "remove volume", client.remove_volume, name)
            except docker.errors.NotFound:
                continue  # gone meanwhile: not ours to count
            except errors.ControllerError as exc:
                refused.append(exc.reason)  # in use, say: the engine's words
                continue
            removed += 1
            log.info("volume_removed", node=node.name, volume=name)
        if refused:
            raise errors.PermanentError(
                f"{removed} of {len(names)} volumes removed on {node.name}; " + "; ".join(refused)
            )
        return removed
