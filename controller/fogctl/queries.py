"""The SQL fogctl runs for deployments, nodes and users (the container spec's rows are in
`spec_queries`, registry credentials in `credential_queries`): the operator's side of the
database, apart from the daemon's `controller.store` (which owns the controller's columns and
is changed by other hands). What
both programs read alike (a deployment with its resources, its newest history row, what live
replicas hold on each node) is built once in `controller.readmodel` and only run from here.

Two rules shape every function here:
- User isolation. Each deployment query takes the user's id and filters by it, in the read
  that finds a deployment *and* in the write that changes it, so a name from user B can never
  select, scale or delete user A's row. Only `list_*(user_id=None)` (`--all-users`) spans users.
- Operator columns only. fogctl writes what the README's "Who owns what" gives operators
  (deployment spec, resources, soft delete, node rows and flags, users) and never a status or
  a history row: those are the controller's record. `updated_at` is left to the database's
  trigger (the statement sets it to itself, which the trigger treats as "not set"), so a skewed
  clock on the operator's laptop cannot hide an edit from the controller.

Reads are a constant number of statements whatever the number of rows (no N+1).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import readmodel
from controller.fogctl import node_labels, spec_queries, views
from controller.fogctl.errors import FogctlError, InputError, NotFound, constraint_message
from controller.readmodel import (
    DEPLOYMENTS,
    HISTORY,
    NODES,
    REPLICAS,
    RESOURCES,
    STATE,
    USERS,
)
from schema import api
from schema import models as tables
from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus

_LIVE = readmodel.LIVE


def refused(exc: DBAPIError, values: Mapping[str, object] | None = None) -> InputError:
    """A database refusal (constraint, out-of-range value) as the operator's input error."""
    return InputError(constraint_message(exc, values))


# --- users -------------------------------------------------------------------------------------


async def find_user(conn: AsyncConnection, username: str) -> views.UserRow | None:
    row = (await conn.execute(select(USERS).where(USERS.c.username == username.strip()))).first()
    return views.UserRow.model_validate(row._mapping) if row else None


async def require_user(conn: AsyncConnection, username: str) -> views.UserRow:
    """The user `--user` names; an unknown name is bad input (exit 2), never an empty list."""
    user = await find_user(conn, username)
    if user is None:
        raise InputError(
            f"--user: user {username.strip()!r} does not exist "
            f"(create it with `fogctl user add {username.strip()}`)"
        )
    return user


async def list_users(conn: AsyncConnection) -> list[views.UserRow]:
    rows = await conn.execute(select(USERS).order_by(USERS.c.username, USERS.c.id))
    return [views.UserRow.model_validate(r._mapping) for r in rows]


async def add_user(conn: AsyncConnection, spec: api.UserCreate) -> views.UserRow:
    if await find_user(conn, spec.username):
        raise InputError(f"username: user {spec.username!r} already exists")
    values = {"id": uuid.uuid4(), "username": spec.username}
    try:
        await conn.execute(insert(USERS).values(**values))
    except IntegrityError as exc:  # another fogctl added it since the check above
        raise refused(exc, {"username": spec.username}) from exc
    user = await find_user(conn, spec.username)
    assert user is not None
    return user


# --- deployments: reads ------------------------------------------------------------------------


def _deployment_select(scope: ColumnElement[bool]) -> Select[Any]:
    """Deployments in `scope` with user, resources, replica counts, the newest history row and
    the spec's generation beside the one the controller last observed.

    One statement: counts and the newest history row come from grouped/ranked subqueries
    restricted to the same scope, so a listing costs the same for 1 or 1,000 deployments.
    """
    d, u, rep, st = DEPLOYMENTS, USERS, REPLICAS, STATE
    in_scope = select(d.c.id).join(u, u.c.id == d.c.user_id).where(scope)
    counts = (
        select(
            rep.c.deployment_id,
            func.sum(case((rep.c.status == ReplicaStatus.RUNNING.value, 1), else_=0)).label(
                "running"
            ),
            func.sum(case((rep.c.status.in_(_LIVE), 1), else_=0)).label("live"),
            func.sum(case((rep.c.status == ReplicaStatus.STOPPING.value, 1), else_=0)).label(
                "stopping"
            ),
        )
        .where(rep.c.deployment_id.in_(in_scope))
        .group_by(rep.c.deployment_id)
        .subquery()
    )
    last = readmodel.newest_history(scope).subquery("newest_history")
    return (
        select(
            d,
            u.c.username.label("user"),
            *readmodel.RESOURCE_COLUMNS,
            func.coalesce(counts.c.running, 0).label("running_replicas"),
            func.coalesce(counts.c.live, 0).label("live_replicas"),
            func.coalesce(counts.c.stopping, 0).label("stopping_replicas"),
            last.c.reason,
            last.c.changed_at.label("status_changed_at"),
            func.coalesce(st.c.generation, 1).label("generation"),
            func.coalesce(st.c.observed_generation, 0).label("observed_generation"),
        )
        .select_from(
            readmodel.with_resources()
            .join(u, u.c.id == d.c.user_id)
            .outerjoin(counts, counts.c.deployment_id == d.c.id)
            .outerjoin(last, last.c.deployment_id == d.c.id)
            .outerjoin(st, st.c.deployment_id == d.c.id)
        )
        .where(scope)
    )


