"""The read model the daemon and fogctl share: table handles, and the queries both answer from.

The store (the daemon's side) and fogctl's queries each used to hold their own copy of these,
and the copies drifted (node usage was an inner join on one side and an outer join on the
other). Each query is now written once here, as a statement builder plus the function that
turns its row into a value; the two programs only run them, and add what is theirs alone (the
daemon's unusable-row filter, fogctl's user and replica counts). Nothing here runs a query.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

from sqlalchemy import ColumnElement, Join, Select, Table, func, select

from controller.model import Resources
from controller.placement_rules import NO_RULES, Label, PlacementRules
from schema import models as tables
from schema.enums import LIVE_REPLICA_STATUSES, NOT_TERMINAL_REPLICA_STATUSES

# The tables as Core objects: both programs speak Core, not the ORM (no sessions, no lazy loads).
USERS = cast(Table, tables.User.__table__)
NODES = cast(Table, tables.Node.__table__)
DEPLOYMENTS = cast(Table, tables.Deployment.__table__)
RESOURCES = cast(Table, tables.DeploymentResource.__table__)
REPLICAS = cast(Table, tables.DeploymentReplica.__table__)
HISTORY = cast(Table, tables.DeploymentStatusHistory.__table__)
CONTROL_PLANE = cast(Table, tables.ControlPlane.__table__)
STATE = cast(Table, tables.DeploymentControllerState.__table__)
# The container spec (issue 14): the 1:1 row, its child rows, and the users' registry logins.
SPECS = cast(Table, tables.DeploymentSpec.__table__)
ENV = cast(Table, tables.DeploymentEnv.__table__)
LABELS = cast(Table, tables.DeploymentLabel.__table__)
PORTS = cast(Table, tables.DeploymentPort.__table__)
VOLUMES = cast(Table, tables.DeploymentVolume.__table__)
CREDENTIALS = cast(Table, tables.RegistryCredential.__table__)
# Placement (issue 15): `deployment_specs`' placement columns and the node selector pairs.
SELECTORS = cast(Table, tables.DeploymentNodeSelector.__table__)
# The tables `controller.runspec.RunSpec` and the placement are built from, in load order.
RUN_TABLES = (SPECS, ENV, LABELS, PORTS, VOLUMES, SELECTORS)

LIVE = [s.value for s in LIVE_REPLICA_STATUSES]
NOT_TERMINAL = [s.value for s in NOT_TERMINAL_REPLICA_STATUSES]

# --- a deployment and its resources ----------------------------------------------------------

RESOURCE_COLUMNS = (
    RESOURCES.c.cpu_cores,
    RESOURCES.c.memory_mb,
    RESOURCES.c.gpu_units,
    RESOURCES.c.storage_gb,
)


def with_resources() -> Join:
    """Deployments with their resources row; outer, because plain SQL can leave a deployment
    without one, and such a deployment must still be seen (and told why it cannot run)."""
    return DEPLOYMENTS.outerjoin(RESOURCES, RESOURCES.c.deployment_id == DEPLOYMENTS.c.id)


def deployments_with_resources(scope: ColumnElement[bool]) -> Select[Any]:
    """Every deployment column and its resources' columns, for the deployments in `scope`."""
    return select(DEPLOYMENTS, *RESOURCE_COLUMNS).select_from(with_resources()).where(scope)


def resources_of(row: Any) -> Resources | None:
    """The resources of a row read with `RESOURCE_COLUMNS`; None: the row has none."""
    if row.cpu_cores is None:
        return None
    return Resources(row.cpu_cores, row.memory_mb, row.gpu_units, row.storage_gb)


# --- placement -------------------------------------------------------------------------------


def placement_of(spec: Any | None, selector: Collection[Label]) -> PlacementRules:
    """A deployment's placement from its `deployment_specs` row (None: it has none) and its
    `deployment_node_selectors` pairs; no row and no pairs are no rules at all."""
    if spec is None and not selector:
        return NO_RULES
    return PlacementRules(
        node_selector=frozenset(selector),
        spread_by=spec.spread_by if spec is not None else None,
        max_per_node=spec.max_per_node if spec is not None else None,
        rebalance=bool(spec.rebalance) if spec is not None else True,
    )


# --- the newest history row ------------------------------------------------------------------


def newest_history(scope: ColumnElement[bool]) -> Select[Any]:
    """One row per deployment in `scope` (a condition on DEPLOYMENTS only): its newest history
    row's `deployment_id`, `reason` and `changed_at`. Rows of one instant are ordered by id, so
    both programs name the same row as newest. Run as it is, or joined as a `.subquery()`."""
    hist = HISTORY
    ranked = (
        select(
            hist.c.deployment_id,
            hist.c.reason,
            hist.c.changed_at,
            func.row_number()
            .over(
                partition_by=hist.c.deployment_id,
                order_by=(hist.c.changed_at.desc(), hist.c.id.desc()),
            )
            .label("rn"),
        )
        .join(DEPLOYMENTS, DEPLOYMENTS.c.id == hist.c.deployment_id)
        .where(scope)
        .subquery()
    )
    return select(ranked.c.deployment_id, ranked.c.reason, ranked.c.changed_at).where(
        ranked.c.rn == 1
    )


# --- what live replicas hold on each node ----------------------------------------------------


def node_usage(*where: ColumnElement[bool]) -> Select[Any]:
    """Per node that holds live replicas: how many (`live_replicas`) and the sum of their
    deployments' resources (`cpu_cores`, `memory_mb`, `gpu_units`, `storage_gb`).

    An outer join: a live replica whose deployment has no resources row still runs on its node
    and counts as one of its live replicas (`fogctl node delete` refuses a node that holds
    any), while adding nothing to the sums, which is what it declared. An inner join would
    drop it from the count and make that node look empty. A node without live replicas has no
    row; it holds nothing."""
    rep, res = REPLICAS, RESOURCES
    return (
        select(
            rep.c.node_id,
            func.count().label("live_replicas"),
            func.coalesce(func.sum(res.c.cpu_cores), 0.0).label("cpu_cores"),
            func.coalesce(func.sum(res.c.memory_mb), 0).label("memory_mb"),
            func.coalesce(func.sum(res.c.gpu_units), 0).label("gpu_units"),
            func.coalesce(func.sum(res.c.storage_gb), 0).label("storage_gb"),
        )
        .select_from(rep.outerjoin(res, res.c.deployment_id == rep.c.deployment_id))
        .where(rep.c.node_id.is_not(None), rep.c.status.in_(LIVE), *where)
        .group_by(rep.c.node_id)
    )


USAGE_COLUMNS = ("cpu_cores", "memory_mb", "gpu_units", "storage_gb")


def usage_of(row: Any, prefix: str = "") -> Resources:
    """What a `node_usage` row says the node's live replicas hold, its columns read under
    `prefix` (a query that also selects the node's own capacity must rename them). Missing
    sums are zero: an outer join from a node without live replicas reads them as NULL."""
    cpu, memory, gpu, storage = (getattr(row, prefix + name) for name in USAGE_COLUMNS)
    return Resources(float(cpu or 0.0), int(memory or 0), int(gpu or 0), int(storage or 0))
