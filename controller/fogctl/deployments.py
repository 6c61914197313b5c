"""The deployment verbs: apply, get, describe, scale, delete, history, rollout status.

Each command is thin: check the input (no database yet), name the user, run one read or one
write transaction through `session.run`, print. The SQL lives in `queries`, the output shapes
in `views` and `render`, the rollout rules in `rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller import generation
from controller.fogctl import documents, queries, render, rollout, session, spec_text, views
from controller.fogctl.errors import FogctlError, InputError, validation_messages
from controller.fogctl.options import (
    AllUsers,
    DatabaseUrl,
    DeploymentName,
    OutputFormat,
    User,
    parse_duration,
)
from controller.fogctl.render import Output
from schema.api import DeploymentScale
from schema.enums import DeploymentStatus, ReplicaStatus

DEFAULT_HISTORY_ROWS = 10


def username(option: str | None) -> str:
    """The `--user` value; none at all is bad input, before any database work."""
    if option is None or not option.strip():
        session.fail(InputError("--user: no user given: pass --user NAME or set FOG_USER"))
    return option.strip()


async def _owner(conn: AsyncConnection, name: str) -> views.UserRow:
    return await queries.require_user(conn, name)


# --- apply -------------------------------------------------------------------------------------


def apply(
    filename: Annotated[
        list[str],
        typer.Option(
            "--filename",
            "-f",
            help="YAML or JSON file, directory, or - for standard input; repeatable.",
            show_default=False,
        ),
    ],
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create or update deployments from YAML or JSON, all in one transaction.

    A document is the DeploymentCreate shape: name, container_image, target_replicas
    (default 1 on create; left out on update, the current count is kept), resources
    {cpu_cores, memory_mb, gpu_units, storage_gb}, the container spec, and placement
    {node_selector, spread_by, max_per_node, rebalance}. Several documents: a `---` YAML stream
    or a JSON list. Every document is validated before anything is written; each prints
    `deployment/NAME created|configured|unchanged`.
    """
    owner = username(user)
    try:
        docs = documents.load(filename)
    except FogctlError as exc:
        session.fail(exc)

    async def work(engine: AsyncEngine) -> list[views.Outcome]:
        async def tx(conn: AsyncConnection) -> list[views.Outcome]:
            return await queries.apply(conn, await _owner(conn, owner), [d.spec for d in docs])

        return await session.write(engine, tx)

    for outcome in session.run(database_url, work):
        typer.echo(outcome.line())


# --- get ---------------------------------------------------------------------------------------


def _deployment_status(d: views.DeploymentRow) -> str:
    # kubectl shows "Terminating"; we show the controller's status until it records `deleted`.
    if d.deleted_at is not None and d.status is not DeploymentStatus.DELETED:
        return "deleting"
    return d.status.value


def deployments_table(rows: Sequence[views.DeploymentRow], *, wide: bool, with_user: bool) -> Table:
    columns = ["NAME", "READY", "STATUS", "IMAGE"]
    if wide:
        columns += ["CPU", "MEMORY", "GPU", "STORAGE"]
    columns += ["AGE"]
    if wide:
        columns += ["REASON"]
    if with_user:
        columns.insert(0, "USER")
    t = render.table(columns)
    for d in rows:
        cells: list[RenderableType] = [
            d.name,
            f"{d.running_replicas}/{d.target_replicas}",
            render.status_text(_deployment_status(d)),
            d.container_image,
        ]
        if wide:
            r = d.resources
            cells += (
                [
                    render.number(r.cpu_cores),
                    f"{r.memory_mb}Mi",
                    str(r.gpu_units),
                    f"{r.storage_gb}G",
                ]
                if r
                else ["-", "-", "-", "-"]
            )
        cells.append(render.age(d.created_at))
        if wide:
            cells.append(d.reason or "-")
        if with_user:
            cells.insert(0, d.user)
        t.add_row(*cells)
    return t


