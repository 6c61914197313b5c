"""PURE: `scheduler.schedule()` for many calls in a row, in O(log n) per placement instead of
O(n): the reconciler's scheduler cache (controller.placement) holds one.

It gives exactly the placements `schedule()` gives for the same nodes, usage, spread and
placement rules (a hypothesis test holds it to that). Why it can: the score's first part
that varies is a deployment's own replica count on the node, which is zero on all but a
handful of nodes, so the best node is the best fitting node outside that handful, found at
the top of a heap ordered by the rest of the score, or else the best of the handful, looked
at one by one. Host ports are not part of the score, so they are checked as entries surface:
a node holding a requested port is set aside like one holding the deployment's replicas.

The heaps: one per request shape (there are few), node selector (few: operators label by
site and hardware) and `spread_by` label value, each keeping, for every ready node in it that
fits that shape, its score after one more such replica. Entries go stale when a node's usage
changes (a fresh one is pushed into every heap the node is in) and are dropped lazily as
they surface. A selector's nodes are found once, when its heaps are built.

With `spread_by` the score starts with the deployment's replicas in the node's label value:
the values are visited emptiest first, each by its own heap, and the first level (values with
equally few replicas) that has a fitting node gives the placement. That costs a look at
each value's heap top, O(v + log n) for v label values: fine for sites and zones (tens),
not meant for a label as fine as the host name.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from controller.model import ZERO, Node, Resources
from controller.placement_rules import NO_RULES, Label, PlacementRules, label_value
from controller.scheduler import (
    NO_PORTS,
    NodeScore,
    Placement,
    Port,
    ScheduleResult,
    domain_counts,
    explain,
    hold,
    node_score,
    ports_in_use,
    refusals,
    utilisation,
)

# A heap entry: the node's utilisation after one more replica of the heap's shape, its name
# and id (the score without the deployment's count), the node's usage version when pushed,
# and the node's position in `NodeIndex.nodes` (ints hash in C, UUIDs in Python: this is the
# hot loop).
_Entry = tuple[float, str, str, int, int]
_Heap = list[_Entry]
# The heaps built for one (shape, selector, spread_by), by label value ("" without spread_by).
_Group = dict[str, _Heap]
_GroupKey = tuple[Resources, frozenset[Label], str | None]
_NONE_HELD: Mapping[Port, int] = {}


class NodeIndex:
    """Nodes, what is used on each, and the heaps that find the best fitting one quickly."""

    def __init__(
        self,
        nodes: Sequence[Node],
        usage: Mapping[uuid.UUID, Resources],
        held: Mapping[uuid.UUID, Mapping[Port, int]] | None = None,
    ) -> None:
        self.nodes = tuple(nodes)
        self._by_id = {n.id: n for n in self.nodes}
        self._open = [n for n in self.nodes if not refusals(n, ZERO, ZERO)]  # ready, schedulable
        self.used: dict[uuid.UUID, Resources] = {n.id: usage.get(n.id, ZERO) for n in self.nodes}
        # Host ports our live and assumed replicas hold, per node (count per port).
        self.held: dict[uuid.UUID, Counter[Port]] = {
            n.id: Counter((held or {}).get(n.id, _NONE_HELD)) for n in self.nodes
        }
        self._slot = {n.id: k for k, n in enumerate(self.nodes)}
        self._version = [0] * len(self.nodes)
        self._groups: dict[_GroupKey, _Group] = {}
        # Every heap each open node is in, with the heap's request shape: where a fresh entry
        # goes when the node's usage changes.
        self._member: dict[uuid.UUID, list[tuple[Resources, _Heap]]] = {
            n.id: [] for n in self._open
        }

    def _entry(self, n: Node, slot: int, request: Resources) -> _Entry | None:
        used = self.used[n.id]
        if refusals(n, request, used):
            return None
        return (utilisation(n, used + request), n.name, str(n.id), self._version[slot], slot)

    def _group(self, request: Resources, rules: PlacementRules) -> _Group:
        """The heaps for `request` over the open nodes `rules` allow, built on first use."""
        key = (request, rules.node_selector, rules.spread_by)
        group = self._groups.get(key)
        if group is not None:
            return group
        group = {}
        for n in self._open:
            if not rules.matches(n.labels):
                continue
            value = "" if rules.spread_by is None else label_value(n.labels, rules.spread_by)
            if value is None:
                continue  # no spread label: never a candidate for this deployment
            heap = group.get(value)
            if heap is None:
                heap = group[value] = []
            self._member[n.id].append((request, heap))
            entry = self._entry(n, self._slot[n.id], request)
            if entry is not None:
                heap.append(entry)
        for heap in group.values():
            heapq.heapify(heap)
        self._groups[key] = group
        return group

    def add(
        self,
        node_id: uuid.UUID,
        delta: Resources,
        *,
        sign: int = 1,
        ports: Collection[Port] = NO_PORTS,
    ) -> None:
        """Usage on `node_id` changed by `delta` and host `ports` (taken away when `sign` is
        -1)."""
        slot = self._slot.get(node_id)
        if slot is None:
            return
        if ports:
            hold(self.held[node_id], ports, sign)
        used = self.used[node_id]
        if sign > 0:
            self.used[node_id] = used + delta
        else:
            self.used[node_id] = Resources(
                max(used.cpu_cores - delta.cpu_cores, 0.0),
                max(used.memory_mb - delta.memory_mb, 0),
                max(used.gpu_units - delta.gpu_units, 0),
                max(used.storage_gb - delta.storage_gb, 0),
            )
        self._version[slot] += 1
        node = self.nodes[slot]
        for request, heap in self._member.get(node_id, ()):
            entry = self._entry(node, slot, request)
            if entry is not None:
                heapq.heappush(heap, entry)

    def _best_in(self, heap: _Heap, passed: set[int], ports: Collection[Port]) -> _Entry | None:
        """The best fitting entry of `heap` whose node is not `passed` over (holding some of
        the deployment's replicas, or excluded) and holds none of `ports`."""
        version = self._version
        if heap:  # the usual case, without the loop's bookkeeping: the top is good
            entry = heap[0]
            slot = entry[4]
            if entry[3] == version[slot] and slot not in passed and not ports:
                return entry
        set_aside = []
        best: _Entry | None = None
        while heap:
            entry = heap[0]
            slot = entry[4]
            if entry[3] != version[slot]:
                heapq.heappop(heap)  # stale: a fresh entry was pushed when usage changed
                continue
            node = self.nodes[slot]
            if slot in passed or (ports and ports_in_use(node, ports, self.held[node.id])):
                set_aside.append(heapq.heappop(heap))
                continue
            best = entry
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return best

    def _best_holders(
        self,
        request: Resources,
        mine: Mapping[uuid.UUID, int],
        excluded: Collection[uuid.UUID],
        ports: Collection[Port],
        rules: PlacementRules,
    ) -> dict[str, tuple[NodeScore, Node]]:
        """Per label value ("" without `spread_by`), the best node that already holds some of
        the deployment's replicas and can take one more (not at its cap)."""
        best: dict[str, tuple[NodeScore, Node]] = {}
        for node_id, count in mine.items():
            n = self._by_id[node_id]
            used = self.used[node_id]
            if refusals(n, request, used, excluded, ports, self.held[node_id], rules, count):
                continue
            value = "" if rules.spread_by is None else label_value(n.labels, rules.spread_by)
            if value is None:
                continue
            score = node_score(n, count, used + request)
            if value not in best or score < best[value][0]:
                best[value] = (score, n)
        return best

    def _choose(
        self,
        group: _Group,
        request: Resources,
        mine: Mapping[uuid.UUID, int],
        in_value: Mapping[str, int],
        passed: set[int],
        excluded: Collection[uuid.UUID],
        ports: Collection[Port],
        rules: PlacementRules,
    ) -> Node | None:
        """The node `schedule()` would pick for one more replica: label values by level (the
        deployment's replicas in them), fewest first; within the first level that has a
        fitting node, the best by node score."""
        if rules.spread_by is None:  # one heap: its top outside the holders, or the holders
            heap = group.get("")
            entry = self._best_in(heap, passed, ports) if heap is not None else None
            if entry is not None:
                return self.nodes[entry[4]]
            best = self._best_holders(request, mine, excluded, ports, rules).get("")
            return None if best is None else best[1]
        holders: dict[str, tuple[NodeScore, Node]] | None = None
        # Level 0, the values holding none of the deployment's replicas, is most of them:
        # only the few others are sorted.
        empty = [v for v in group if v not in in_value]
        held = sorted((v for v in group if v in in_value), key=in_value.__getitem__)
        levels = [empty] if empty else []
        for v in held:
            if levels and levels[-1] is not empty and in_value[levels[-1][0]] == in_value[v]:
                levels[-1].append(v)
            else:
                levels.append([v])
        for level in levels:
            found: tuple[NodeScore, Node] | None = None
            for value in level:
                entry = self._best_in(group[value], passed, ports)
                candidate: tuple[NodeScore, Node] | None
                if entry is not None:
                    candidate = ((0, entry[0], entry[1], entry[2]), self.nodes[entry[4]])
                else:
                    if holders is None:
                        holders = self._best_holders(request, mine, excluded, ports, rules)
                    candidate = holders.get(value)
                if candidate is not None and (found is None or candidate[0] < found[0]):
                    found = candidate
            if found is not None:
                return found[1]
        return None

    def schedule(
        self,
        replica_ids: Sequence[uuid.UUID],
        request: Resources,
        spread: Mapping[uuid.UUID, int],
        excluded: Collection[uuid.UUID] = (),
        ports: Collection[Port] = NO_PORTS,
        rules: PlacementRules = NO_RULES,
    ) -> ScheduleResult:
        """As `scheduler.schedule()`, and the placements (with their host `ports`) count as
        used from now on."""
        mine = {k: v for k, v in spread.items() if v > 0 and k in self._by_id}
        group = self._group(request, rules)
        in_value = domain_counts((self._by_id[k] for k in mine), rules, mine)
        # Nodes the heaps' tops are passed over on: holders (their score starts higher) and
        # excluded nodes, by position.
        passed = {self._slot[k] for k in mine}
        passed.update(self._slot[k] for k in excluded if k in self._slot)
        placements: list[Placement] = []
        for replica_id in replica_ids:
            best = self._choose(group, request, mine, in_value, passed, excluded, ports, rules)
            if best is None:
                reason = explain(
                    self.nodes, request, self.used, excluded, ports, self.held, rules, mine
                )
                return ScheduleResult(tuple(placements), reason)
            self.add(best.id, request, ports=ports)
            mine[best.id] = mine.get(best.id, 0) + 1
            passed.add(self._slot[best.id])
            if rules.spread_by is not None:
                in_value[label_value(best.labels, rules.spread_by) or ""] += 1
            placements.append(Placement(replica_id, best.id))
        return ScheduleResult(tuple(placements))

    def fitting(
        self,
        request: Resources,
        rules: PlacementRules = NO_RULES,
        ports: Collection[Port] = NO_PORTS,
        excluded: Collection[uuid.UUID] = (),
    ) -> frozenset[uuid.UUID]:
        """The nodes that could take one more replica of `request` now: ready and schedulable,
        with room and the host `ports` free, matched by the selector and carrying the
        `spread_by` label. `max_per_node` is left to the caller, which knows which replicas
        are about to move. O(n): for the occasional rebalance decision, not per placement."""
        return frozenset(
            n.id
            for n in self._open
            if not refusals(n, request, self.used[n.id], excluded, ports, self.held[n.id], rules, 0)
        )
