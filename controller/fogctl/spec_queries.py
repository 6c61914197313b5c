"""The SQL of a deployment's container spec: the `deployment_specs` row and its child rows
(env, labels, ports, volumes, and the placement's node selector), read into the shape
`fogctl apply` reads and written whole.

`apply` replaces the spec as kubectl apply does: a field left out of the file is "as the image
says" (NULL, or no child rows). Each part is rewritten only when it differs from what is
stored, so an unchanged file writes nothing and the generation triggers on these tables do
not fire; a changed part is replaced whole (its rows deleted and inserted again), in the
caller's transaction. Parts are compared as sets where order carries no meaning (ports,
volumes), as lists where it does (entrypoint, command).

`placement` is one part of the file kept in two places: `spread_by`, `max_per_node` and
`rebalance` are columns of `deployment_specs`, the node selector is `deployment_node_selectors`
(one row per pair); a changed placement rewrites both.

Reads take the deployments' ids and are six statements whatever their number (no N+1).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.fogctl import credential_queries, views
from controller.readmodel import ENV, LABELS, PORTS, SELECTORS, SPECS, VOLUMES
from schema import api

# The spec's fields in the apply file's order; the lists and maps are child tables, the
# rest columns of `deployment_specs`.
PARTS = tuple(api.DeploymentSpecResponse.model_fields)
CHILD_PARTS = ("env", "labels", "ports", "volumes")
PLACEMENT = "placement"  # columns and the selector's child rows
COLUMN_PARTS = tuple(p for p in PARTS if p not in CHILD_PARTS)
EMPTY = api.DeploymentSpecResponse()  # everything as the image says: no spec rows at all
_CHILD_TABLES = {"env": ENV, "labels": LABELS, "ports": PORTS, "volumes": VOLUMES}


async def load(
    conn: AsyncConnection, deployment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, api.DeploymentSpecResponse]:
    """Each deployment's spec (empty for one without spec rows), by id."""
    ids = list(deployment_ids)
    if not ids:
        return {}
    specs = {
        r.deployment_id: r
        for r in await conn.execute(select(SPECS).where(SPECS.c.deployment_id.in_(ids)))
    }
    children: dict[str, dict[uuid.UUID, list[Any]]] = {}
    for part, table in (*_CHILD_TABLES.items(), ("node_selectors", SELECTORS)):
        grouped: dict[uuid.UUID, list[Any]] = defaultdict(list)
        for row in await conn.execute(select(table).where(table.c.deployment_id.in_(ids))):
            grouped[row.deployment_id].append(row)
        children[part] = grouped
    return {
        i: api.DeploymentSpecResponse.model_validate(
            api.spec_fields(
                specs.get(i), **{part: rows.get(i, []) for part, rows in children.items()}
            )
        )
        for i in ids
    }


def wanted(spec: api.DeploymentCreate) -> api.DeploymentSpecResponse:
    """The spec an apply document asks for, in the shape `load` returns."""
    return api.DeploymentSpecResponse.model_validate(spec.model_dump(include=set(PARTS)))


def _comparable(spec: api.DeploymentSpecResponse, part: str) -> Any:
    value = getattr(spec, part)
    if part == "ports":
        return sorted((p.container_port, p.protocol, p.host_port or 0) for p in value)
    if part == "volumes":
        return sorted((v.mount_path, v.name, v.host_path, v.read_only) for v in value)
    if part in ("healthcheck", PLACEMENT):
        return None if value is None else value.model_dump()
    return value


def changed_parts(
    current: api.DeploymentSpecResponse, new: api.DeploymentSpecResponse
) -> list[str]:
    """The parts of the spec (field names of the apply file) that differ."""
    return [p for p in PARTS if _comparable(current, p) != _comparable(new, p)]


