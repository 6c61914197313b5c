"""Node engine facts: what each node's engine says about itself, as the controller read it.

`storage_driver` and `engine_version` come from `docker info`; `storage_limits` is what the
controller concluded from them (controller/storage.py): `enforced` where the engine caps a
container's disk at create, `monitored` where the controller measures each container's
writable layer and replaces a replica over its `storage_gb`. All three are controller-owned
(written on a probe, NULL until the first one) and not watched by the NOTIFY triggers.

Frozen like 0001: names and columns are spelled out, not imported.

Revision ID: 0005_node_engine_facts
Revises: 0004_uuid_text_and_defaults
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_node_engine_facts"
down_revision: str | Sequence[str] | None = "0004_uuid_text_and_defaults"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK_NAME = "ck_nodes_storage_limits_known"


def upgrade() -> None:
    op.add_column("nodes", sa.Column("storage_driver", sa.String(length=64)))
    op.add_column("nodes", sa.Column("engine_version", sa.String(length=64)))
    # Written out: Alembic adds a column's CHECK as a separate ALTER, which SQLite lacks
    # outside batch mode (and batch mode cannot reflect in offline --sql mode). A named
    # column constraint in ADD COLUMN works on both backends.
    op.execute(
        "ALTER TABLE nodes ADD COLUMN storage_limits VARCHAR(16) "
        f"CONSTRAINT {CHECK_NAME} CHECK (storage_limits IN ('enforced', 'monitored'))"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table("nodes") as batch:
            batch.drop_constraint(op.f(CHECK_NAME), type_="check")
            batch.drop_column("storage_limits")
            batch.drop_column("engine_version")
            batch.drop_column("storage_driver")
        return
    op.drop_column("nodes", "storage_limits")  # its CHECK goes with it
    op.drop_column("nodes", "engine_version")
    op.drop_column("nodes", "storage_driver")
