"""Cluster-wide verbs: nodes and users. These are an administrator's objects, not a user's:
they take no `--user`, and what they show about deployments is only aggregate (a node's
replica count and allocation), never another user's deployment names.

Cordon, uncordon and drain only set the operator flags on the node row (`unschedulable`,
`draining`); the daemon reads them on its next heartbeat and acts (no new placements, or
replicas moved away). Labels are the operator's too, beside the controller's own `fog.io/`
ones in the same column (`node_labels`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import RenderableType
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.fogctl import node_labels, queries, render, session, views
from controller.fogctl.errors import FogctlError, InputError, validation_messages
from controller.fogctl.options import (
    DatabaseUrl,
    NodeName,
    OutputFormat,
    parse_duration,
)
from controller.fogctl.render import Output
from schema.api import NodeCreate, UserCreate
from schema.enums import NodeStatus

NODE_OPTIONS = {
    "cpu_cores": "--cpu",
    "memory_mb": "--memory-mb",
    "gpu_units": "--gpu",
    "storage_gb": "--storage-gb",
    "docker_url": "--docker-url",
    "labels": "--label",
}


def _validated_node(**fields: object) -> NodeCreate:
    try:
        return NodeCreate.model_validate(fields)
    except ValidationError as exc:
        lines = validation_messages(exc, NodeCreate, options=NODE_OPTIONS)
        session.fail(InputError("\n".join(lines)))


def node_add(
    name: NodeName,
    docker_url: Annotated[
        str,
        typer.Option(
            "--docker-url",
            help="The engine's API: unix:///var/run/docker.sock, tcp://HOST:2376 (TLS), ssh://...",
            show_default=False,
        ),
    ],
    cpu: Annotated[
        float | None, typer.Option("--cpu", help="CPU cores to offer; default: detected.")
    ] = None,
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="Memory to offer in MB; default: detected.")
    ] = None,
    gpu: Annotated[int | None, typer.Option("--gpu", help="GPUs to offer; default: 0.")] = None,
    storage_gb: Annotated[
        int | None,
        typer.Option("--storage-gb", help="Disk to offer in GB; default: not limited."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            help="KEY=VALUE, for deployments' node_selector and spread_by; repeatable.",
        ),
    ] = None,
    unschedulable: Annotated[
        bool, typer.Option("--cordoned", help="Add it cordoned: no placements until uncordon.")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a fog node (one Docker engine).

    Capacity left out stays NULL in the row: the daemon detects CPU and memory from the
    engine (`docker info`), offers no GPUs and does not limit storage.
    """
    try:
        labels = node_labels.parse_pairs(label or [])
    except FogctlError as exc:
        session.fail(exc)
    spec = _validated_node(
        name=name,
        docker_url=docker_url,
        cpu_cores=cpu,
        memory_mb=memory_mb,
        gpu_units=gpu,
        storage_gb=storage_gb,
        labels=labels,
        unschedulable=unschedulable,
    )

    async def work(engine: AsyncEngine) -> views.Outcome:
        return await session.write(engine, lambda conn: queries.add_node(conn, spec))

    typer.echo(session.run(database_url, work).line())


def _flags(
    name: str, database_url: str | None, *, unschedulable: bool, draining: bool, verb: str
) -> None:
    async def work(engine: AsyncEngine) -> views.Outcome:
        return await session.write(
            engine,
            lambda conn: queries.set_node_flags(
                conn, name, unschedulable=unschedulable, draining=draining, verb=verb
            ),
        )

    typer.echo(session.run(database_url, work).line())


def node_cordon(name: NodeName, database_url: DatabaseUrl = None) -> None:
    """Mark a node unschedulable: no new replicas go there; running ones stay."""
    _flags(name, database_url, unschedulable=True, draining=False, verb="cordoned")


def node_uncordon(name: NodeName, database_url: DatabaseUrl = None) -> None:
    """Make a node schedulable again (clears cordon and drain)."""
    _flags(name, database_url, unschedulable=False, draining=False, verb="uncordoned")


def node_label(
    name: NodeName,
    labels: Annotated[
        list[str],
        typer.Argument(
            help="KEY=VALUE sets (replacing an old value), KEY- removes.", show_default=False
        ),
    ],
    database_url: DatabaseUrl = None,
) -> None:
    """Set or remove a node's labels, as `kubectl label`: `fogctl node label n1 zone=a gpu-`.

    Deployments select nodes by these (placement.node_selector) and spread over a label's
    values (placement.spread_by). Keys under fog.io/ are the controller's (arch, os, engine,
    from the engine itself) and cannot be set here.
    """
    try:
        edit = node_labels.parse_edit(labels)
    except FogctlError as exc:
        session.fail(exc)

    async def work(engine: AsyncEngine) -> views.Outcome:
        return await session.write(engine, lambda conn: queries.label_node(conn, name, edit))

    typer.echo(session.run(database_url, work).line())


