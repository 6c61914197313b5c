"""PURE: an operator's node labels as typed on the command line, checked and merged.

`fogctl node add --label KEY=VALUE` and `fogctl node label NAME KEY=VALUE KEY-` read their
arguments here, before any database work, so a bad label is exit 2 with the reason and
nothing written. The syntax is Kubernetes' (`controller.placement_rules`, the same check the
database makes on selectors), so a label that can be set can also be selected on.

Keys under `fog.io/` are refused: the controller writes them into the same `nodes.labels`
object from what each engine reports (arch, OS, engine), and an operator's value there would
be overwritten on the next probe, or worse, believed until then. A merge therefore keeps
every key the edit does not name, the controller's included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.fogctl.errors import InputError
from controller.placement_rules import (
    RESERVED_NODE_LABEL_PREFIX,
    label_key_problem,
    label_value_problem,
    reserved,
)

RESERVED_REASON = f"{RESERVED_NODE_LABEL_PREFIX} labels are set by the controller from the engine"
NOT_AN_OBJECT = "<not a JSON object>"


def stored(raw: str | None) -> dict[str, Any] | None:
    """The `nodes.labels` column's text as a mapping (NULL: none); None when it holds no JSON
    object, which plain SQL can write (and on SQLite any text at all)."""
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def shown(raw: str) -> str:
    """Stored text that is no JSON object, for a message: at most 80 characters."""
    return raw if len(raw) <= 80 else raw[:77] + "..."


def key_problem(key: str) -> str | None:
    """Why an operator may not set or remove `key` (None: they may)."""
    if reserved(key):
        return RESERVED_REASON
    return label_key_problem(key)


def _pair_problem(key: str, value: str) -> str | None:
    return key_problem(key) or label_value_problem(value)


@dataclass(frozen=True, slots=True)
class LabelEdit:
    """What `fogctl node label` asks for: keys to set (a new value replaces an old one, as
    kubectl's `--overwrite` would) and keys to remove."""

    set: dict[str, str] = field(default_factory=dict)
    remove: frozenset[str] = frozenset()


def _twice(key: str, seen: set[str], where: str, problems: list[str]) -> bool:
    if key in seen:
        problems.append(f"{where}: key {key!r} is given more than once")
        return True
    seen.add(key)
    return False


def parse_pairs(pairs: Iterable[str], option: str = "--label") -> dict[str, str]:
    """`KEY=VALUE` arguments as a mapping; every problem of every pair at once."""
    out: dict[str, str] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        where = f"{option} {pair}"
        if not sep:
            problems.append(f"{option}: must be KEY=VALUE, got {pair!r}")
            continue
        problem = _pair_problem(key, value)
        if problem is not None:
            problems.append(f"{where}: {problem}")
        elif not _twice(key, seen, where, problems):
            out[key] = value
    if problems:
        raise InputError("\n".join(problems))
    return out


def parse_edit(args: Iterable[str]) -> LabelEdit:
    """`KEY=VALUE` (set) and `KEY-` (remove) arguments, as `kubectl label` reads them."""
    to_set: dict[str, str] = {}
    to_remove: set[str] = set()
    problems: list[str] = []
    seen: set[str] = set()
    for arg in args:
        key, sep, value = arg.partition("=")
        where = f"label {arg}"
        if not sep and arg.endswith("-"):
            key = arg[:-1]
            problem = key_problem(key)
            if problem is not None:
                problems.append(f"{where}: {problem}")
            elif not _twice(key, seen, where, problems):
                to_remove.add(key)
        elif not sep:
            problems.append(f"label: must be KEY=VALUE (set) or KEY- (remove), got {arg!r}")
        elif (problem := _pair_problem(key, value)) is not None:
            problems.append(f"{where}: {problem}")
        elif not _twice(key, seen, where, problems):
            to_set[key] = value
    if problems:
        raise InputError("\n".join(problems))
    if not seen:
        raise InputError("label: give at least one KEY=VALUE (set) or KEY- (remove)")
    return LabelEdit(to_set, frozenset(to_remove))


def merge(current: Mapping[str, Any], edit: LabelEdit) -> tuple[dict[str, Any], list[str]]:
    """The labels after `edit`, and what changed in words (empty: nothing did). Keys the edit
    does not name, the controller's `fog.io/` ones among them, are kept as they are."""
    labels = dict(current)
    changes: list[str] = []
    for key, value in sorted(edit.set.items()):
        if key not in labels:
            changes.append(f"{key}={value} added")
        elif labels[key] != value:
            changes.append(f"{key}={value} (was {labels[key]})")
        labels[key] = value
    for key in sorted(edit.remove):
        if key in labels:
            changes.append(f"{key} removed (was {labels.pop(key)})")
    return labels, changes


def not_set(current: Mapping[str, Any], edit: LabelEdit) -> list[str]:
    """Keys asked to be removed that the node does not have (kubectl warns, and so do we)."""
    return [f"{key} was not set" for key in sorted(edit.remove - set(current))]


def text(labels: Mapping[str, Any]) -> str:
    """`tier=edge,zone=a`, sorted by key; `-` for none: the LABELS column."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
