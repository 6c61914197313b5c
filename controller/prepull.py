"""Pre-pull: a rollout's new image is on the nodes before any old replica there is stopped.

Without it a rolling update stops an old replica and only then finds, at the replacement's
create, that the image cannot be pulled (a typo, a revoked credential, a registry down) or
takes minutes to arrive: capacity is lost for nothing (nomad#6380). So the reconciler pulls
first, on the nodes `decide.prepull_nodes` names, in parallel and bounded, and stops old
replicas only once every pull succeeded. What was pulled is remembered per deployment as
(spec hash, node), so the passes of one rollout pull once per node; a new spec starts afresh.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import structlog

from controller import errors
from controller.model import Deployment, NodeRecord
from controller.runspec import RegistryAuth
from controller.runtime import Runtime

log = structlog.get_logger(__name__)

# Pulls in flight at once for one rollout (the runtime also bounds calls per node).
PREPULL_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class PullFailed:
    """A pre-pull that failed: the rollout halts with this reason."""

    reason: str
    transient: bool  # the engine did not answer (look again soon), not the registry


class PrePuller:
    """Pulls a deployment's image ahead of its rollout's stops, and remembers where."""

    def __init__(
        self,
        runtime: Runtime,
        records: Callable[[], Mapping[uuid.UUID, NodeRecord]],
        concurrency: int = PREPULL_CONCURRENCY,
    ) -> None:
        self._runtime = runtime
        self._records = records
        self._concurrency = concurrency
        # Per deployment: the spec hash pulled for, and the nodes that have it.
        self._pulled: dict[uuid.UUID, tuple[str, set[uuid.UUID]]] = {}

    def forget(self, deployment_id: uuid.UUID) -> None:
        self._pulled.pop(deployment_id, None)

    def pulled(self, d: Deployment) -> frozenset[uuid.UUID]:
        """The nodes known to hold `d`'s current image."""
        spec, nodes = self._pulled.get(d.id, ("", set()))
        return frozenset(nodes) if spec == d.spec_hash else frozenset()

    async def pull(
        self, d: Deployment, node_ids: Collection[uuid.UUID], auth: RegistryAuth | None
    ) -> PullFailed | None:
        """Have `d.image` on every node of `node_ids`; the first failure, or None."""
        done = set(self.pulled(d))
        todo = sorted(n for n in node_ids if n not in done)
        if not todo:
            return None
        started = time.monotonic()
        records = self._records()
        gate = asyncio.Semaphore(self._concurrency)

        async def one(node_id: uuid.UUID) -> PullFailed | None:
            record = records.get(node_id)
            if record is None:
                return PullFailed(f"node {node_id} is not registered", transient=True)
            async with gate:
                try:
                    await self._runtime.pull(record, d.image, auth)
                except errors.ControllerError as exc:
                    log.warning(
                        "prepull_failed", node=record.name, image=d.image, reason=exc.reason
                    )
                    transient = isinstance(exc, errors.TransientError)
                    return PullFailed(f"node {record.name}: {exc.reason}", transient)
            done.add(node_id)
            return None

        results = await asyncio.gather(*(one(n) for n in todo))
        self._pulled[d.id] = (d.spec_hash, done)
        failures = [r for r in results if r is not None]
        log.info(
            "prepull_done",
            image=d.image,
            nodes=len(todo),
            failed=len(failures),
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        return failures[0] if failures else None