def _print_list(
    rows: Sequence[views.DeploymentRow] | Sequence[views.ReplicaRow],
    output: Output | None,
    table: Table,
    kind: str,
) -> None:
    if output in (Output.JSON, Output.YAML):
        render.emit(rows, output)
    elif not rows:
        typer.echo(f"No {kind} found.", err=True)
    else:
        render.show(table)


def get_deployments(
    name: Annotated[str | None, typer.Argument(help="Only this deployment.")] = None,
    status: Annotated[
        list[DeploymentStatus] | None,
        typer.Option(
            "--status", "-s", help="Only these statuses; repeatable. Default: all but deleted."
        ),
    ] = None,
    output: OutputFormat = None,
    user: User = None,
    all_users: AllUsers = False,
    database_url: DatabaseUrl = None,
) -> None:
    """List deployments (aliases: deployment, deploy).

    -o json|yaml include each container spec under the apply file's field names, so
    `fogctl get deploy web -o yaml > web.yaml` gives a file that `fogctl apply` takes as it
    is (the read-only keys, such as status and counts, are ignored there).
    """
    owner = None if all_users else username(user)

    async def work(engine: AsyncEngine) -> list[views.Deployment]:
        async def q(conn: AsyncConnection) -> list[views.Deployment]:
            uid = (await _owner(conn, owner)).id if owner is not None else None
            rows = await queries.list_deployments(conn, uid, statuses=status or (), name=name)
            return await queries.with_specs(conn, rows)

        return await session.read(engine, q)

    rows = session.run(database_url, work)
    table = deployments_table(rows, wide=output is Output.WIDE, with_user=all_users)
    _print_list(rows, output, table, "deployments")


def replicas_table(rows: Sequence[views.ReplicaRow], *, wide: bool, with_user: bool) -> Table:
    columns = ["DEPLOYMENT", "REPLICA", "STATUS", "NODE", "CONTAINER", "AGE"]
    if wide:
        columns += ["STARTED", "STOPPED", "ID"]
    if with_user:
        columns.insert(0, "USER")
    t = render.table(columns)
    for r in rows:
        cells: list[RenderableType] = [
            r.deployment,
            render.short(r.id),
            render.status_text(r.status.value),
            r.node or "-",
            render.short(r.container_id, 12),
            render.age(r.created_at),
        ]
        if wide:
            cells += [render.age(r.started_at), render.age(r.stopped_at), str(r.id)]
        if with_user:
            cells.insert(0, r.user)
        t.add_row(*cells)
    return t


def get_replicas(
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Only this deployment's replicas.")
    ] = None,
    status: Annotated[
        list[ReplicaStatus] | None,
        typer.Option("--status", "-s", help="Only these statuses; repeatable."),
    ] = None,
    output: OutputFormat = None,
    user: User = None,
    all_users: AllUsers = False,
    database_url: DatabaseUrl = None,
) -> None:
    """List replicas with their node and container (aliases: replica, rs)."""
    owner = None if all_users else username(user)

    async def work(engine: AsyncEngine) -> list[views.ReplicaRow]:
        async def q(conn: AsyncConnection) -> list[views.ReplicaRow]:
            uid = (await _owner(conn, owner)).id if owner is not None else None
            return await queries.list_replicas(
                conn, uid, statuses=status or (), deployment=deployment
            )

        return await session.read(engine, q)

    rows = session.run(database_url, work)
    table = replicas_table(rows, wide=output is Output.WIDE, with_user=all_users)
    _print_list(rows, output, table, "replicas")


# --- describe, history -------------------------------------------------------------------------


def history_table(rows: Sequence[views.HistoryRow]) -> Table:
    t = render.table(["TIME", "FROM", "TO", "BY", "REASON"])
    for h in rows:
        t.add_row(
            render.utc(h.changed_at),
            h.old_status,
            render.status_text(h.new_status),
            h.changed_by_user or "controller",
            h.reason or "-",
        )
    return t


def _generation(d: views.DeploymentRow) -> str:
    """The spec's generation, and whether the controller has acted on it yet."""
    if not generation.spec_changed(d.generation, d.observed_generation):
        return f"{d.generation} (observed)"
    return f"{d.generation} (controller has observed {d.observed_generation})"


