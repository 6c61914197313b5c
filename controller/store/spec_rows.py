"""Reading the container spec: the rows of `deployment_specs` and its child tables, for the
deployments a load reads, as one `controller.runspec.RunSpec` and one
`controller.placement_rules.PlacementRules` each; and the statements for a pull's registry
login and for the volume purges the operator asked for.

One query per spec table, scoped as the load's replica query is, so a load stays a fixed
number of queries whatever the count. A value the controller cannot use (an argument list
with a number in it, written by hand) raises ValueError naming the row: the load's tolerant
path (`UnusableRows`) then finds it, reports it once as the deployment's reason and holds
that deployment, instead of running its containers with a spec it silently got wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    Update,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import readmodel
from controller.model import DeploymentStatus
from controller.placement_rules import Label, PlacementRules
from controller.readmodel import (
    CREDENTIALS,
    DEPLOYMENTS,
    ENV,
    LABELS,
    PORTS,
    SELECTORS,
    SPECS,
    VOLUMES,
)
from controller.runspec import HealthSpec, PortSpec, RunSpec, VolumeSpec
from controller.store.unusable import argv_problem, check_numbers, label_problem

_SPEC_NUMBERS = (
    ("stop_grace_seconds", int),
    ("healthcheck_retries", int),
    ("healthcheck_interval_seconds", (int, float)),
    ("healthcheck_timeout_seconds", (int, float)),
    ("healthcheck_start_period_seconds", (int, float)),
    ("max_per_node", int),
)
_PORT_NUMBERS = (("container_port", int), ("host_port", int))


class _Parts:
    """What the child tables hold for one deployment, gathered before the RunSpec is made."""

    __slots__ = ("env", "labels", "ports", "selector", "volumes")

    def __init__(self) -> None:
        self.env: list[tuple[str, str]] = []
        self.labels: list[tuple[str, str]] = []
        self.ports: list[PortSpec] = []
        self.volumes: list[VolumeSpec] = []
        self.selector: list[Label] = []


class Specs:
    """What `read_specs` found, per deployment that has any spec row: how its containers run
    and where they may run. A deployment not among them runs as its image says (`EMPTY_RUN`)
    wherever it fits (`NO_RULES`)."""

    __slots__ = ("placements", "runs")

    def __init__(
        self, runs: dict[uuid.UUID, RunSpec], placements: dict[uuid.UUID, PlacementRules]
    ) -> None:
        self.runs = runs
        self.placements = placements


async def read_specs(
    conn: AsyncConnection,
    scope: ColumnElement[bool],
    skip: Callable[[Table], ColumnElement[bool]],
) -> Specs:
    """The RunSpec and placement of every deployment in `scope` (a condition on DEPLOYMENTS)
    that has any spec row."""

    async def rows(table: Table, *columns: Any) -> list[Any]:
        query = (
            select(*(columns or (table,)))
            .join(DEPLOYMENTS, DEPLOYMENTS.c.id == table.c.deployment_id)
            .where(scope, skip(table))
        )
        return list((await conn.execute(query)).all())

    parts: dict[uuid.UUID, _Parts] = {}

    def of(deployment_id: uuid.UUID) -> _Parts:
        return parts.setdefault(deployment_id, _Parts())

    for row in await rows(ENV):
        of(row.deployment_id).env.append((_text(row, "name"), _text(row, "value")))
    for row in await rows(LABELS):
        of(row.deployment_id).labels.append((_text(row, "key"), _text(row, "value")))
    for row in await rows(PORTS):
        check_numbers(row, _PORT_NUMBERS)
        of(row.deployment_id).ports.append(
            PortSpec(row.container_port, row.host_port, _text(row, "protocol"))
        )
    # read_only raw: SQLAlchemy's SQLite boolean reads any text as True ('false' included).
    volume_columns = [c for c in VOLUMES.c if c.name != "read_only"]
    read_only = type_coerce(VOLUMES.c.read_only, Integer).label("read_only")
    for row in await rows(VOLUMES, *volume_columns, read_only):
        if row.read_only not in (0, 1):
            raise ValueError(
                f"deployment_volumes.read_only = {row.read_only!r} is not a boolean (row {row.id})"
            )
        of(row.deployment_id).volumes.append(
            VolumeSpec(row.mount_path, row.name, row.host_path, bool(row.read_only))
        )
    for row in await rows(SELECTORS):
        key, value = _text(row, "key"), _text(row, "value")
        for problem in (
            label_problem(SELECTORS.c.key, key),
            label_problem(SELECTORS.c.value, value),
        ):
            if problem is not None:
                raise ValueError(
                    f"deployment_node_selectors {key}={value}: {problem} "
                    f"(row {row.deployment_id}/{key})"
                )
        of(row.deployment_id).selector.append((key, value))
    # rebalance raw, as read_only above.
    spec_columns = [c for c in SPECS.c if c.name != "rebalance"]
    rebalance = type_coerce(SPECS.c.rebalance, Integer).label("rebalance")
    specs = {row.deployment_id: row for row in await rows(SPECS, *spec_columns, rebalance)}
    runs: dict[uuid.UUID, RunSpec] = {}
    placements: dict[uuid.UUID, PlacementRules] = {}
    for deployment_id in specs.keys() | parts.keys():
        spec, found = specs.get(deployment_id), parts.get(deployment_id, _Parts())
        runs[deployment_id] = _run(spec, found)
        placements[deployment_id] = _placement(spec, found.selector)
    return Specs(runs, placements)


def _placement(spec: Any | None, selector: list[Label]) -> PlacementRules:
    if spec is not None:
        if spec.rebalance not in (0, 1):
            raise ValueError(
                f"deployment_specs.rebalance = {spec.rebalance!r} is not a boolean (row {spec.id})"
            )
        if spec.spread_by is not None:
            problem = label_problem(SPECS.c.spread_by, spec.spread_by)
            if problem is not None:
                raise ValueError(
                    f"deployment_specs.spread_by = {spec.spread_by!r} {problem} (row {spec.id})"
                )
    return readmodel.placement_of(spec, selector)


def _text(row: Any, name: str) -> str:
    value = getattr(row, name)
    if not isinstance(value, str):
        raise TypeError(f"{name} = {value!r} is not text")
    return value


def _argv(spec: Any, name: str) -> tuple[str, ...] | None:
    value = getattr(spec, name)
    if value is None:
        return None
    problem = argv_problem(value)
    if problem is not None:
        raise ValueError(f"deployment_specs.{name} = {value!r} {problem} (row {spec.id})")
    return tuple(value)


def _run(spec: Any | None, parts: _Parts) -> RunSpec:
    health: HealthSpec | None = None
    entrypoint = command = network = grace = secret = None
    if spec is not None:
        check_numbers(spec, _SPEC_NUMBERS)
        entrypoint, command = _argv(spec, "entrypoint"), _argv(spec, "command")
        network, grace, secret = spec.network, spec.stop_grace_seconds, spec.image_pull_secret
        health_command = _argv(spec, "healthcheck_command")
        if health_command is not None:
            health = HealthSpec(
                health_command,
                _seconds(spec.healthcheck_interval_seconds),
                _seconds(spec.healthcheck_timeout_seconds),
                spec.healthcheck_retries,
                _seconds(spec.healthcheck_start_period_seconds),
            )
    return RunSpec(
        entrypoint=entrypoint,
        command=command,
        env=tuple(sorted(parts.env)),
        network=network,
        ports=tuple(sorted(parts.ports, key=_port_order)),
        volumes=tuple(sorted(parts.volumes, key=lambda v: v.mount_path)),
        labels=tuple(sorted(parts.labels)),
        stop_grace_seconds=grace,
        healthcheck=health,
        image_pull_secret=secret,
    )


def _seconds(value: float | None) -> float | None:
    # SQLite gives back 5 where 5.0 was meant: one value, one hash, whichever was typed.
    return None if value is None else float(value)


def _port_order(p: PortSpec) -> tuple[int, int, str]:
    # PortSpec's own order, except that no host port (None) sorts first instead of failing
    # to compare with a number.
    return (p.container_port, -1 if p.host_port is None else p.host_port, p.protocol)


# --- registry logins and volume purges ---------------------------------------------------------


def registry_credential_query(user_id: uuid.UUID, name: str) -> Select[Any]:
    """A user's registry login by name: (registry_host, username, password_encrypted)."""
    c = CREDENTIALS
    return select(c.c.registry_host, c.c.username, c.c.password_encrypted).where(
        c.c.user_id == user_id, c.c.name == name
    )


def to_purge_query() -> Select[Any]:
    """Deployments that are deleted (status or `deleted_at`) and whose operator asked for
    their named volumes to be removed (`fogctl delete --purge-volumes`)."""
    d = DEPLOYMENTS
    return (
        select(d.c.id)
        .join(SPECS, SPECS.c.deployment_id == d.c.id)
        .where(
            SPECS.c.purge_volumes.is_(True),
            or_(d.c.status == DeploymentStatus.DELETED.value, d.c.deleted_at.is_not(None)),
        )
        .order_by(d.c.id)
    )


def purged_statement(deployment_id: uuid.UUID) -> Update:
    """The request is done: clear it (a later delete may ask again)."""
    return (
        update(SPECS)
        .where(SPECS.c.deployment_id == deployment_id, SPECS.c.purge_volumes.is_(True))
        .values(purge_volumes=False)
    )
