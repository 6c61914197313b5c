"""PURE: what the controller refuses to run as written, and what a refusal holds back.

Some specs cannot be run whatever the engines say: a host-path volume outside the directories
the operator allowed (a bind of `/` is root on the node), an image pull secret the user has
no credential for, a credential the key file does not open. Each is judged before anything
is placed, and the deployment becomes `failed` with the reason (`plan.derive_status`), instead
of replicas failing one by one on every node. A refusal holds back every start and every stop
of a replica that would be replaced by one that cannot start (a rollout's old replicas, a
draining node's) unless the target is exceeded: what runs keeps serving. Scale-down and a
deletion still stop.
"""

from __future__ import annotations

from dataclasses import replace

from controller.decide import Decision
from controller.model import Deployment, ReplicaStatus
from controller.plan import Fleet, StopReplica
from controller.runspec import RunSpec, host_path_refusal


def no_credential(name: str) -> str:
    """The problem when the deployment's user has no credential named `name`."""
    return (
        f"image pull secret {name!r}: the deployment's user has no registry credential of "
        f"that name (fogctl secret add {name} --registry ...)"
    )


def unreadable_credential(name: str, words: str) -> str:
    """The problem when the credential does not decrypt: the key file's words."""
    return f"image pull secret {name!r}: {words}"


def refusal(
    run: RunSpec, allowed_host_paths: tuple[str, ...], secret_problem: str | None
) -> str | None:
    """Why the spec cannot be run as written, or None. `secret_problem`: what looking up
    and decrypting its pull secret found (`no_credential`, `unreadable_credential`)."""
    return host_path_refusal(run, allowed_host_paths) or secret_problem


def held_back(decision: Decision, d: Deployment, fleet: Fleet) -> Decision:
    """The decision for a deployment that cannot be run: no creates, placements or starts,
    and an outgoing replica (outdated, or on a draining node) stops only while more than
    the target would still be left, since nothing can replace it; crashes, failures,
    removals, scale-down and deletion go on."""
    if d.deleting:
        return decision

    def outgoing(s: StopReplica) -> bool:
        r = s.replica
        return r.status is not ReplicaStatus.STOPPING and (
            d.outdated(r) or r.node_id in fleet.draining
        )

    live = sum(1 for r in d.replicas if r.live)
    surplus = live - d.target_replicas
    surplus -= sum(1 for s in decision.stops if s.replica.live and not outgoing(s))
    stops = []
    for s in decision.stops:
        if outgoing(s):
            if surplus <= 0:
                continue
            surplus -= 1
        stops.append(s)
    # `actions` counts the plan's actions: one CreateReplicas whatever its count.
    dropped = len(decision.stops) - len(stops) + bool(decision.create)
    dropped += len(decision.place) + len(decision.ensure)
    return replace(
        decision,
        stops=tuple(stops),
        create=0,
        place=(),
        ensure=(),
        actions=decision.actions - dropped,
    )
