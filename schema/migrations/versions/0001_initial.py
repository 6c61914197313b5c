"""Initial schema: the seed's deployment tables, plus users, nodes and updated_at triggers.

Written by hand and frozen: values (enum members, resource bounds, constraint names) are spelled
out here rather than imported from `schema.models`, so that later edits to the models change
what autogenerate reports, never what this revision does.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS: dict[str, tuple[str, ...]] = {
    "node_status": ("unknown", "ready", "not_ready"),
    "deployment_status": ("pending", "scheduled", "running", "stopped", "failed", "deleted"),
    "replica_status": ("pending", "starting", "running", "stopping", "stopped", "failed"),
}

TABLES_WITH_UPDATED_AT = ("deployments", "deployment_resources", "nodes")

# Must match schema.models.SQLITE_NOW_SQL: SQLAlchemy's own text form, zero-padded to microseconds.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _is_sqlite() -> bool:
    # The context's dialect, not op.get_bind(): this also works for `upgrade --sql`.
    return bool(op.get_context().dialect.name == "sqlite")


def _now() -> sa.TextClause:
    return sa.text(f"({SQLITE_NOW})" if _is_sqlite() else "now()")


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    """Aware timestamps; the NOT NULL ones default to the database's clock."""
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else _now(),
    )


def _enum_column(table: str, type_name: str) -> tuple[sa.Column[str], list[sa.CheckConstraint]]:
    """A status column: a native enum on PostgreSQL, text plus a named CHECK on SQLite."""
    values = ENUMS[type_name]
    default = sa.text(f"'{values[0]}'")
    if not _is_sqlite():
        # The type is created once in upgrade(), before any table uses it.
        coltype: sa.types.TypeEngine[str] = postgresql.ENUM(
            *values, name=type_name, create_type=False
        )
        return sa.Column("status", coltype, nullable=False, server_default=default), []
    quoted = ", ".join(f"'{v}'" for v in values)
    check = sa.CheckConstraint(f"status IN ({quoted})", name=op.f(f"ck_{table}_{type_name}"))
    column: sa.Column[str] = sa.Column(
        "status", sa.Enum(*values, name=type_name), nullable=False, server_default=default
    )
    return column, [check]


