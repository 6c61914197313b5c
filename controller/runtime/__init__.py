"""The runtime port: what the reconciler needs from a container engine, whatever the engine.

`runtime.docker` implements it against real Docker engines; `runtime.hollow` (benchmarks only)
implements it in memory. The reconciler depends on this Protocol, never on docker-py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from controller.model import (
    LABEL_DEPLOYMENT,
    LABEL_EPOCH,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_SPEC,
    LABEL_STORAGE_GB,
    MANAGED_BY_VALUE,
    EngineInfo,
    NodeRecord,
    NodeView,
    Resources,
    container_name,
)
from controller.runspec import EMPTY_RUN, RegistryAuth, RunSpec
from controller.storage import DiskUse


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    replica_id: uuid.UUID
    deployment_id: uuid.UUID
    image: str
    resources: Resources | None
    spec_hash: str = ""
    epoch: int | None = None
    run: RunSpec = EMPTY_RUN
    auth: RegistryAuth | None = None  # the image pull secret, decrypted

    @property
    def name(self) -> str:
        return container_name(self.replica_id)

    @property
    def labels(self) -> dict[str, str]:
        # The operator's labels first: ours (all under `fog.`) win, though the database and
        # the schemas already refuse an operator's `fog.` key.
        labels = dict(self.run.labels)
        labels |= {
            LABEL_MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_DEPLOYMENT: str(self.deployment_id),
            LABEL_REPLICA: str(self.replica_id),
        }
        if self.spec_hash:
            labels[LABEL_SPEC] = self.spec_hash
        if self.epoch is not None:
            labels[LABEL_EPOCH] = str(self.epoch)
        if self.resources is not None and self.resources.storage_gb > 0:
            labels[LABEL_STORAGE_GB] = str(self.resources.storage_gb)
        return labels


class Runtime(Protocol):
    async def info(self, node: NodeRecord) -> EngineInfo:
        """Probe the engine; raises errors.TransientError when it cannot be reached."""

    async def list(self, node: NodeRecord, deployment_id: uuid.UUID | None = None) -> NodeView:
        """Our containers on `node` (only `deployment_id`'s when given: a reconcile needs no
        other, and the engine filters them out cheaper than we do); never raises: a failed
        listing is `complete=False`."""

    async def ensure(self, node: NodeRecord, spec: ContainerSpec) -> str:
        """Create (or find by name) and start the replica's container; returns its id."""

    async def stop(self, node: NodeRecord, container: str, timeout_seconds: float) -> None:
        """Stop gracefully and remove; a container already gone is success."""

    async def pull(self, node: NodeRecord, image: str, auth: RegistryAuth | None) -> None:
        """Have `image` on `node` (a pull, with `auth` when given); the rollout's pre-pull.
        A tag other than `latest` (or a digest) the node already holds is not pulled again.
        Raises errors.PermanentError naming the registry's answer: unauthorized, not found
        or unreachable, three different reasons; errors.TransientError when the engine
        itself does not answer."""

    async def host_ports(self, node: NodeRecord) -> frozenset[tuple[int, str]] | None:
        """Node ports (port, protocol) held by running containers that are not ours; None
        when the node could not be listed."""

    async def remove_volumes(self, node: NodeRecord, deployment_id: uuid.UUID) -> int:
        """Remove the named volumes made for `deployment_id` on `node`; how many went. One
        still in use stays, and errors.PermanentError says so in the engine's words (after
        the others are removed)."""

    async def disk_usage(self, node: NodeRecord) -> tuple[DiskUse, ...] | None:
        """Bytes written by each of our running containers on `node` (one listing); None
        when the node could not be listed. For the storage monitor, never on a hot path:
        the engine walks every container's writable layer to answer."""

    async def close(self) -> None: ...
