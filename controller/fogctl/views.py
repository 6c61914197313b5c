"""What fogctl shows: the response schemas of `schema.api`, widened with the joined values an
operator wants beside them (user and node names, counts, the current reason, allocation).

These models are the `-o json` / `-o yaml` contract for scripts: field order is the class's,
timestamps are ISO 8601 UTC, and a field is only ever added, never renamed or removed. Tables
are drawn from the same values, so a table and its JSON never disagree.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schema import api


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True)

    cpu_cores: float
    memory_mb: int
    gpu_units: int
    storage_gb: int


class DeploymentRow(api.DeploymentListResponse):
    """One deployment; `reason` and `status_changed_at` are the newest history row's;
    `generation` counts the operator's spec changes and `observed_generation` is the one the
    recorded status describes (see controller.generation)."""

    user: str
    live_replicas: int  # pending + starting + running
    stopping_replicas: int
    resources: Resources | None
    reason: str | None
    status_changed_at: datetime | None
    deleted_at: datetime | None
    generation: int
    observed_generation: int


class ReplicaRow(api.DeploymentReplicaResponse):
    deployment: str
    user: str
    node: str | None


class HistoryRow(api.DeploymentStatusHistoryResponse):
    changed_by_user: str | None


class Deployment(api.DeploymentSpecResponse, DeploymentRow):
    """A deployment with its container spec under the apply file's field names (after the
    row's own fields, as fields are only ever added): `get -o yaml` applies back unchanged."""


class DeploymentDetail(Deployment):
    replicas: list[ReplicaRow] = Field(default_factory=list)
    history: list[HistoryRow] = Field(default_factory=list)
    history_total: int = 0


class NodeRow(api.NodeResponse):
    """A node with what live replicas (pending, starting, running) hold on it."""

    live_replicas: int
    allocated: Resources
    # Set when `labels` (then shown empty) holds no JSON object: written so by plain SQL.
    labels_problem: str | None = None


class UserRow(api.UserResponse):
    pass


class Outcome(BaseModel):
    """What a write did, one per object: `deployment/web created`."""

    kind: str
    name: str
    result: str
    detail: str = ""

    def line(self) -> str:
        tail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}/{self.name} {self.result}{tail}"


class CredentialRow(api.RegistryCredentialResponse):
    """A registry credential as `secret list` shows it: never the password, in any form."""


# Keys of `get`/`describe -o json|yaml` beyond an apply document (ids, status, counts,
# timestamps, replicas, history): `fogctl apply` ignores them, as kubectl apply ignores an
# object's status, so that output applies back as it is.
READ_ONLY_FIELDS = frozenset(DeploymentDetail.model_fields) - frozenset(
    api.DeploymentCreate.model_fields
)
