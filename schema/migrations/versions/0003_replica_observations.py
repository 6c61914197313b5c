"""Replica observations: the spec a replica runs, and what its engine reports about crashes.

`spec_hash` lets a restarted controller tell a rollout's old replicas from new ones (it is also
a container label). `restart_count`, `last_exit_code` and `oom_killed` record what the engine
saw as it restarted the container in place (restart policy `unless-stopped`): the engine owns
restarts, the controller reports them.

Revision ID: 0003_replica_observations
Revises: 0002_control_plane
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_replica_observations"
down_revision: str | Sequence[str] | None = "0002_control_plane"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN works on both backends (and in offline --sql mode, where SQLite's batch
    # mode could not reflect the table).
    op.add_column("deployment_replicas", sa.Column("spec_hash", sa.String(length=64)))
    op.add_column(
        "deployment_replicas",
        sa.Column("restart_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("deployment_replicas", sa.Column("last_exit_code", sa.Integer()))
    op.add_column(
        "deployment_replicas",
        sa.Column("oom_killed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("deployment_replicas") as batch:
        batch.drop_column("oom_killed")
        batch.drop_column("last_exit_code")
        batch.drop_column("restart_count")
        batch.drop_column("spec_hash")