def _deployment(row: Row[Any]) -> views.DeploymentRow:
    m = dict(row._mapping)
    resources = readmodel.resources_of(row)
    m["resources"] = (
        views.Resources.model_validate(resources, from_attributes=True) if resources else None
    )
    return views.DeploymentRow.model_validate(m)


def _user_scope(user_id: uuid.UUID | None) -> ColumnElement[bool]:
    return DEPLOYMENTS.c.user_id == user_id if user_id is not None else true()


async def list_deployments(
    conn: AsyncConnection,
    user_id: uuid.UUID | None,
    *,
    statuses: Sequence[DeploymentStatus] = (),
    name: str | None = None,
) -> list[views.DeploymentRow]:
    """A user's deployments (all users' when `user_id` is None). Without a status filter the
    ones already `deleted` are left out, as kubectl leaves out what no longer exists."""
    d = DEPLOYMENTS
    conditions = [_user_scope(user_id)]
    if statuses:
        conditions.append(d.c.status.in_([s.value for s in statuses]))
    else:
        conditions.append(d.c.status != DeploymentStatus.DELETED.value)
    if name is not None:
        conditions.append(d.c.name == name)
    stmt = _deployment_select(and_(*conditions)).order_by(
        USERS.c.username, d.c.name, d.c.created_at, d.c.id
    )
    return [_deployment(r) for r in await conn.execute(stmt)]


async def find_deployment(
    conn: AsyncConnection, user_id: uuid.UUID, name: str, *, include_deleted: bool = False
) -> views.DeploymentRow | None:
    """The user's live deployment called `name`; with `include_deleted`, when there is none,
    the most recently soft-deleted one (so describe and history still work after a delete)."""
    d = DEPLOYMENTS
    scope = and_(d.c.user_id == user_id, d.c.name == name.strip())
    live = (await conn.execute(_deployment_select(and_(scope, d.c.deleted_at.is_(None))))).first()
    if live is not None:
        return _deployment(live)
    if not include_deleted:
        return None
    gone = (
        await conn.execute(
            _deployment_select(and_(scope, d.c.deleted_at.is_not(None)))
            .order_by(d.c.deleted_at.desc(), d.c.id.desc())
            .limit(1)
        )
    ).first()
    return _deployment(gone) if gone is not None else None


async def require_deployment(
    conn: AsyncConnection,
    user: views.UserRow,
    name: str,
    *,
    include_deleted: bool = False,
) -> views.DeploymentRow:
    found = await find_deployment(conn, user.id, name, include_deleted=include_deleted)
    if found is None:
        # The same words whether the name is free or another user's: no existence leaks.
        raise NotFound(f"deployment {name.strip()!r} not found for user {user.username!r}")
    return found


def _replica_select() -> Select[Any]:
    rep, d, u, n = REPLICAS, DEPLOYMENTS, USERS, NODES
    return select(
        rep,
        d.c.name.label("deployment"),
        u.c.username.label("user"),
        n.c.name.label("node"),
    ).select_from(
        rep.join(d, d.c.id == rep.c.deployment_id)
        .join(u, u.c.id == d.c.user_id)
        .outerjoin(n, n.c.id == rep.c.node_id)
    )


async def list_replicas(
    conn: AsyncConnection,
    user_id: uuid.UUID | None,
    *,
    statuses: Sequence[ReplicaStatus] = (),
    deployment: str | None = None,
    deployment_ids: Sequence[uuid.UUID] | None = None,
) -> list[views.ReplicaRow]:
    rep, d = REPLICAS, DEPLOYMENTS
    stmt = _replica_select().where(_user_scope(user_id))
    if statuses:
        stmt = stmt.where(rep.c.status.in_([s.value for s in statuses]))
    if deployment is not None:
        stmt = stmt.where(d.c.name == deployment, d.c.deleted_at.is_(None))
    if deployment_ids is not None:
        stmt = stmt.where(rep.c.deployment_id.in_(list(deployment_ids)))
    stmt = stmt.order_by(USERS.c.username, d.c.name, rep.c.created_at, rep.c.id)
    return [views.ReplicaRow.model_validate(r._mapping) for r in await conn.execute(stmt)]


