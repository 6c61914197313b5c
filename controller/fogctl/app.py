"""The whole command tree in one place: `fogctl VERB RESOURCE [NAME] [flags]`, as kubectl.

Each verb is a Typer group whose commands are resources. Aliases (`deploy`, `rs`, `no`) are
the same function registered again under a hidden name, so `--help` stays short while every
alias has full help and shell completion. The commands themselves live in `deployments`,
`cluster` and `db`; registering them here, in reading order, keeps `--help` in that order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from controller import __version__
from controller.fogctl import cluster, credentials, db, deployments

EPILOG = (
    "Start:  fogctl user add alice;  export FOG_USER=alice;  "
    "fogctl apply -f examples/web.yaml;  fogctl rollout status deployment web;  "
    "fogctl get deploy.  Shell completion: fogctl --install-completion."
)

app = typer.Typer(
    name="fogctl",
    help=(
        "Operate a fog-controller cluster: validate and write desired state, and show what "
        "the controller is doing. Exit codes: 0 ok, 1 failed (not found, database "
        "unreachable, rollout failed or timed out), 2 bad input."
    ),
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _group(parent: typer.Typer, name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(help=help_text, no_args_is_help=True)
    parent.add_typer(group, name=name)
    return group


def _resource(group: typer.Typer, fn: Callable[..., Any], name: str, *aliases: str) -> None:
    group.command(name)(fn)
    for alias in aliases:
        group.command(alias, hidden=True)(fn)


DEPLOYMENT = ("deployment", "deployments", "deploy")


def version() -> None:
    """Print fogctl's version."""
    typer.echo(f"fogctl {__version__}")


app.command()(deployments.apply)

get = _group(app, "get", "List deployments, replicas, nodes or users: a table, JSON or YAML.")
_resource(get, deployments.get_deployments, "deployments", "deployment", "deploy")
_resource(get, deployments.get_replicas, "replicas", "replica", "rs")
_resource(get, cluster.get_nodes, "nodes", "node", "no")
_resource(get, cluster.get_users, "users", "user")

_resource(
    _group(app, "describe", "Show a deployment: spec, status and reason, replicas, history."),
    deployments.describe_deployment,
    *DEPLOYMENT,
)
_resource(
    _group(app, "scale", "Set a deployment's number of replicas."),
    deployments.scale_deployment,
    *DEPLOYMENT,
)
_resource(
    _group(app, "delete", "Delete a deployment (soft delete: its rows stay for audit)."),
    deployments.delete_deployment,
    *DEPLOYMENT,
)
_resource(
    _group(app, "history", "Show a deployment's status history."),
    deployments.deployment_history,
    *DEPLOYMENT,
)
rollout = _group(app, "rollout", "Follow a deployment's rollout.")
_resource(
    _group(rollout, "status", "Wait until a deployment runs every replica, fails or times out."),
    deployments.rollout_status,
    *DEPLOYMENT,
)

node = _group(app, "node", "Add fog nodes, label, cordon, uncordon, drain or delete them.")
node.command("add")(cluster.node_add)
node.command("label")(cluster.node_label)
node.command("cordon")(cluster.node_cordon)
node.command("uncordon")(cluster.node_uncordon)
node.command("drain")(cluster.node_drain)
node.command("delete")(cluster.node_delete)

secret = _group(
    app, "secret", "Add, list or delete your private registry logins (image_pull_secret)."
)
secret.command("add")(credentials.secret_add)
secret.command("list")(credentials.secret_list)
secret.command("delete")(credentials.secret_delete)

user = _group(app, "user", "Add users (the owners of deployments).")
user.command("add")(cluster.user_add)

database = _group(app, "db", "Inspect and migrate the database schema.")
database.command("upgrade")(db.upgrade)
database.command("current")(db.current)
database.command("downgrade")(db.downgrade)

app.command()(version)


def main() -> None:
    sys.exit(app())