def describe_renderables(d: views.DeploymentDetail) -> list[RenderableType]:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    r = d.resources
    resources = (
        f"{render.number(r.cpu_cores)} cores, {r.memory_mb} MB memory, {r.gpu_units} GPUs, "
        f"{r.storage_gb} GB storage (per replica)"
        if r
        else "none set (the controller starts no replica without resources)"
    )
    status = render.status_text(_deployment_status(d))
    if d.status_changed_at is not None:
        status.append(f" since {render.timestamp(d.status_changed_at)}", style="")
    rows: list[tuple[str, RenderableType]] = [
        ("Name:", d.name),
        ("User:", d.user),
        ("ID:", str(d.id)),
        ("Image:", d.container_image),
        (
            "Replicas:",
            f"{d.target_replicas} desired, {d.running_replicas} running, "
            f"{d.live_replicas} live, {d.stopping_replicas} stopping",
        ),
        ("Status:", status),
        ("Reason:", d.reason or "-"),
        ("Resources:", resources),
        *spec_text.rows(d),
        ("Created:", render.timestamp(d.created_at)),
        ("Updated:", render.timestamp(d.updated_at)),
        ("Generation:", _generation(d)),
    ]
    if d.deleted_at is not None:
        rows.append(("Deleted:", render.timestamp(d.deleted_at)))
    for label, value in rows:
        fields.add_row(label, value)
    out: list[RenderableType] = [fields, Text("")]
    out.append(Text("Replicas:", style="bold"))
    out.append(
        Padding(replicas_table(d.replicas, wide=False, with_user=False), (0, 0, 0, 2))
        if d.replicas
        else Text("  <none>")
    )
    out.append(Text(""))
    shown = len(d.history)
    title = (
        f"History (newest {shown} of {d.history_total}):" if shown < d.history_total else "History:"
    )
    out.append(Text(title, style="bold"))
    out.append(Padding(history_table(d.history), (0, 0, 0, 2)) if d.history else Text("  <none>"))
    return out


