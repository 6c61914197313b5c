"""PURE: where a deployment may run and how it spreads (its `placement`), and the label syntax
both node labels and selectors follow.

Kubernetes' rules, so an operator's habits carry over: a selector is a set of key=value pairs
that must all be among the node's labels (nodeSelector); `spread_by` names a node label whose
values the replicas spread over with skew at most 1 while every value has room (a topology
spread constraint with maxSkew 1 and whenUnsatisfiable ScheduleAnyway: a full value leaves the
rest to the others rather than replicas pending); `max_per_node` caps the deployment's
replicas on one node (what Swarm calls max-replicas per node). Label keys and values follow
Kubernetes' syntax (an optional DNS-subdomain prefix and `/`, then a name of at most 63
characters of `[A-Za-z0-9-_.]` starting and ending alphanumeric), checked here and by the
database alike.

Labels under `fog.io/` belong to the controller: it sets them from what each engine says about
itself (`engine_labels`), as the kubelet sets `kubernetes.io/arch`, and operators cannot set
them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A node label pair, (key, value).
Label = tuple[str, str]

RESERVED_NODE_LABEL_PREFIX = "fog.io/"
LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253
LABEL_KEY_MAX = LABEL_PREFIX_MAX + 1 + LABEL_NAME_MAX
LABEL_VALUE_MAX = 63

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# Engine-reported labels (docker info: Architecture, OSType; the engine flavour).
ARCH_LABEL = "fog.io/arch"
OS_LABEL = "fog.io/os"
ENGINE_LABEL = "fog.io/engine"
# `uname -m` as engines report it -> Go's GOARCH, the names Kubernetes and image indexes use.
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armhf": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def label_name_problem(name: str, what: str = "name") -> str | None:
    """Why `name` is not a label name (None: it is one)."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > LABEL_NAME_MAX:
        return f"{what} must be at most {LABEL_NAME_MAX} characters, got {len(name)}"
    if not _NAME.fullmatch(name):
        return (
            f"{what} {name!r} must consist of letters, digits, '-', '_' or '.', "
            "and start and end with a letter or digit"
        )
    return None


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a label key: `[prefix/]name`, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"key {key!r}: the prefix before '/' must not be empty"
        if len(prefix) > LABEL_PREFIX_MAX:
            return f"key {key!r}: the prefix must be at most {LABEL_PREFIX_MAX} characters"
        if not all(_DNS_LABEL.fullmatch(part) for part in prefix.split(".")):
            return f"key {key!r}: the prefix must be a DNS subdomain (lower-case, dots between)"
    problem = label_name_problem(name, "name")
    return None if problem is None else f"key {key!r}: {problem}"


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a label value (empty is allowed, as in Kubernetes)."""
    if value == "":
        return None
    problem = label_name_problem(value, "value")
    return None if problem is None else problem


def reserved(key: str) -> bool:
    """A controller-owned node label key."""
    return key.startswith(RESERVED_NODE_LABEL_PREFIX)


def engine_labels(arch: str, os: str, engine: str) -> dict[str, str]:
    """The labels the controller sets on a node from its engine's own report; empty parts are
    left out (an engine that did not say)."""
    labels: dict[str, str] = {}
    if arch:
        labels[ARCH_LABEL] = _GOARCH.get(arch.lower(), arch.lower())
    if os:
        labels[OS_LABEL] = os.lower()
    if engine:
        labels[ENGINE_LABEL] = engine.lower()
    return labels


def selector_text(pairs: Iterable[Label]) -> str:
    """`zone=a,fog.io/arch=arm64`, sorted: the selector as reasons and tables show it."""
    return ",".join(f"{k}={v}" for k, v in sorted(pairs))


@dataclass(frozen=True, slots=True)
class PlacementRules:
    """A deployment's placement (table `deployment_specs` and `deployment_node_selectors`).
    Not part of the spec hash: a change moves only the replicas that no longer fit."""

    node_selector: frozenset[Label] = frozenset()
    spread_by: str | None = None
    max_per_node: int | None = None
    rebalance: bool = True

    @property
    def empty(self) -> bool:
        """Nothing constrains placement (rebalance alone spreads by node, as the default
        scheduler already does)."""
        return not self.node_selector and self.spread_by is None and self.max_per_node is None

    def matches(self, labels: frozenset[Label]) -> bool:
        """Every selector pair is among the node's labels."""
        return self.node_selector <= labels

    @property
    def selector(self) -> str:
        return selector_text(self.node_selector)

    @classmethod
    def of(
        cls,
        node_selector: Mapping[str, str] | None = None,
        spread_by: str | None = None,
        max_per_node: int | None = None,
        rebalance: bool = True,
    ) -> PlacementRules:
        return cls(
            frozenset((node_selector or {}).items()), spread_by or None, max_per_node, rebalance
        )


NO_RULES = PlacementRules()


def label_value(labels: frozenset[Label], key: str) -> str | None:
    """The value of `key` among `labels` (None: the node has no such label)."""
    for k, v in labels:
        if k == key:
            return v
    return None
