"""What each engine said of its storage, and whether it can cap a container's disk.

Kept per engine URL: `docker info`'s driver facts and the conclusion drawn from them
(controller.storage), and engines that refused a size limit their driver should take (xfs
without pquota, which `docker info` does not show) and accepted the same create without it.
A refusal is forgotten when the engine restarts or its facts change, so a node remounted
with pquota is tried again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from controller.model import NodeRecord
from controller.storage import StorageLimits, storage_limits

log = structlog.get_logger("controller.runtime.docker")


class EngineStorage:
    """The storage facts and limits of every engine the runtime has probed."""

    def __init__(self) -> None:
        # Per engine URL: driver, driver status, ID and version as `docker info` said.
        self._engine_facts: dict[str, tuple[object, ...]] = {}
        self._limits: dict[str, StorageLimits] = {}
        self._size_refused: dict[str, str] = {}
        self._unreachable: set[str] = set()

    def unreachable(self, url: str) -> None:
        """A probe failed: when the engine answers again, it has restarted."""
        self._unreachable.add(url)

    def probed(self, node: NodeRecord, raw: Mapping[str, Any]) -> tuple[str, str, StorageLimits]:
        """Take a `docker info` answer: the driver, the server version and the node's limits."""
        url = node.docker_url
        driver = str(raw.get("Driver") or "")
        status = tuple(tuple(str(x) for x in row) for row in raw.get("DriverStatus") or ())
        version = str(raw.get("ServerVersion") or "")
        facts = (raw.get("ID"), driver, status, version)
        # An engine that went away and came back has restarted (or was restarted): what it
        # refused before is tried again, as is everything after a change of its facts.
        if url in self._unreachable or self._engine_facts.get(url, facts) != facts:
            self._unreachable.discard(url)
            if self._size_refused.pop(url, None) is not None:
                log.info("storage_limit_recheck", node=node.name, storage_driver=driver)
        self._engine_facts[url] = facts
        limits = storage_limits(driver, status, size_refused=url in self._size_refused)
        self._limits[url] = limits
        return driver, version, limits

    def may_cap(self, url: str) -> bool:
        """Whether a create on this engine asks for a size limit. Not yet probed: try the
        limit, as an engine that can cap is the safe guess."""
        return self._limits.get(url) is not StorageLimits.MONITORED

    def refused(self, node: NodeRecord, reason: str) -> None:
        """The engine refused a create with the limit and accepted it without: it cannot cap
        disk, so storage is monitored on it instead."""
        self._size_refused[node.docker_url] = reason
        self._limits[node.docker_url] = StorageLimits.MONITORED
        log.warning(
            "storage_limit_unenforced",
            node=node.name,
            error=reason,
            detail="the engine refused a disk size limit its driver should take; "
            "storage_gb is monitored on this node instead",
        )
