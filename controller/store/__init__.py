"""Every SQL statement the daemon runs, returning frozen model values.

One class owns the database so that the rest of the controller never sees a row, a session or
a driver exception. Reads load whole deployments in a constant number of queries (no N+1);
each write method is one transaction. Replica transitions are guarded by the status they
expect, so a write based on a stale read changes nothing instead of clobbering a newer state.
Transient failures (connection lost, server restarting) are retried here with tenacity, with
a bounded number of attempts, and then surface as `errors.StoreUnavailable`.

The class itself is the plumbing (engine, fencing, retries) and the one face the controller
sees; what it does lives beside it: `deployment_rows` (loads), `node_rows` (nodes),
`group_commit` with `writes` and `pg_writes` (the coalesced writes), `unusable` (rows SQLite
holds that the loads cannot read), `retry` (which failures are worth another try).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import String, delete, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller import errors
from controller.coalesce import Coalescer
from controller.model import (
    Deployment,
    DeploymentStatus,
    EngineInfo,
    NodeRecord,
    ProgressState,
    Replica,
    Resources,
)
from controller.ports import ReplicaChange, Transition
from controller.readmodel import CONTROL_PLANE, DEPLOYMENTS, REPLICAS
from controller.store import deployment_rows, spec_rows
from controller.store.deployment_rows import IN_CHUNK, ResyncSnapshot
from controller.store.group_commit import GroupCommit
from controller.store.node_rows import NodeRows
from controller.store.retry import retrying
from controller.store.unusable import Unusable, UnusableRows
from schema.engine import writer
from schema.enums import TERMINAL_REPLICA_STATUSES

T = TypeVar("T")


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        # The leader's fencing epoch; None: not fenced (SQLite, whose file lock already
        # guarantees a single controller, and tools).
        self._epoch: int | None = None
        self._unusable = UnusableRows(engine, self._note)
        self._loads: Coalescer[uuid.UUID, Deployment | None] = Coalescer(self._load_rounds)
        self._snapshot = ResyncSnapshot()
        self._nodes = NodeRows(engine, self._write, self._unusable)
        self._commit = GroupCommit(self._write)

    def fence(self, epoch: int | None) -> None:
        """Check every later write against `epoch` (see controller/leader.py)."""
        self._epoch = epoch if self._engine.dialect.name == "postgresql" else None

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, refused once another leader's epoch is current.

        The share lock on the control_plane row makes a successor's epoch bump wait for this
        transaction, and every transaction after the bump sees the new epoch and fails."""
        async with self._writer.begin() as conn:
            if self._epoch is not None:
                current = (
                    await conn.execute(
                        select(CONTROL_PLANE.c.epoch)
                        .where(CONTROL_PLANE.c.id == 1)
                        .with_for_update(read=True)
                    )
                ).scalar_one_or_none()
                if current != self._epoch:
                    raise errors.Deposed(
                        f"fencing epoch {self._epoch} is stale (current: {current})"
                    )
            yield conn

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def group_commit(self) -> dict[str, tuple[int, int]]:
        """(rounds, items) per coalesced kind of call, for benchmarks: items/rounds is the
        batch size the load produced."""
        writes = self._commit.counts()
        return {
            "transitions": writes["transitions"],
            "loads": (self._loads.rounds, self._loads.items),
            "writes": writes["writes"],
        }

    async def close(self) -> None:
        await self._engine.dispose()

    @retrying
    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(select(1))

    # --- rows the controller cannot read ------------------------------------------------------

    @property
    def held(self) -> frozenset[uuid.UUID]:
        """Deployments left out of every load because one of their rows is unusable: their
        containers are theirs all the same (not strays), and nothing is changed for them."""
        return self._unusable.held

    async def find_unusable(self) -> list[Unusable]:
        """Scan for rows the loads cannot read (SQLite only); see `UnusableRows.find`."""
        return await self._unusable.find()

    async def _note(self, deployment_id: uuid.UUID, reason: str) -> None:
        """A reason-only history row (status unchanged) for a held deployment."""
        d = DEPLOYMENTS
        async with self._engine.connect() as conn:
            status = (
                await conn.execute(
                    select(type_coerce(d.c.status, String)).where(d.c.id == deployment_id)
                )
            ).scalar_one_or_none()
        if status in {s.value for s in DeploymentStatus}:
            current = DeploymentStatus(status)
            await self.record_status(deployment_id, current, current, reason, datetime.now(UTC))

    # --- reads -----------------------------------------------------------------------------

    @retrying
    async def load_deployments(self, ids: Sequence[uuid.UUID] | None = None) -> list[Deployment]:
        """Deployments not yet `deleted` (all of them, or `ids`), with resources, non-terminal
        replicas, newest history row, the controller's persisted progress, the container spec
        and the placement: nine queries whatever the count (see `deployment_rows`). Held
        deployments (see `held`) are left out."""
        skip = self._unusable.skip
        return await self._unusable.tolerant(
            lambda: deployment_rows.read_deployments(self._engine, ids, skip)
        )

    @retrying
    async def load_active(self) -> list[Deployment]:
        """Every deployment not yet deleted, for a resync pass.

        On PostgreSQL a pass re-reads only what changed: one query fingerprints each
        deployment by the row versions (`xmin`) of its deployment, resources and live replica
        rows (a change of its spec rows moves its deployment row: migration 0007), and only
        deployments whose fingerprint moved are loaded again; the rest come from the previous
        pass. Any write makes a new row version, so nothing changed is missed; still, every
        `FULL_RELOAD_EVERY`-th pass reloads everything, as an informer relists. A
        fingerprint taken before its load can only make the next pass reload more.
        """
        if self._engine.dialect.name != "postgresql":
            return await self.load_deployments()
        prints = await deployment_rows.fingerprints(self._engine)
        cached, stale = self._snapshot.begin(prints)
        if len(stale) > len(prints) // 2:
            fresh = {d.id: d for d in await self.load_deployments()}
        else:
            fresh = {}
            for start in range(0, len(stale), IN_CHUNK):
                for d in await self.load_deployments(stale[start : start + IN_CHUNK]):
                    fresh[d.id] = d
        return self._snapshot.end(prints, cached, stale, fresh)

    async def load_deployment(self, deployment_id: uuid.UUID) -> Deployment | None:
        """One deployment; loads asked for at once share one read (see `load_deployments`)."""
        return await self._loads.submit(deployment_id)

    async def _load_rounds(self, ids: Sequence[uuid.UUID]) -> list[Deployment | None]:
        found = {d.id: d for d in await self.load_deployments(list(dict.fromkeys(ids)))}
        return [found.get(i) for i in ids]

    async def nodes(self) -> list[NodeRecord]:
        return await self._nodes.nodes()

    async def node_usage(self) -> dict[uuid.UUID, Resources]:
        """What live replicas hold on each node: the scheduler's `usage`."""
        return await self._nodes.node_usage()

    async def node_ports(self) -> dict[uuid.UUID, Counter[tuple[int, str]]]:
        """The host ports live replicas hold on each node (see `NodeRows.node_ports`)."""
        return await self._nodes.node_ports()

    async def changed_since(self, since: datetime | None) -> list[tuple[uuid.UUID, datetime]]:
        """Deployments changed after `since`, each with its newest change: the SQLite poller's
        question (see `deployment_rows.changed_since`)."""
        return await deployment_rows.changed_since(self._engine, since)

    @retrying
    async def registry_credential(
        self, user_id: uuid.UUID, name: str
    ) -> tuple[str, str, str] | None:
        """The user's registry login called `name` (a deployment's `image_pull_secret`):
        (registry_host, username, password_encrypted), or None when there is none. The
        password stays encrypted here; the caller decrypts it for one pull."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(spec_rows.registry_credential_query(user_id, name))
            ).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    @retrying
    async def deployments_to_purge(self) -> list[uuid.UUID]:
        """Deleted deployments (status `deleted` or `deleted_at` set) whose named volumes the
        operator asked to remove (`deployment_specs.purge_volumes`)."""
        async with self._engine.connect() as conn:
            return list((await conn.execute(spec_rows.to_purge_query())).scalars())

    @retrying
    async def volumes_purged(self, deployment_id: uuid.UUID) -> None:
        """The deployment's named volumes are gone from every node: clear its request."""
        async with self._write() as conn:
            await conn.execute(spec_rows.purged_statement(deployment_id))

    # --- writes ----------------------------------------------------------------------------

    async def create_replicas(
        self, deployment_id: uuid.UUID, count: int, now: datetime
    ) -> list[Replica]:
        """`count` new `pending` rows, written in the next group-committed round."""
        return await self._commit.create_replicas(deployment_id, count, now)

    async def transition(self, changes: Iterable[Transition]) -> set[uuid.UUID]:
        """Apply guarded replica transitions atomically; returns the ids that moved.
        Group-committed (see `GroupCommit.transition`)."""
        return await self._commit.transition(changes)

    async def fail_replicas_on_node(
        self, node_id: uuid.UUID, now: datetime
    ) -> dict[uuid.UUID, int]:
        """Eviction of a lost node's replicas; returns the count per deployment touched."""
        return await self._nodes.fail_replicas_on_node(node_id, now)

    async def record_status(
        self,
        deployment_id: uuid.UUID,
        old: DeploymentStatus,
        new: DeploymentStatus,
        reason: str,
        now: datetime,
        state: ProgressState | None = None,
    ) -> bool:
        """Write the status, its history row and the progress `state` it belongs to in one
        transaction, only if the status is still `old` (see `GroupCommit.record_status`)."""
        return await self._commit.record_status(deployment_id, old, new, reason, now, state)

    async def save_progress(self, deployment_id: uuid.UUID, state: ProgressState) -> None:
        """Persist progress that changed without a status change (a backoff step, say)."""
        await self._commit.save_progress(deployment_id, state)

    @retrying
    async def prune_terminal_replicas(self, keep: int) -> int:
        """Keep the newest `keep` stopped/failed rows per deployment; delete older ones."""
        rep = REPLICAS
        ranked = (
            select(
                rep.c.id,
                func.row_number()
                .over(
                    partition_by=rep.c.deployment_id,
                    order_by=(
                        func.coalesce(rep.c.stopped_at, rep.c.created_at).desc(),
                        rep.c.id.desc(),
                    ),
                )
                .label("rn"),
            )
            .where(rep.c.status.in_([s.value for s in TERMINAL_REPLICA_STATUSES]))
            .subquery()
        )
        async with self._write() as conn:
            result = await conn.execute(
                delete(rep).where(rep.c.id.in_(select(ranked.c.id).where(ranked.c.rn > keep)))
            )
        return int(result.rowcount or 0)

    async def register_node_if_none(
        self, name: str, docker_url: str, info: EngineInfo | None
    ) -> bool:
        """The embedded default: the local engine becomes the first node, only in an empty table."""
        return await self._nodes.register_node_if_none(name, docker_url, info)

    async def update_nodes(self, changes: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        """Heartbeats and status changes for several nodes in one transaction."""
        await self._nodes.update_nodes(changes)

    async def set_engine_labels(
        self, node_id: uuid.UUID, labels: Mapping[str, str]
    ) -> dict[str, str] | None:
        """The engine's own `fog.io/` labels merged into the node's row (see
        `NodeRows.set_engine_labels`); the operator-written values it replaced."""
        return await self._nodes.set_engine_labels(node_id, labels)

    async def run(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """For tests and tools: run `fn` in one transaction on this store's engine."""
        async with self._write() as conn:
            return await fn(conn)


__all__ = ["ReplicaChange", "Store", "Transition", "Unusable"]