def node_drain(
    name: NodeName,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until no live replica is left on it.")
    ] = False,
    timeout: Annotated[
        str, typer.Option("--timeout", help="With --wait: give up after this long; 0 = never.")
    ] = "10m",
    database_url: DatabaseUrl = None,
) -> None:
    """Cordon a node and ask the controller to move its replicas elsewhere (sets draining)."""
    try:
        timeout_seconds = parse_duration("--timeout", timeout)
    except FogctlError as exc:
        session.fail(exc)
    _flags(name, database_url, unschedulable=True, draining=True, verb="drained")
    if not wait:
        return

    async def work(engine: AsyncEngine) -> str:
        deadline = time.monotonic() + timeout_seconds if timeout_seconds > 0 else None
        said = -1
        while True:
            node = await session.read(engine, lambda conn: queries.require_node(conn, name))
            if node.live_replicas == 0:
                return f"node/{node.name} drained: no live replicas left"
            if node.live_replicas != said:
                typer.echo(f"waiting for node {node.name}: {node.live_replicas} live replicas left")
                said = node.live_replicas
            if deadline is not None and time.monotonic() >= deadline:
                raise FogctlError(
                    f"timed out after {timeout_seconds:g}s: node {node.name} still holds "
                    f"{node.live_replicas} live replicas"
                )
            await asyncio.sleep(1.0)

    typer.echo(session.run(database_url, work))


def node_delete(
    name: NodeName,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even though live replicas are on it.")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove a node row, e.g. a node lost for good.

    Refused while live replicas are on it, unless --force: then they are marked failed
    ("node removed") and replaced on other nodes.
    """

    async def work(engine: AsyncEngine) -> views.Outcome:
        return await session.write(
            engine, lambda conn: queries.delete_node(conn, name, force=force)
        )

    typer.echo(session.run(database_url, work).line())


def _node_status(n: views.NodeRow) -> str:
    flags = [n.status.value]
    if n.draining:
        flags.append("draining")
    elif n.unschedulable:
        flags.append("cordoned")
    return ",".join(flags)


def _share(used: float, capacity: float | None, unit: str = "", missing: str = "auto") -> str:
    """`allocated/capacity`; a NULL capacity is detected by the daemon (`auto`) or, for
    storage, not limited at all."""
    total = f"{render.number(capacity)}{unit}" if capacity is not None else missing
    return f"{render.number(used)}{unit}/{total}"


def nodes_table(rows: Sequence[views.NodeRow], *, wide: bool, show_labels: bool = False) -> Table:
    """The node table; LABELS (kubectl's `--show-labels`) is the last column, and `-o wide`
    includes it."""
    columns = ["NAME", "STATUS", "REPLICAS", "CPU", "MEMORY", "GPU", "STORAGE", "AGE"]
    if wide:
        columns += ["HEARTBEAT", "STORAGE-DRIVER", "STORAGE-LIMITS", "DOCKER URL"]
    if wide or show_labels:
        columns.append("LABELS")
    t = render.table(columns)
    for n in rows:
        a = n.allocated
        cells: list[RenderableType] = [
            n.name,
            render.status_text(_node_status(n)),
            str(n.live_replicas),
            _share(a.cpu_cores, n.cpu_cores),
            _share(a.memory_mb, n.memory_mb, "Mi"),
            _share(a.gpu_units, n.gpu_units if n.gpu_units is not None else 0),
            _share(a.storage_gb, n.storage_gb, "G", missing="unlimited"),
            render.age(n.created_at),
        ]
        if wide:
            cells += [
                render.age(n.last_heartbeat_at),
                n.storage_driver or "-",
                n.storage_limits or "-",
                n.docker_url,
            ]
        if wide or show_labels:
            cells.append(n.labels_problem or node_labels.text(n.labels))
        t.add_row(*cells)
    return t


def get_nodes(
    name: Annotated[str | None, typer.Argument(help="Only this node.")] = None,
    status: Annotated[
        list[NodeStatus] | None,
        typer.Option("--status", "-s", help="Only these statuses; repeatable."),
    ] = None,
    show_labels: Annotated[
        bool, typer.Option("--show-labels", help="Add a LABELS column (-o wide has it too).")
    ] = False,
    output: OutputFormat = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List nodes with status and allocated/capacity per resource (aliases: node, no).

    Allocation sums the resources of live replicas (pending, starting, running) placed on
    the node; capacity `auto` is detected by the daemon from the engine.
    """

    async def work(engine: AsyncEngine) -> list[views.NodeRow]:
        return await session.read(
            engine, lambda conn: queries.list_nodes(conn, statuses=status or (), name=name)
        )

    rows = session.run(database_url, work)
    if output in (Output.JSON, Output.YAML):
        render.emit(rows, output)
    elif not rows:
        typer.echo("No nodes found.", err=True)
    else:
        render.show(nodes_table(rows, wide=output is Output.WIDE, show_labels=show_labels))


# --- users -------------------------------------------------------------------------------------


def user_add(
    name: Annotated[str, typer.Argument(help="The username.", show_default=False)],
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user; select it in other commands with --user NAME or FOG_USER."""
    try:
        spec = UserCreate(username=name)
    except ValidationError as exc:
        session.fail(InputError("\n".join(validation_messages(exc, UserCreate))))

    async def work(engine: AsyncEngine) -> views.UserRow:
        async def tx(conn: AsyncConnection) -> views.UserRow:
            return await queries.add_user(conn, spec)

        return await session.write(engine, tx)

    created = session.run(database_url, work)
    typer.echo(f"user/{created.username} created")


def get_users(output: OutputFormat = None, database_url: DatabaseUrl = None) -> None:
    """List users (alias: user)."""

    async def work(engine: AsyncEngine) -> list[views.UserRow]:
        return await session.read(engine, queries.list_users)

    rows = session.run(database_url, work)
    if output in (Output.JSON, Output.YAML):
        render.emit(rows, output)
    elif not rows:
        typer.echo("No users found.", err=True)
    else:
        t = render.table(["NAME", "ID", "AGE"])
        for u in rows:
            t.add_row(u.username, str(u.id), render.age(u.created_at))
        render.show(t)
