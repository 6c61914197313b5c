"""Deployment generations and the controller's persisted progress, in their own 1:1 table.

`deployment_controller_state` holds, per deployment, `generation` (the operator's spec
version, counted by the database) and what the controller needs to resume exactly where a
previous leader stopped: `observed_generation` (the generation its recorded status
describes), the crash backoff (`crash_failures`, `retry_at`), the progress-deadline start
(`progress_since`), `stable_since` and the latest start failure (`last_error`).

A table of its own, not columns on `deployments`: the seed's four tables stay exactly as
specified, and the controller's frequent state writes neither move `deployments.updated_at`
(which the SQLite poll watches) nor fire the NOTIFY triggers.

`generation` is counted by triggers on both backends, because operators edit with plain SQL:
inserting a deployment makes its row (generation 1); any change of `container_image`,
`target_replicas` or `deleted_at`, and any insert, change or delete of its
`deployment_resources` row, adds one. The controller's writes (status, `updated_at`) touch no
such column. Existing deployments start at generation 1, observed when their newest status
row is not older than their last change (the rule this revision replaces, applied once).

Frozen like 0001: names and columns are spelled out, not imported.

Revision ID: 0006_deployment_generation
Revises: 0005_node_engine_facts
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006_deployment_generation"
down_revision: str | Sequence[str] | None = "0005_node_engine_facts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "deployment_controller_state"
# Must match schema.models: SQLITE_NEW_UUID_SQL and sqlite_uuid_check().
SQLITE_NEW_UUID = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)
_HEX = "[0-9a-fA-F]"
UUID_GLOB = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
# The operator's spec: a change of any of these is a new generation.
SPEC_COLUMNS = ("container_image", "target_replicas", "deleted_at")
RESOURCE_COLUMNS = ("cpu_cores", "memory_mb", "gpu_units", "storage_gb")
BUMP = f"UPDATE {TABLE} SET generation = generation + 1 WHERE deployment_id = "
SQLITE_TRIGGERS = (
    "trg_deployments_generation_insert",
    "trg_deployments_generation",
    "trg_deployment_resources_generation_insert",
    "trg_deployment_resources_generation",
    "trg_deployment_resources_generation_delete",
)


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _uuid_check(c: str) -> str:
    return f"typeof({c}) IN ('text', 'null') AND length({c}) = 36 AND {c} GLOB '{UUID_GLOB}'"


def upgrade() -> None:
    sqlite = _is_sqlite()
    if sqlite:
        uid: sa.types.TypeEngine[Any] = sa.String(36, collation="NOCASE")
        id_default = sa.text(f"({SQLITE_NEW_UUID})")
    else:
        uid, id_default = sa.Uuid(), sa.text("gen_random_uuid()")
    checks = (
        [
            sa.CheckConstraint(_uuid_check(c), name=op.f(f"ck_{TABLE}_{c}_uuid"))
            for c in ("id", "deployment_id")
        ]
        if sqlite
        else []
    )
    op.create_table(
        TABLE,
        sa.Column("id", uid, nullable=False, server_default=id_default),
        sa.Column("deployment_id", uid, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default=sa.text("1")),
        sa.Column(
            "observed_generation", sa.BigInteger(), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("crash_failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stable_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.CheckConstraint("generation >= 1", name=op.f(f"ck_{TABLE}_generation_positive")),
        sa.CheckConstraint(
            "observed_generation >= 0 AND observed_generation <= generation",
            name=op.f(f"ck_{TABLE}_observed_generation_range"),
        ),
        sa.CheckConstraint(
            "crash_failures >= 0", name=op.f(f"ck_{TABLE}_crash_failures_non_negative")
        ),
        *checks,
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f(f"fk_{TABLE}_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
        sa.UniqueConstraint("deployment_id", name=op.f(f"uq_{TABLE}_deployment_id")),
    )
    # One row per deployment; observed when no change came after the newest status row.
    op.execute(
        f"""
        INSERT INTO {TABLE} (deployment_id, generation, observed_generation)
        SELECT d.id, 1, CASE WHEN d.updated_at <= (
            SELECT max(h.changed_at) FROM deployment_status_history AS h
            WHERE h.deployment_id = d.id
        ) THEN 1 ELSE 0 END
        FROM deployments AS d
        """
    )
    if sqlite:
        _sqlite_triggers()
    else:
        _pg_triggers()


def _pg_triggers() -> None:
    old = ", ".join(f"OLD.{c}" for c in SPEC_COLUMNS)
    new = ", ".join(f"NEW.{c}" for c in SPEC_COLUMNS)
    op.execute(
        f"""
        CREATE FUNCTION fog_generation_deployments() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO {TABLE} (deployment_id) VALUES (NEW.id)
                ON CONFLICT (deployment_id) DO NOTHING;
            ELSIF ROW({old}) IS DISTINCT FROM ROW({new}) THEN
                {BUMP}NEW.id;
            END IF;
            RETURN NULL;
        END;
        $$
        """
    )
    old = ", ".join(f"OLD.{c}" for c in (*RESOURCE_COLUMNS, "deployment_id"))
    new = ", ".join(f"NEW.{c}" for c in (*RESOURCE_COLUMNS, "deployment_id"))
    # Only UPDATEs: a resources row deleted by a deployment's cascade finds no state row
    # (deleted by the same cascade) and bumps nothing, instead of failing a foreign key.
    op.execute(
        f"""
        CREATE FUNCTION fog_generation_deployment_resources() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND ROW({old}) IS NOT DISTINCT FROM ROW({new}) THEN
                RETURN NULL;  -- only updated_at moved
            END IF;
            IF TG_OP <> 'INSERT' THEN
                {BUMP}OLD.deployment_id;
            END IF;
            IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.deployment_id <> OLD.deployment_id)
            THEN
                {BUMP}NEW.deployment_id;
            END IF;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_deployments_generation AFTER INSERT OR UPDATE ON deployments "
        "FOR EACH ROW EXECUTE FUNCTION fog_generation_deployments()"
    )
    op.execute(
        "CREATE TRIGGER trg_deployment_resources_generation "
        "AFTER INSERT OR UPDATE OR DELETE ON deployment_resources "
        "FOR EACH ROW EXECUTE FUNCTION fog_generation_deployment_resources()"
    )