async def history(
    conn: AsyncConnection, user_id: uuid.UUID, deployment_id: uuid.UUID, *, limit: int | None
) -> tuple[list[views.HistoryRow], int]:
    """The newest `limit` history rows (all when None), oldest first, and how many there are."""
    hist, d, u = HISTORY, DEPLOYMENTS, USERS
    owned = and_(hist.c.deployment_id == deployment_id, d.c.user_id == user_id)
    base = hist.join(d, d.c.id == hist.c.deployment_id)
    total = (await conn.execute(select(func.count()).select_from(base).where(owned))).scalar_one()
    stmt = (
        select(hist, u.c.username.label("changed_by_user"))
        .select_from(base.outerjoin(u, u.c.id == hist.c.changed_by))
        .where(owned)
        .order_by(hist.c.changed_at.desc(), hist.c.id.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = [views.HistoryRow.model_validate(r._mapping) for r in await conn.execute(stmt)]
    rows.reverse()
    return rows, int(total)


async def with_specs(
    conn: AsyncConnection, rows: Sequence[views.DeploymentRow]
) -> list[views.Deployment]:
    """The deployments with their container specs (five statements for any number)."""
    specs = await spec_queries.load(conn, [r.id for r in rows])
    return [views.Deployment.model_validate({**r.model_dump(), **dict(specs[r.id])}) for r in rows]


async def describe(
    conn: AsyncConnection, user: views.UserRow, name: str, *, history_limit: int
) -> views.DeploymentDetail:
    found = (
        await with_specs(conn, [await require_deployment(conn, user, name, include_deleted=True)])
    )[0]
    replicas = await list_replicas(conn, user.id, deployment_ids=[found.id])
    rows, total = await history(conn, user.id, found.id, limit=history_limit)
    return views.DeploymentDetail.model_validate(
        {**dict(found), "replicas": replicas, "history": rows, "history_total": total}
    )


# --- deployments: writes -----------------------------------------------------------------------


def _resource_values(spec: api.DeploymentResourceCreate) -> dict[str, Any]:
    return {
        "cpu_cores": spec.cpu_cores,
        "memory_mb": spec.memory_mb,
        "gpu_units": spec.gpu_units,
        "storage_gb": spec.storage_gb,
    }


def _context(spec: api.DeploymentCreate) -> dict[str, object]:
    """Field path -> value written, for constraint messages."""
    out: dict[str, object] = {
        "name": spec.name,
        "container_image": spec.container_image,
        "target_replicas": spec.target_replicas,
    }
    out.update({f"resources.{k}": v for k, v in _resource_values(spec.resources).items()})
    out.update(
        {k: getattr(spec, k) for k in ("network", "stop_grace_seconds", "image_pull_secret")}
    )
    placement = spec.placement
    out.update(
        {
            "placement.spread_by": placement.spread_by,
            "placement.max_per_node": placement.max_per_node,
        }
    )
    return out


async def apply(
    conn: AsyncConnection, user: views.UserRow, specs: Sequence[api.DeploymentCreate]
) -> list[views.Outcome]:
    """Create or update each deployment by (user, name); run inside one write transaction.

    An update changes only what differs, and nothing at all for an identical document (so
    the generation does not move and the controller's backoff is not reset for nothing). A
    document that leaves `target_replicas` out keeps the current count, so re-applying a file
    does not undo a `fogctl scale` (the count defaults to 1 only on create).
    """
    outcomes = []
    for spec in specs:
        try:
            outcomes.append(await _apply_one(conn, user, spec))
        except (IntegrityError, DataError) as exc:
            raise refused(exc, _context(spec)) from exc
    return outcomes


async def _apply_one(
    conn: AsyncConnection, user: views.UserRow, spec: api.DeploymentCreate
) -> views.Outcome:
    d, res = DEPLOYMENTS, RESOURCES
    current = await find_deployment(conn, user.id, spec.name)
    wanted = _resource_values(spec.resources)
    wanted_spec = spec_queries.wanted(spec)
    await spec_queries.check_pull_secret(conn, user, spec.name, wanted_spec)
    if current is None:
        deployment_id = uuid.uuid4()
        await conn.execute(
            insert(d).values(
                id=deployment_id,
                name=spec.name,
                user_id=user.id,
                container_image=spec.container_image,
                target_replicas=spec.target_replicas,
            )
        )
        await conn.execute(
            insert(res).values(id=uuid.uuid4(), deployment_id=deployment_id, **wanted)
        )
        await spec_queries.write(
            conn,
            deployment_id,
            wanted_spec,
            spec_queries.changed_parts(spec_queries.EMPTY, wanted_spec),
        )
        return views.Outcome(kind="deployment", name=spec.name, result="created")

    changes: dict[str, Any] = {}
    if spec.container_image != current.container_image:
        changes["container_image"] = spec.container_image
    if "target_replicas" in spec.model_fields_set and spec.target_replicas != (
        current.target_replicas
    ):
        changes["target_replicas"] = spec.target_replicas
    have = current.resources.model_dump() if current.resources else None
    resources_changed = have != wanted
    stored_spec = (await spec_queries.load(conn, [current.id]))[current.id]
    spec_changed = spec_queries.changed_parts(stored_spec, wanted_spec)
    if not changes and not resources_changed and not spec_changed:
        return views.Outcome(kind="deployment", name=spec.name, result="unchanged")
    if resources_changed:
        if current.resources is None:
            await conn.execute(
                insert(res).values(id=uuid.uuid4(), deployment_id=current.id, **wanted)
            )
        else:
            await conn.execute(
                update(res)
                .where(res.c.deployment_id == current.id)
                .values(updated_at=res.c.updated_at, **wanted)
            )
    await spec_queries.write(conn, current.id, wanted_spec, spec_changed)
    # The deployment row is touched even when only its resources or spec changed, so its
    # `updated_at` dates the edit for readers of the deployment row; the generation counts
    # those changes by itself (triggers on their tables), and `rollout status` waits on that.
    await conn.execute(
        update(d)
        .where(d.c.id == current.id, d.c.user_id == user.id, d.c.deleted_at.is_(None))
        .values(updated_at=d.c.updated_at, **changes)
    )
    what = sorted([*changes, *spec_changed, *(["resources"] if resources_changed else [])])
    return views.Outcome(
        kind="deployment", name=spec.name, result="configured", detail=", ".join(what)
    )


async def scale(
    conn: AsyncConnection, user: views.UserRow, name: str, replicas: int
) -> views.Outcome:
    d = DEPLOYMENTS
    found = await require_deployment(conn, user, name)
    if found.target_replicas == replicas:
        return views.Outcome(
            kind="deployment", name=found.name, result="unchanged", detail=f"{replicas} replicas"
        )
    try:
        await conn.execute(
            update(d)
            .where(d.c.id == found.id, d.c.user_id == user.id, d.c.deleted_at.is_(None))
            .values(target_replicas=replicas, updated_at=d.c.updated_at)
        )
    except (IntegrityError, DataError) as exc:
        raise refused(exc, {"target_replicas": replicas}) from exc
    return views.Outcome(
        kind="deployment",
        name=found.name,
        result="scaled",
        detail=f"{found.target_replicas} -> {replicas} replicas",
    )


async def soft_delete(
    conn: AsyncConnection, user: views.UserRow, name: str, *, purge_volumes: bool = False
) -> views.Outcome:
    """Set `deleted_at`: the controller stops the replicas and records `deleted`; rows stay.
    With `purge_volumes`, the flag that has the controller remove the named volumes too, in
    the same transaction (a delete never goes out without it)."""
    d = DEPLOYMENTS
    found = await require_deployment(conn, user, name)
    if purge_volumes:
        await spec_queries.mark_purge_volumes(conn, found.id)
    await conn.execute(
        update(d)
        .where(d.c.id == found.id, d.c.user_id == user.id, d.c.deleted_at.is_(None))
        .values(deleted_at=tables.utc_now(), updated_at=d.c.updated_at)
    )
    detail = "its named volumes will be removed" if purge_volumes else ""
    return views.Outcome(kind="deployment", name=found.name, result="deleted", detail=detail)


# --- nodes -------------------------------------------------------------------------------------


# The labels as text (a CAST in SQL: asyncpg would decode JSON itself), read by
# `node_labels.stored`: a value that is no JSON object (on SQLite, no JSON at all) must not
# break a node listing.
_LABELS_TEXT = cast(NODES.c.labels, String).label("labels")


async def list_nodes(
    conn: AsyncConnection, *, statuses: Sequence[NodeStatus] = (), name: str | None = None
) -> list[views.NodeRow]:
    """Nodes with what their live replicas hold (the same sum the scheduler uses)."""
    n = NODES
    usage = readmodel.node_usage().subquery("usage")
    stmt = select(
        *(c for c in n.columns if c.name != "labels"),
        _LABELS_TEXT,
        func.coalesce(usage.c.live_replicas, 0).label("live_replicas"),
        *(usage.c[name].label(f"used_{name}") for name in readmodel.USAGE_COLUMNS),
    ).select_from(n.outerjoin(usage, usage.c.node_id == n.c.id))
    if statuses:
        stmt = stmt.where(n.c.status.in_([s.value for s in statuses]))
    if name is not None:
        stmt = stmt.where(n.c.name == name)
    out = []
    for row in await conn.execute(stmt.order_by(n.c.name, n.c.id)):
        m = {k: v for k, v in row._mapping.items() if not k.startswith("used_")}
        used = readmodel.usage_of(row, prefix="used_")
        # Sums of floats carry noise (0.1 + 0.2): shown to the microcore.
        used = dataclasses.replace(used, cpu_cores=round(used.cpu_cores, 6))
        m["allocated"] = views.Resources.model_validate(used, from_attributes=True)
        labels = node_labels.stored(m["labels"])
        m["labels"] = labels if labels is not None else {}
        m["labels_problem"] = None if labels is not None else node_labels.NOT_AN_OBJECT
        out.append(views.NodeRow.model_validate(m))
    return out


async def require_node(conn: AsyncConnection, name: str) -> views.NodeRow:
    found = await list_nodes(conn, name=name.strip())
    if not found:
        raise NotFound(f"node {name.strip()!r} not found")
    return found[0]


async def add_node(conn: AsyncConnection, spec: api.NodeCreate) -> views.Outcome:
    values = spec.model_dump()
    if (await list_nodes(conn, name=spec.name)) != []:
        raise InputError(f"name: node {spec.name!r} already exists")
    try:
        await conn.execute(insert(NODES).values(id=uuid.uuid4(), **values))
    except (IntegrityError, DataError) as exc:
        raise refused(exc, values) from exc
    return views.Outcome(kind="node", name=spec.name, result="added")


async def set_node_flags(
    conn: AsyncConnection,
    name: str,
    *,
    unschedulable: bool,
    draining: bool,
    verb: str,
) -> views.Outcome:
    """Cordon, uncordon or drain: operator flags only; the daemon acts on them."""
    n = NODES
    node = await require_node(conn, name)
    if node.unschedulable == unschedulable and node.draining == draining:
        return views.Outcome(kind="node", name=node.name, result=f"already {verb}")
    await conn.execute(
        update(n)
        .where(n.c.id == node.id)
        .values(unschedulable=unschedulable, draining=draining, updated_at=n.c.updated_at)
    )
    return views.Outcome(kind="node", name=node.name, result=verb)


async def label_node(
    conn: AsyncConnection, name: str, edit: node_labels.LabelEdit
) -> views.Outcome:
    """Set and remove an operator's labels on one node, keeping every other key (the
    controller's `fog.io/` ones too). The row is locked for the read-merge-write on
    PostgreSQL, so two edits at once both land; SQLite's write transaction is exclusive."""
    n = NODES
    row = (
        await conn.execute(
            select(n.c.id, n.c.name, _LABELS_TEXT).where(n.c.name == name.strip()).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"node {name.strip()!r} not found")
    current = node_labels.stored(row.labels)
    if current is None:
        raise FogctlError(
            f"node {row.name!r}: its labels column holds {node_labels.shown(row.labels)!r}, "
            "not a JSON object: set it to {} (or an object) with SQL first"
        )
    labels, changes = node_labels.merge(current, edit)
    notes = changes + node_labels.not_set(current, edit)
    if not changes:
        return views.Outcome(
            kind="node", name=row.name, result="unchanged", detail=", ".join(notes)
        )
    await conn.execute(
        update(n).where(n.c.id == row.id).values(labels=labels, updated_at=n.c.updated_at)
    )
    return views.Outcome(kind="node", name=row.name, result="labeled", detail=", ".join(notes))


async def delete_node(conn: AsyncConnection, name: str, *, force: bool) -> views.Outcome:
    """Remove a node row. Its replicas lose their node (ON DELETE SET NULL) and the controller
    marks them failed ("node removed") and places replacements elsewhere."""
    node = await require_node(conn, name)
    if node.live_replicas and not force:
        raise InputError(
            f"node {node.name!r} still holds {node.live_replicas} live replicas: drain it first "
            f"(`fogctl node drain {node.name} --wait`), or pass --force to delete it anyway "
            "(its replicas are then marked failed and replaced on other nodes)"
        )
    await conn.execute(delete(NODES).where(NODES.c.id == node.id))
    detail = f"{node.live_replicas} replicas will be replaced" if node.live_replicas else ""
    return views.Outcome(kind="node", name=node.name, result="deleted", detail=detail)


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(select(literal(1)))
