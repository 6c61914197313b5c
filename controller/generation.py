"""PURE: what the spec's generation says, for the controller and fogctl alike.

The database counts a deployment's `generation` (each operator change of its spec adds one;
migration 0006); the controller records `observed_generation`, the generation its recorded
status describes, with that status. Comparing the two replaces every timestamp heuristic
("was `updated_at` later than the newest history row?"), which a clock skew or a
controller's own writes could fool, and survives a failover because both are in the
database. Kubernetes' `metadata.generation` / `status.observedGeneration` work the same way.
"""

from __future__ import annotations

from schema.enums import DeploymentStatus

# The observed generation of a deployment the controller never recorded anything for.
NEVER_OBSERVED = 0


def spec_changed(generation: int, observed_generation: int) -> bool:
    """The operator changed the spec since the controller last recorded a status for it."""
    return generation != observed_generation


def failed_is_sticky(status: DeploymentStatus, generation: int, observed_generation: int) -> bool:
    """`failed` stays until the deployment converges or the operator changes its spec: a
    controller that restarts or takes over must not flap it back to scheduled for another
    progress deadline, and an edit is the operator's way to say "try again"."""
    return status is DeploymentStatus.FAILED and not spec_changed(generation, observed_generation)