def _sqlite_triggers() -> None:
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in SPEC_COLUMNS)
    res_changed = " OR ".join(
        f"NEW.{c} IS NOT OLD.{c}" for c in (*RESOURCE_COLUMNS, "deployment_id")
    )
    statements = (
        f"""
        CREATE TRIGGER trg_deployments_generation_insert AFTER INSERT ON deployments
        FOR EACH ROW BEGIN
            INSERT OR IGNORE INTO {TABLE} (deployment_id) VALUES (NEW.id);
        END
        """,
        f"""
        CREATE TRIGGER trg_deployments_generation
        AFTER UPDATE OF {", ".join(SPEC_COLUMNS)} ON deployments
        FOR EACH ROW WHEN {changed}
        BEGIN
            {BUMP}NEW.id;
        END
        """,
        f"""
        CREATE TRIGGER trg_deployment_resources_generation_insert
        AFTER INSERT ON deployment_resources
        FOR EACH ROW BEGIN
            {BUMP}NEW.deployment_id;
        END
        """,
        f"""
        CREATE TRIGGER trg_deployment_resources_generation
        AFTER UPDATE ON deployment_resources
        FOR EACH ROW WHEN {res_changed}
        BEGIN
            {BUMP}OLD.deployment_id;
            {BUMP}NEW.deployment_id AND NEW.deployment_id IS NOT OLD.deployment_id;
        END
        """,
        f"""
        CREATE TRIGGER trg_deployment_resources_generation_delete
        AFTER DELETE ON deployment_resources
        FOR EACH ROW BEGIN
            {BUMP}OLD.deployment_id;
        END
        """,
    )
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if _is_sqlite():
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_deployments_generation ON deployments")
        op.execute(
            "DROP TRIGGER IF EXISTS trg_deployment_resources_generation ON deployment_resources"
        )
        op.execute("DROP FUNCTION IF EXISTS fog_generation_deployments()")
        op.execute("DROP FUNCTION IF EXISTS fog_generation_deployment_resources()")
    op.drop_table(TABLE)
