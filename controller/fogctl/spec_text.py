"""The container spec as `fogctl describe` prints it: one labelled line (or a few) per field.

Every field is shown, set or not, so an operator can tell "the image's own setting" from a
value: the words in angle brackets say whose default applies. The pull secret is shown by
name only; a credential's registry, login and password are `fogctl secret`'s business.
"""

from __future__ import annotations

import shlex

from controller.fogctl import render
from controller.placement_rules import selector_text
from schema import api

NONE = "<none>"


def _argv(value: list[str] | None) -> str:
    return "<image's>" if value is None else shlex.join(value) or '""'


def _pairs(values: dict[str, str]) -> str:
    return "\n".join(f"{k}={v}" for k, v in sorted(values.items())) or NONE


def _port(p: api.PortResponse) -> str:
    if p.host_port is None:
        return f"{p.container_port}/{p.protocol} (not published)"
    return f"{p.container_port}/{p.protocol} -> host port {p.host_port}"


def _volume(v: api.VolumeResponse) -> str:
    mode = ", read-only" if v.read_only else ""
    if v.name is not None:
        return f"{v.name} -> {v.mount_path} (named volume, on each node{mode})"
    return f"{v.host_path} -> {v.mount_path} (host path{mode})"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{render.number(value)}s"


def _healthcheck(h: api.HealthcheckResponse | None) -> str:
    if h is None:
        return "<image's>"
    parts = [
        f"every {_seconds(h.interval_seconds)}" if h.interval_seconds is not None else None,
        f"timeout {_seconds(h.timeout_seconds)}" if h.timeout_seconds is not None else None,
        f"{h.retries} retries" if h.retries is not None else None,
        f"start period {_seconds(h.start_period_seconds)}"
        if h.start_period_seconds is not None
        else None,
    ]
    shown = [p for p in parts if p]
    return shlex.join(h.command) + (f" ({', '.join(shown)})" if shown else "")


def placement(p: api.PlacementResponse) -> str:
    """One line per rule, in the apply file's order; nothing set reads as "any node"."""
    lines = []
    if p.node_selector:
        lines.append(f"nodes with {selector_text(p.node_selector.items())}")
    else:
        lines.append("any node")
    if p.spread_by is not None:
        lines.append(f"spread over the values of {p.spread_by} (skew at most 1)")
    if p.max_per_node is not None:
        lines.append(f"at most {p.max_per_node} per node")
    lines.append("rebalance " + ("on" if p.rebalance else "off"))
    if len(lines) == 2 and not p.node_selector:
        return f"any node ({lines[1]})"
    return "\n".join(lines)


def rows(spec: api.DeploymentSpecResponse) -> list[tuple[str, str]]:
    """(label, text) for every field of the spec, in the apply file's order."""
    grace = spec.stop_grace_seconds
    return [
        ("Entrypoint:", _argv(spec.entrypoint)),
        ("Command:", _argv(spec.command)),
        ("Env:", _pairs(spec.env)),
        ("Network:", spec.network or "<node default>"),
        ("Ports:", "\n".join(_port(p) for p in spec.ports) or NONE),
        ("Volumes:", "\n".join(_volume(v) for v in spec.volumes) or NONE),
        ("Labels:", _pairs(spec.labels)),
        ("Stop grace:", "<controller default>" if grace is None else f"{grace}s"),
        ("Healthcheck:", _healthcheck(spec.healthcheck)),
        ("Pull secret:", spec.image_pull_secret or NONE),
        ("Placement:", placement(spec.placement)),
    ]
