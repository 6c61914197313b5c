"""PURE: nodes that keep refusing one deployment. Identical start failures on one node are
counted in the deployment's memory; from the second the engine's words become the
deployment's reason, and at `REFUSALS_BEFORE_EXCLUSION` the node is passed over for it until
the refusals lapse (TTL), the node's engine restarts or the operator changes the deployment.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.progress import DeploymentMemory, Refusal

# Identical start failures of one deployment on one node before that node is passed over for
# it (whether the engine's answer was classified transient or permanent) ...
REFUSALS_BEFORE_EXCLUSION = 5
# ... for this long after the last one, or until the node's engine restarts or the operator
# changes the deployment, whichever comes first.
REFUSAL_TTL = timedelta(minutes=10)
# What differs between two failures that are the same failure: container and image ids.
_VOLATILE = re.compile(
    r"\b[0-9a-f]{12,64}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a counted refusal means: `text` is the deployment's reason (with the node's
    name and the engine's words); `excluded`: the node is now passed over for it."""

    text: str
    count: int
    excluded: bool


def excluded(
    mem: DeploymentMemory, up_since: Mapping[uuid.UUID, datetime | None], now: datetime
) -> tuple[DeploymentMemory, set[uuid.UUID]]:
    """Nodes not to try for this deployment now, and the memory without the refusals that
    lapsed (TTL) or whose engine restarted since (`up_since`: each node's up-since mark)."""
    kept: dict[tuple[uuid.UUID, str], Refusal] = {}
    out: set[uuid.UUID] = set()
    for key, r in mem.refusals.items():
        if now - r.last_at > REFUSAL_TTL or up_since.get(key[0]) != r.node_up_since:
            continue
        kept[key] = r
        if r.count >= REFUSALS_BEFORE_EXCLUSION:
            out.add(key[0])
    if len(kept) == len(mem.refusals):
        return mem, out
    return replace(mem, refusals=kept), out


def last_exclusion(mem: DeploymentMemory) -> Refusal | None:
    """The most recent refusal that excludes its node, for the "0/N nodes fit" reason."""
    found = [r for r in mem.refusals.values() if r.count >= REFUSALS_BEFORE_EXCLUSION]
    return max(found, key=lambda r: r.last_at) if found else None


def count_refusal(
    mem: DeploymentMemory,
    node_id: uuid.UUID,
    node_name: str,
    words: str,
    up_since: datetime | None,
    now: datetime,
) -> tuple[DeploymentMemory, Verdict | None]:
    """Count a start failure of the deployment on a node. None for the first of its kind; from
    the second, a `Verdict` whose text is also the deployment's problem while the node is
    still tried."""
    key = (node_id, _VOLATILE.sub("…", words))
    seen = mem.refusals.get(key)
    count = 1 if seen is None or seen.node_up_since != up_since else seen.count + 1
    refusal = Refusal(node_name, words, count, now, up_since)
    changed = replace(mem, refusals={**mem.refusals, key: refusal})
    if count < 2:
        return changed, None
    text = f"node {node_name} refused {count} times: {words}"
    if count < REFUSALS_BEFORE_EXCLUSION:
        return replace(changed, error=text), Verdict(text, count, excluded=False)
    return changed, Verdict(f"{text}; trying other nodes", count, excluded=True)