def upgrade() -> None:
    sqlite = _is_sqlite()
    if not sqlite:
        for type_name, values in ENUMS.items():
            quoted = ", ".join(f"'{v}'" for v in values)
            op.execute(f"CREATE TYPE {type_name} AS ENUM ({quoted})")

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.String(100), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        sa.CheckConstraint("length(username) > 0", name=op.f("ck_users_username_not_empty")),
    )

    node_status, node_checks = _enum_column("nodes", "node_status")
    op.create_table(
        "nodes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("docker_url", sa.String(500), nullable=False),
        node_status,
        sa.Column("cpu_cores", sa.Float(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("gpu_units", sa.Integer(), nullable=True),
        sa.Column("storage_gb", sa.Integer(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("unschedulable", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        _timestamp("last_heartbeat_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_nodes_name_not_empty")),
        sa.CheckConstraint("length(docker_url) > 0", name=op.f("ck_nodes_docker_url_not_empty")),
        sa.CheckConstraint(
            "cpu_cores IS NULL OR cpu_cores > 0", name=op.f("ck_nodes_cpu_cores_positive")
        ),
        sa.CheckConstraint(
            "memory_mb IS NULL OR memory_mb > 0", name=op.f("ck_nodes_memory_mb_positive")
        ),
        sa.CheckConstraint(
            "gpu_units IS NULL OR gpu_units >= 0", name=op.f("ck_nodes_gpu_units_non_negative")
        ),
        sa.CheckConstraint(
            "storage_gb IS NULL OR storage_gb > 0", name=op.f("ck_nodes_storage_gb_positive")
        ),
        *node_checks,
    )
    op.create_index(op.f("ix_nodes_status"), "nodes", ["status"])

    deployment_status, deployment_checks = _enum_column("deployments", "deployment_status")
    op.create_table(
        "deployments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("container_image", sa.String(500), nullable=False),
        deployment_status,
        sa.Column("target_replicas", sa.Integer(), nullable=False, server_default=sa.text("1")),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_deployments_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_deployments_name_not_empty")),
        sa.CheckConstraint(
            "length(container_image) > 0", name=op.f("ck_deployments_container_image_not_empty")
        ),
        sa.CheckConstraint(
            "target_replicas >= 0", name=op.f("ck_deployments_target_replicas_non_negative")
        ),
        *deployment_checks,
    )
    op.create_index("idx_deployments_user_active", "deployments", ["user_id", "deleted_at"])
    # A name is unique among a user's live deployments only: soft-deleted ones keep theirs.
    op.create_index(
        "idx_deployments_user_name_unique",
        "deployments",
        ["user_id", "name"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(op.f("ix_deployments_user_id"), "deployments", ["user_id"])
    op.create_index(op.f("ix_deployments_status"), "deployments", ["status"])
    op.create_index(op.f("ix_deployments_deleted_at"), "deployments", ["deleted_at"])

    replica_status, replica_checks = _enum_column("deployment_replicas", "replica_status")
    op.create_table(
        "deployment_replicas",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=True),
        replica_status,
        sa.Column("container_id", sa.String(255), nullable=True),
        _timestamp("started_at", nullable=True),
        _timestamp("stopped_at", nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_replicas")),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_replicas_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_deployment_replicas_node_id_nodes"),
            ondelete="SET NULL",
        ),
        *replica_checks,
    )
    op.create_index(
        "idx_replicas_deployment_status", "deployment_replicas", ["deployment_id", "status"]
    )
    op.create_index(
        op.f("ix_deployment_replicas_deployment_id"), "deployment_replicas", ["deployment_id"]
    )
    op.create_index(op.f("ix_deployment_replicas_node_id"), "deployment_replicas", ["node_id"])
    op.create_index(op.f("ix_deployment_replicas_status"), "deployment_replicas", ["status"])

    op.create_table(
        "deployment_resources",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=False),
        sa.Column("cpu_cores", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("gpu_units", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("storage_gb", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_resources")),
        sa.UniqueConstraint("deployment_id", name=op.f("uq_deployment_resources_deployment_id")),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_resources_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "cpu_cores >= 0.5 AND cpu_cores <= 32.0",
            name=op.f("ck_deployment_resources_cpu_cores_range"),
        ),
        sa.CheckConstraint(
            "memory_mb >= 512 AND memory_mb <= 65536",
            name=op.f("ck_deployment_resources_memory_mb_range"),
        ),
        sa.CheckConstraint(
            "gpu_units >= 0 AND gpu_units <= 8",
            name=op.f("ck_deployment_resources_gpu_units_range"),
        ),
        sa.CheckConstraint(
            "storage_gb >= 1 AND storage_gb <= 1024",
            name=op.f("ck_deployment_resources_storage_gb_range"),
        ),
    )

    op.create_table(
        "deployment_status_history",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=False),
        sa.Column("old_status", sa.String(50), nullable=False),
        sa.Column("new_status", sa.String(50), nullable=False),
        sa.Column("changed_by", sa.Uuid(), nullable=True),
        _timestamp("changed_at"),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_status_history")),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_status_history_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["changed_by"],
            ["users.id"],
            name=op.f("fk_deployment_status_history_changed_by_users"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(
        "idx_status_history_deployment_time",
        "deployment_status_history",
        ["deployment_id", "changed_at"],
    )
    op.create_index(
        op.f("ix_deployment_status_history_deployment_id"),
        "deployment_status_history",
        ["deployment_id"],
    )
    op.create_index(
        op.f("ix_deployment_status_history_changed_by"),
        "deployment_status_history",
        ["changed_by"],
    )
    op.create_index(
        op.f("ix_deployment_status_history_changed_at"),
        "deployment_status_history",
        ["changed_at"],
    )

    _create_updated_at_triggers(sqlite)


def _create_updated_at_triggers(sqlite: bool) -> None:
    """Move updated_at on every UPDATE, including an operator's hand-written SQL.

    The ORM's onupdate only covers statements SQLAlchemy builds; the controller and the
    operators' tools need a change marker they can trust whoever made the change.
    """
    if not sqlite:
        op.execute(
            """
            CREATE FUNCTION fog_touch_updated_at() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                -- As on SQLite: a statement that sets updated_at itself keeps its value (the
                -- controller stamps its status writes with the history row's time); any other
                -- UPDATE, an operator's raw SQL included, moves it. clock_timestamp(), not
                -- now(): now() is frozen at transaction start, so two updates in one
                -- transaction would not move the stamp.
                IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
                    NEW.updated_at := clock_timestamp();
                END IF;
                RETURN NEW;
            END;
            $$
            """
        )
        for table in TABLES_WITH_UPDATED_AT:
            op.execute(
                f"CREATE TRIGGER trg_{table}_touch_updated_at BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION fog_touch_updated_at()"
            )
        return

    # SQLite cannot assign NEW in a trigger, so an AFTER trigger writes the row again; the
    # WHEN clause skips statements that set updated_at themselves (the ORM does) and stops the
    # second write from firing the trigger again should recursive_triggers be switched on.
    # SQLite's clock has millisecond resolution while SQLAlchemy writes microseconds, so the
    # plain "now" could land just before a value Python wrote within the same millisecond;
    # max(now, previous + 1 ms) keeps the stamp strictly increasing. COALESCE covers an
    # unparseable previous value (hand-written garbage): then "now" wins.
    for table in TABLES_WITH_UPDATED_AT:
        op.execute(
            f"""
            CREATE TRIGGER trg_{table}_touch_updated_at
            AFTER UPDATE ON {table}
            FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
            BEGIN
                UPDATE {table}
                SET updated_at = COALESCE(
                    max(
                        {SQLITE_NOW},
                        strftime('%Y-%m-%d %H:%M:%f000', OLD.updated_at, '+0.001 seconds')
                    ),
                    {SQLITE_NOW}
                )
                WHERE id = NEW.id;
            END
            """
        )


def downgrade() -> None:
    sqlite = _is_sqlite()
    for table in TABLES_WITH_UPDATED_AT:
        op.execute(
            f"DROP TRIGGER IF EXISTS trg_{table}_touch_updated_at"
            + ("" if sqlite else f" ON {table}")
        )
    if not sqlite:
        op.execute("DROP FUNCTION IF EXISTS fog_touch_updated_at()")

    # Children first: with foreign keys enforced, SQLite checks references on DROP TABLE.
    op.drop_table("deployment_status_history")
    op.drop_table("deployment_resources")
    op.drop_table("deployment_replicas")
    op.drop_table("deployments")
    op.drop_table("nodes")
    op.drop_table("users")

    if not sqlite:
        for type_name in reversed(ENUMS):
            op.execute(f"DROP TYPE IF EXISTS {type_name}")
