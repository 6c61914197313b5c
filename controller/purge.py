"""Removing a deleted deployment's named volumes from every node, when an operator asked.

Named volumes survive replica replacement, so data outlives a container; they go only when
the deployment is deleted with `fogctl delete --purge-volumes`. The resync pass runs this
after its stray removal: each ready node is asked to remove the deployment's volumes, and the
request is marked done (`volumes_purged`) once every registered node has answered. A node
that is down keeps it pending and is asked on a later pass; a node that never comes back
keeps it pending until the operator deletes that node (`fogctl node delete`): its volumes
are on its disk, and only the operator knows whether that disk is gone. Which nodes already
answered is kept in memory, so a node is asked once per deployment (a new leader asks again,
which is harmless: a removal of what is gone removes nothing).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from controller import errors
from controller.model import NodeRecord, NodeStatus
from controller.ports import PurgeStore
from controller.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Purged:
    """What one pass did: deployments finished, volumes removed, deployments still pending."""

    deployments: int = 0
    volumes: int = 0
    pending: int = 0


class VolumePurge:
    """The purge requests, and which nodes have answered each."""

    def __init__(
        self,
        store: PurgeStore,
        runtime: Runtime,
        records: Callable[[], Mapping[uuid.UUID, NodeRecord]],
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._records = records
        self._answered: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._waiting: dict[uuid.UUID, list[str]] = {}  # as last logged, per deployment

    async def run(self) -> Purged:
        """One pass over the deployments whose volumes are to be purged."""
        wanted = await self._store.deployments_to_purge()
        self._answered = {d: self._answered.get(d, set()) for d in wanted}
        if not wanted:
            return Purged()
        records = self._records()
        counts = await asyncio.gather(*(self._purge(d, records) for d in wanted))
        finished = 0
        for deployment_id in wanted:
            answered = self._answered[deployment_id]
            waiting = [r.name for r in records.values() if r.id not in answered]
            if waiting:
                if self._waiting.get(deployment_id) != waiting:
                    log.info(
                        "volume_purge_pending", deployment_id=str(deployment_id), nodes=waiting
                    )
                    self._waiting[deployment_id] = waiting
                continue
            self._waiting.pop(deployment_id, None)
            await self._store.volumes_purged(deployment_id)
            del self._answered[deployment_id]
            finished += 1
            log.info("volumes_purged", deployment_id=str(deployment_id), nodes=len(records))
        return Purged(finished, sum(counts), len(wanted) - finished)

    async def _purge(
        self, deployment_id: uuid.UUID, records: Mapping[uuid.UUID, NodeRecord]
    ) -> int:
        """Ask each ready node not asked yet; how many volumes went."""
        answered = self._answered[deployment_id]
        ready = [
            r for r in records.values() if r.status is NodeStatus.READY and r.id not in answered
        ]
        removed = await asyncio.gather(*(self._remove(deployment_id, r) for r in ready))
        total = 0
        for record, count in zip(ready, removed, strict=True):
            if count is not None:
                answered.add(record.id)
                total += count
        return total

    async def _remove(self, deployment_id: uuid.UUID, record: NodeRecord) -> int | None:
        try:
            count = await self._runtime.remove_volumes(record, deployment_id)
        except errors.ControllerError as exc:
            log.warning(
                "volume_purge_failed",
                deployment_id=str(deployment_id),
                node=record.name,
                reason=exc.reason,
            )
            return None
        if count:
            log.info(
                "volumes_removed",
                deployment_id=str(deployment_id),
                node=record.name,
                volumes=count,
            )
        return count