def describe_deployment(
    name: DeploymentName,
    history: Annotated[
        int, typer.Option("--history", min=0, help="How many of the newest history rows.")
    ] = DEFAULT_HISTORY_ROWS,
    output: OutputFormat = None,
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show a deployment: spec, resources, status and current reason, replicas, history.

    A deployment deleted already is still shown (the newest one of that name) until a live
    one takes the name again.
    """
    owner = username(user)

    async def work(engine: AsyncEngine) -> views.DeploymentDetail:
        async def q(conn: AsyncConnection) -> views.DeploymentDetail:
            return await queries.describe(
                conn, await _owner(conn, owner), name, history_limit=history
            )

        return await session.read(engine, q)

    detail = session.run(database_url, work)
    if output in (Output.JSON, Output.YAML):
        render.emit(detail, output)
    else:
        render.show(Group(*describe_renderables(detail)))


def deployment_history(
    name: DeploymentName,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the newest N rows.")
    ] = None,
    output: OutputFormat = None,
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show every status change of a deployment, oldest first, with its reason."""
    owner = username(user)

    async def work(engine: AsyncEngine) -> list[views.HistoryRow]:
        async def q(conn: AsyncConnection) -> list[views.HistoryRow]:
            u = await _owner(conn, owner)
            found = await queries.require_deployment(conn, u, name, include_deleted=True)
            rows, _ = await queries.history(conn, u.id, found.id, limit=limit)
            return rows

        return await session.read(engine, q)

    rows = session.run(database_url, work)
    if output in (Output.JSON, Output.YAML):
        render.emit(rows, output)
    elif not rows:
        typer.echo("No history yet: the controller has not recorded a status.", err=True)
    else:
        render.show(history_table(rows))


# --- scale, delete -----------------------------------------------------------------------------


def scale_deployment(
    name: DeploymentName,
    replicas: Annotated[
        int, typer.Option("--replicas", help="The new number of replicas.", show_default=False)
    ],
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set target_replicas; the controller starts or stops replicas to match."""
    owner = username(user)
    try:
        wanted = DeploymentScale(target_replicas=replicas)
    except ValidationError as exc:
        lines = validation_messages(exc, DeploymentScale, options={"target_replicas": "--replicas"})
        session.fail(InputError("\n".join(lines)))

    async def work(engine: AsyncEngine) -> views.Outcome:
        async def tx(conn: AsyncConnection) -> views.Outcome:
            return await queries.scale(
                conn, await _owner(conn, owner), name, wanted.target_replicas
            )

        return await session.write(engine, tx)

    typer.echo(session.run(database_url, work).line())


def delete_deployment(
    name: DeploymentName,
    purge_volumes: Annotated[
        bool,
        typer.Option(
            "--purge-volumes",
            help="Also remove the deployment's named volumes (and their data) from every node.",
        ),
    ] = False,
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Soft-delete a deployment; the controller stops its replicas and records `deleted`.

    Sets deleted_at. The rows stay for audit, and the name is free for a new deployment at
    once. Named volumes live on each node (node-local, not replicated) and are kept unless
    --purge-volumes is given: then the controller removes them from every node once the
    replicas are gone. Host-path volumes are the node's own directories and are never removed.
    """
    owner = username(user)

    async def work(engine: AsyncEngine) -> views.Outcome:
        async def tx(conn: AsyncConnection) -> views.Outcome:
            return await queries.soft_delete(
                conn, await _owner(conn, owner), name, purge_volumes=purge_volumes
            )

        return await session.write(engine, tx)

    typer.echo(session.run(database_url, work).line())


# --- rollout status ----------------------------------------------------------------------------


def rollout_status(
    name: DeploymentName,
    timeout: Annotated[
        str,
        typer.Option("--timeout", help="Give up after this long (90s, 5m, 1h); 0 waits for ever."),
    ] = "15m",
    interval: Annotated[
        str, typer.Option("--interval", help="How often to look at the database.")
    ] = "1s",
    settle: Annotated[
        str | None,
        typer.Option(
            "--settle",
            hidden=True,
            help="No longer used: success waits for the controller to record the edit.",
        ),
    ] = None,
    user: User = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Wait until the deployment runs every replica (exit 0), fails or times out (exit 1).

    Success is status `running` with all target replicas running (or `stopped` when scaled
    to 0). Failure is status `failed` (the reason printed is the newest history row's), a
    delete, or --timeout passing. A status the controller recorded before the deployment's
    last change may be stale: until the controller records that it observed the change
    (its generation), an old failure is waited out and an old success is not trusted.
    """
    owner = username(user)
    try:
        timeout_seconds = parse_duration("--timeout", timeout)
        interval_seconds = max(parse_duration("--interval", interval), 0.05)
    except FogctlError as exc:
        session.fail(exc)
    if settle is not None:
        typer.echo(
            "fogctl: --settle is no longer used and is ignored: success now waits for the "
            "controller to record that it observed the change (its generation)",
            err=True,
        )
    out = render.console()

    async def work(engine: AsyncEngine) -> str:
        u = await session.read(engine, lambda conn: _owner(conn, owner))
        first = await session.read(engine, lambda conn: queries.require_deployment(conn, u, name))
        return await rollout.wait(
            lambda: _reload(engine, u, first),
            name=first.name,
            timeout_seconds=timeout_seconds,
            interval_seconds=interval_seconds,
            out=out,
            echo=typer.echo,
        )

    typer.echo(session.run(database_url, work))


async def _reload(
    engine: AsyncEngine, u: views.UserRow, first: views.DeploymentRow
) -> views.DeploymentRow | None:
    """The deployment `rollout status` watches, again. By id: a deployment deleted while we
    wait must read as deleted, not vanish."""

    async def q(conn: AsyncConnection) -> views.DeploymentRow | None:
        rows = await queries.list_deployments(
            conn, u.id, statuses=list(DeploymentStatus), name=first.name
        )
        return next((r for r in rows if r.id == first.id), None)

    return await session.read(engine, q)
