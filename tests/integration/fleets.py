"""Three engines registered as nodes, one user, and the clean-up after: what the reconciler's
tests on real engines start from (rollouts, pre-pull, purge, host ports)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.engines import Cluster
from tests.harness.fleet import (
    Detail,
    Operator,
    Seen,
    container_details,
    managed_containers,
    remove_managed_containers,
)


@dataclass(frozen=True)
class Fleet:
    url: str
    op: Operator
    urls: list[str]
    user: uuid.UUID

    async def containers(self, d: uuid.UUID) -> list[Seen]:
        return await asyncio.to_thread(managed_containers, self.urls, d)

    async def details(self, d: uuid.UUID) -> list[Detail]:
        return await asyncio.to_thread(container_details, self.urls, d)


@asynccontextmanager
async def fleet_on(db_url: str, engine: AsyncEngine, cluster: Cluster) -> AsyncIterator[Fleet]:
    """The cluster's engines as nodes `node-0`... of the database at `db_url`; on the way
    out every container the controller made on them is removed."""
    cluster.ensure_running()
    urls = list(cluster.urls)
    op = Operator(engine)
    for i, url in enumerate(urls):
        await op.add_node(f"node-{i}", url)
    try:
        yield Fleet(db_url, op, urls, await op.add_user())
    finally:
        await asyncio.to_thread(remove_managed_containers, urls)