def _columns(spec: api.DeploymentSpecResponse) -> dict[str, Any]:
    h = spec.healthcheck
    p = spec.placement
    return {
        "entrypoint": spec.entrypoint,
        "command": spec.command,
        "network": spec.network,
        "stop_grace_seconds": spec.stop_grace_seconds,
        "image_pull_secret": spec.image_pull_secret,
        "healthcheck_command": h.command if h else None,
        "healthcheck_interval_seconds": h.interval_seconds if h else None,
        "healthcheck_timeout_seconds": h.timeout_seconds if h else None,
        "healthcheck_retries": h.retries if h else None,
        "healthcheck_start_period_seconds": h.start_period_seconds if h else None,
        "spread_by": p.spread_by,
        "max_per_node": p.max_per_node,
        "rebalance": p.rebalance,
    }


# What no `deployment_specs` row means, column by column: a row is made only to differ.
_NO_ROW = _columns(EMPTY)


def _child_rows(spec: api.DeploymentSpecResponse, part: str) -> list[dict[str, Any]]:
    if part == "env":
        return [{"name": k, "value": v} for k, v in spec.env.items()]
    if part == "labels":
        return [{"key": k, "value": v} for k, v in spec.labels.items()]
    if part == "ports":
        return [{"id": uuid.uuid4(), **p.model_dump()} for p in spec.ports]
    return [{"id": uuid.uuid4(), **v.model_dump()} for v in spec.volumes]


async def write(
    conn: AsyncConnection,
    deployment_id: uuid.UUID,
    new: api.DeploymentSpecResponse,
    parts: Sequence[str],
) -> None:
    """Replace the given parts of one deployment's spec with `new`'s (the caller's
    transaction). The `deployment_specs` row is made only when a column differs from what no
    row means, and its `purge_volumes` flag (not spec) is left as it is."""
    if any(p in COLUMN_PARTS for p in parts):
        columns = _columns(new)
        exists = (
            await conn.execute(select(SPECS.c.id).where(SPECS.c.deployment_id == deployment_id))
        ).first()
        if exists is not None:
            await conn.execute(
                update(SPECS)
                .where(SPECS.c.deployment_id == deployment_id)
                .values(updated_at=SPECS.c.updated_at, **columns)
            )
        elif columns != _NO_ROW:
            await conn.execute(
                insert(SPECS).values(id=uuid.uuid4(), deployment_id=deployment_id, **columns)
            )
    for part in CHILD_PARTS:
        if part in parts:
            await _replace(conn, _CHILD_TABLES[part], deployment_id, _child_rows(new, part))
    if PLACEMENT in parts:
        selector = [{"key": k, "value": v} for k, v in new.placement.node_selector.items()]
        await _replace(conn, SELECTORS, deployment_id, selector)


async def _replace(
    conn: AsyncConnection, table: Any, deployment_id: uuid.UUID, rows: list[dict[str, Any]]
) -> None:
    await conn.execute(delete(table).where(table.c.deployment_id == deployment_id))
    if rows:
        await conn.execute(insert(table), [{"deployment_id": deployment_id, **r} for r in rows])


async def check_pull_secret(
    conn: AsyncConnection, user: views.UserRow, name: str, spec: api.DeploymentSpecResponse
) -> None:
    """Refuse a pull secret the user does not have: the pull would fail on every node."""
    if spec.image_pull_secret is not None:
        await credential_queries.require_credential(
            conn, user, spec.image_pull_secret, where=f"deployment {name!r}"
        )


async def mark_purge_volumes(conn: AsyncConnection, deployment_id: uuid.UUID) -> None:
    """Ask the controller to remove the deployment's named volumes once it is deleted."""
    done = await conn.execute(
        update(SPECS)
        .where(SPECS.c.deployment_id == deployment_id)
        .values(purge_volumes=True, updated_at=SPECS.c.updated_at)
    )
    if done.rowcount == 0:
        await conn.execute(
            insert(SPECS).values(id=uuid.uuid4(), deployment_id=deployment_id, purge_volumes=True)
        )
