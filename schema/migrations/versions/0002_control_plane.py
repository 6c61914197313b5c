"""Control plane: the fencing-epoch row, and NOTIFY triggers that wake the controller.

`control_plane` holds one row whose `epoch` the elected leader bumps; its writes check it (see
controller/leader.py). `updated_at` of deployments and resources gets an index for SQLite's
change poll. On PostgreSQL, an insert, delete, or an update of an operator-owned
column of `deployments`, `deployment_resources` or `nodes` sends a NOTIFY on `fog_changes`
with `{"table", "op", "id", "deployment_id"}`; the controller's own status writes and node
heartbeats change no such column and send nothing. SQLite has no NOTIFY: the controller polls
`updated_at` there instead.

Frozen like 0001: names and columns are spelled out, not imported.

Revision ID: 0002_control_plane
Revises: 0001_initial
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_control_plane"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "fog_changes"
# Operator-owned columns per table; json columns compare as text (json has no equality).
WATCHED: dict[str, tuple[str, ...]] = {
    "deployments": ("name", "container_image", "target_replicas", "deleted_at", "user_id"),
    "deployment_resources": ("cpu_cores", "memory_mb", "gpu_units", "storage_gb"),
    "nodes": (
        "name",
        "docker_url",
        "cpu_cores",
        "memory_mb",
        "gpu_units",
        "storage_gb",
        "labels::text",
        "unschedulable",
        "draining",
    ),
}
DEPLOYMENT_KEY = {"deployments": "id", "deployment_resources": "deployment_id", "nodes": None}


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def upgrade() -> None:
    op.create_table(
        "control_plane",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_control_plane_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_control_plane")),
    )
    op.execute("INSERT INTO control_plane (id, epoch) VALUES (1, 0)")
    # The SQLite poll asks "what changed since T?" every second: index the question.
    op.create_index(op.f("ix_deployments_updated_at"), "deployments", ["updated_at"])
    op.create_index(
        op.f("ix_deployment_resources_updated_at"), "deployment_resources", ["updated_at"]
    )
    if _is_sqlite():
        return
    for table, columns in WATCHED.items():
        old = ", ".join(f"OLD.{c}" for c in columns)
        new = ", ".join(f"NEW.{c}" for c in columns)
        key = DEPLOYMENT_KEY[table]
        deployment = f"row.{key}" if key else "NULL"
        op.execute(
            f"""
            CREATE FUNCTION fog_notify_{table}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            DECLARE
                row {table}%ROWTYPE;
            BEGIN
                IF TG_OP = 'UPDATE' AND ROW({old}) IS NOT DISTINCT FROM ROW({new}) THEN
                    RETURN NULL;  -- only controller-owned columns moved
                END IF;
                IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
                PERFORM pg_notify('{CHANNEL}', json_build_object(
                    'table', TG_TABLE_NAME,
                    'op', lower(TG_OP),
                    'id', row.id,
                    'deployment_id', {deployment}
                )::text);
                RETURN NULL;
            END;
            $$
            """
        )
        op.execute(
            f"CREATE TRIGGER trg_{table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION fog_notify_{table}()"
        )


def downgrade() -> None:
    if not _is_sqlite():
        for table in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_notify ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS fog_notify_{table}()")
    op.drop_index(op.f("ix_deployment_resources_updated_at"), table_name="deployment_resources")
    op.drop_index(op.f("ix_deployments_updated_at"), table_name="deployments")
    op.drop_table("control_plane")
