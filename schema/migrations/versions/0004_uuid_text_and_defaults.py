"""Ids as canonical UUID text on SQLite, and database-made ids on both backends.

SQLAlchemy's `Uuid` type kept 32 hex digits on SQLite, so an id an operator typed in the usual
form ('8f0c2b1e-4a5d-…', 36 characters) matched none of the controller's lookups and its rows
were never acted on. From here on SQLite stores the canonical text, each uuid column (ids and
foreign keys: the sqlite3 shell runs with foreign keys off) carries a named CHECK
`ck_<table>_<column>_uuid`, and the columns compare without regard to case (NOCASE), as
PostgreSQL's uuid type does. Every id column gets a default made by the database
(`gen_random_uuid()` on PostgreSQL, a random version-4 expression on SQLite), so plain SQL may
leave ids out.

PostgreSQL only gains the defaults. SQLite cannot alter a column's type or add a CHECK, so its
six tables are rebuilt: the rows are copied with their ids rewritten (32 hex digits become
canonical text; text already canonical is kept), then indexes and update triggers are made
again. env.py runs SQLite migrations with foreign keys off, so dropping an old table cascades
nothing; `PRAGMA foreign_key_check` must come back clean before the transaction commits. A
value that is no UUID at all stops the upgrade with a message naming the table, the column
and an example, before anything is changed. The downgrade reverses all of it.

Frozen like 0001: names, columns and SQL are spelled out here, not imported.

Revision ID: 0004_uuid_text_and_defaults
Revises: 0003_replica_observations
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004_uuid_text_and_defaults"
down_revision: str | Sequence[str] | None = "0003_replica_observations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Must match schema.models: SQLITE_NOW_SQL, SQLITE_NEW_UUID_SQL and sqlite_uuid_check().
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
SQLITE_NEW_UUID = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)
_HEX = "[0-9a-fA-F]"
UUID_GLOB = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))

ID_TABLES = (
    "users",
    "nodes",
    "deployments",
    "deployment_replicas",
    "deployment_resources",
    "deployment_status_history",
)
# Every uuid column, per table, in column order.
UUID_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id",),
    "nodes": ("id",),
    "deployments": ("id", "user_id"),
    "deployment_replicas": ("id", "deployment_id", "node_id"),
    "deployment_resources": ("id", "deployment_id"),
    "deployment_status_history": ("id", "deployment_id", "changed_by"),
}
TABLES_WITH_UPDATED_AT = ("deployments", "deployment_resources", "nodes")
ENUMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nodes": ("node_status", ("unknown", "ready", "not_ready")),
    "deployments": (
        "deployment_status",
        ("pending", "scheduled", "running", "stopped", "failed", "deleted"),
    ),
    "deployment_replicas": (
        "replica_status",
        ("pending", "starting", "running", "stopping", "stopped", "failed"),
    ),
}


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def upgrade() -> None:
    if not _is_sqlite():
        for table in ID_TABLES:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT gen_random_uuid()")
        return
    _refuse_unconvertible()
    for table in ID_TABLES:
        _rebuild(table, canonical=True, convert=_to_canonical)
    _check_foreign_keys()


def downgrade() -> None:
    if not _is_sqlite():
        for table in ID_TABLES:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN id DROP DEFAULT")
        return
    for table in ID_TABLES:
        _rebuild(table, canonical=False, convert=lambda c: f"lower(replace({c}, '-', ''))")
    _check_foreign_keys()


# --- SQLite -----------------------------------------------------------------------------------


def _to_canonical(c: str) -> str:
    """SQL turning 32 hex digits into canonical text; anything else is kept as it is."""
    parts = " || '-' || ".join(f"substr({c}, {start}, {n})" for start, n in _GROUPS)
    return f"CASE WHEN length({c}) = 32 THEN lower({parts}) ELSE {c} END"


_GROUPS = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))


def _uuid_check(c: str) -> str:
    return f"typeof({c}) IN ('text', 'null') AND length({c}) = 36 AND {c} GLOB '{UUID_GLOB}'"


def _refuse_unconvertible() -> None:
    """Stop before changing anything when a stored id is no UUID in either form."""
    if context.is_offline_mode():
        return
    bind = op.get_bind()
    bad: list[str] = []
    for table, columns in UUID_COLUMNS.items():
        for c in columns:
            row = bind.execute(
                sa.text(
                    f"SELECT count(*), min({c}) FROM {table} "
                    f"WHERE {c} IS NOT NULL AND NOT ({_uuid_check(_to_canonical(c))})"
                )
            ).one()
            if row[0]:
                bad.append(f"{table}.{c}: {row[0]} value(s), e.g. {row[1]!r}")
    if bad:
        raise RuntimeError(
            "cannot convert ids to canonical UUID text; fix or delete these rows and run the "
            "migration again: " + "; ".join(bad)
        )


def _check_foreign_keys() -> None:
    if context.is_offline_mode():
        return
    rows = op.get_bind().execute(sa.text("PRAGMA foreign_key_check")).all()
    if rows:
        shown = ", ".join(f"{r[0]} rowid {r[1]} -> {r[2]}" for r in rows[:10])
        raise RuntimeError(f"foreign keys broken by the id rewrite ({len(rows)}): {shown}")


def _now() -> sa.TextClause:
    return sa.text(f"({SQLITE_NOW})")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else _now(),
    )


def _status(table: str) -> tuple[sa.Column[object], sa.CheckConstraint]:
    type_name, values = ENUMS[table]
    quoted = ", ".join(f"'{v}'" for v in values)
    column: sa.Column[object] = sa.Column(
        "status",
        sa.Enum(*values, name=type_name),
        nullable=False,
        server_default=sa.text(f"'{values[0]}'"),
    )
    return column, sa.CheckConstraint(f"status IN ({quoted})", name=f"ck_{table}_{type_name}")


def _definition(table: str, canonical: bool) -> list[sa.Column[object] | sa.Constraint]:
    """The table as of this revision (`canonical`) or as 0001-0003 left it."""

    def uid(name: str, *, nullable: bool = False, key: bool = False) -> sa.Column[object]:
        if not canonical:
            return sa.Column(name, sa.Uuid(), nullable=nullable)
        default = sa.text(f"({SQLITE_NEW_UUID})") if key else None
        return sa.Column(
            name, sa.String(36, collation="NOCASE"), nullable=nullable, server_default=default
        )

    checks = (
        [
            sa.CheckConstraint(_uuid_check(c), name=f"ck_{table}_{c}_uuid")
            for c in UUID_COLUMNS[table]
        ]
        if canonical
        else []
    )
    pk = sa.PrimaryKeyConstraint("id", name=f"pk_{table}")
    if table == "users":
        return [
            uid("id", key=True),
            sa.Column("username", sa.String(100), nullable=False),
            _ts("created_at"),
            pk,
            sa.UniqueConstraint("username", name="uq_users_username"),
            sa.CheckConstraint("length(username) > 0", name="ck_users_username_not_empty"),
            *checks,
        ]
    if table == "nodes":
        status, status_check = _status(table)
        return [
            uid("id", key=True),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("docker_url", sa.String(500), nullable=False),
            status,
            sa.Column("cpu_cores", sa.Float(), nullable=True),
            sa.Column("memory_mb", sa.Integer(), nullable=True),
            sa.Column("gpu_units", sa.Integer(), nullable=True),
            sa.Column("storage_gb", sa.Integer(), nullable=True),
            sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
            sa.Column(
                "unschedulable", sa.Boolean(), nullable=False, server_default=sa.text("false")
            ),
            sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.text("false")),
            _ts("last_heartbeat_at", nullable=True),
            _ts("created_at"),
            _ts("updated_at"),
            pk,
            sa.UniqueConstraint("name", name="uq_nodes_name"),
            sa.CheckConstraint("length(name) > 0", name="ck_nodes_name_not_empty"),
            sa.CheckConstraint("length(docker_url) > 0", name="ck_nodes_docker_url_not_empty"),
            sa.CheckConstraint(
                "cpu_cores IS NULL OR cpu_cores > 0", name="ck_nodes_cpu_cores_positive"
            ),
            sa.CheckConstraint(
                "memory_mb IS NULL OR memory_mb > 0", name="ck_nodes_memory_mb_positive"
            ),
            sa.CheckConstraint(
                "gpu_units IS NULL OR gpu_units >= 0", name="ck_nodes_gpu_units_non_negative"
            ),
            sa.CheckConstraint(
                "storage_gb IS NULL OR storage_gb > 0", name="ck_nodes_storage_gb_positive"
            ),
            status_check,
            *checks,
        ]
    if table == "deployments":
        status, status_check = _status(table)
        return [
            uid("id", key=True),
            sa.Column("name", sa.String(100), nullable=False),
            uid("user_id"),
            sa.Column("container_image", sa.String(500), nullable=False),
            status,
            sa.Column("target_replicas", sa.Integer(), nullable=False, server_default=sa.text("1")),
            _ts("created_at"),
            _ts("updated_at"),
            _ts("deleted_at", nullable=True),
            pk,
            sa.ForeignKeyConstraint(
                ["user_id"], ["users.id"], name="fk_deployments_user_id_users", ondelete="CASCADE"
            ),
            sa.CheckConstraint("length(name) > 0", name="ck_deployments_name_not_empty"),
            sa.CheckConstraint(
                "length(container_image) > 0", name="ck_deployments_container_image_not_empty"
            ),
            sa.CheckConstraint(
                "target_replicas >= 0", name="ck_deployments_target_replicas_non_negative"
            ),
            status_check,
            *checks,
        ]
    if table == "deployment_replicas":
        status, status_check = _status(table)
        return [
            uid("id", key=True),
            uid("deployment_id"),
            uid("node_id", nullable=True),
            status,
            sa.Column("container_id", sa.String(255), nullable=True),
            _ts("started_at", nullable=True),
            _ts("stopped_at", nullable=True),
            _ts("created_at"),
            sa.Column("spec_hash", sa.String(64), nullable=True),
            sa.Column("restart_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
            sa.Column("last_exit_code", sa.Integer(), nullable=True),
            sa.Column("oom_killed", sa.Boolean(), nullable=False, server_default=sa.text("false")),
            pk,
            sa.ForeignKeyConstraint(
                ["deployment_id"],
                ["deployments.id"],
                name="fk_deployment_replicas_deployment_id_deployments",
                ondelete="CASCADE",
            ),
            sa.ForeignKeyConstraint(
                ["node_id"],
                ["nodes.id"],
                name="fk_deployment_replicas_node_id_nodes",
                ondelete="SET NULL",
            ),
            status_check,
            *checks,
        ]
    if table == "deployment_resources":
        return [
            uid("id", key=True),
            uid("deployment_id"),
            sa.Column("cpu_cores", sa.Float(), nullable=False),
            sa.Column("memory_mb", sa.Integer(), nullable=False),
            sa.Column("gpu_units", sa.Integer(), nullable=False, server_default=sa.text("0")),
            sa.Column("storage_gb", sa.Integer(), nullable=False),
            _ts("created_at"),
            _ts("updated_at"),
            pk,
            sa.UniqueConstraint("deployment_id", name="uq_deployment_resources_deployment_id"),
            sa.ForeignKeyConstraint(
                ["deployment_id"],
                ["deployments.id"],
                name="fk_deployment_resources_deployment_id_deployments",
                ondelete="CASCADE",
            ),
            sa.CheckConstraint(
                "cpu_cores >= 0.5 AND cpu_cores <= 32.0",
                name="ck_deployment_resources_cpu_cores_range",
            ),
            sa.CheckConstraint(
                "memory_mb >= 512 AND memory_mb <= 65536",
                name="ck_deployment_resources_memory_mb_range",
            ),
            sa.CheckConstraint(
                "gpu_units >= 0 AND gpu_units <= 8", name="ck_deployment_resources_gpu_units_range"
            ),
            sa.CheckConstraint(
                "storage_gb >= 1 AND storage_gb <= 1024",
                name="ck_deployment_resources_storage_gb_range",
            ),
            *checks,
        ]
    if table == "deployment_status_history":
        return [
            uid("id", key=True),
            uid("deployment_id"),
            sa.Column("old_status", sa.String(50), nullable=False),
            sa.Column("new_status", sa.String(50), nullable=False),
            uid("changed_by", nullable=True),
            _ts("changed_at"),
            sa.Column("reason", sa.String(500), nullable=True),
            pk,
            sa.ForeignKeyConstraint(
                ["deployment_id"],
                ["deployments.id"],
                name="fk_deployment_status_history_deployment_id_deployments",
                ondelete="CASCADE",
            ),
            sa.ForeignKeyConstraint(
                ["changed_by"],
                ["users.id"],
                name="fk_deployment_status_history_changed_by_users",
                ondelete="SET NULL",
            ),
            *checks,
        ]
    raise AssertionError(table)


# (name, columns, unique, partial WHERE) per table, as 0001 and 0002 made them.
INDEXES: dict[str, tuple[tuple[str, tuple[str, ...], bool, str | None], ...]] = {
    "users": (),
    "nodes": (("ix_nodes_status", ("status",), False, None),),
    "deployments": (
        ("idx_deployments_user_active", ("user_id", "deleted_at"), False, None),
        ("idx_deployments_user_name_unique", ("user_id", "name"), True, "deleted_at IS NULL"),
        ("ix_deployments_user_id", ("user_id",), False, None),
        ("ix_deployments_status", ("status",), False, None),
        ("ix_deployments_deleted_at", ("deleted_at",), False, None),
        ("ix_deployments_updated_at", ("updated_at",), False, None),
    ),
    "deployment_replicas": (
        ("idx_replicas_deployment_status", ("deployment_id", "status"), False, None),
        ("ix_deployment_replicas_deployment_id", ("deployment_id",), False, None),
        ("ix_deployment_replicas_node_id", ("node_id",), False, None),
        ("ix_deployment_replicas_status", ("status",), False, None),
    ),
    "deployment_resources": (("ix_deployment_resources_updated_at", ("updated_at",), False, None),),
    "deployment_status_history": (
        ("idx_status_history_deployment_time", ("deployment_id", "changed_at"), False, None),
        ("ix_deployment_status_history_deployment_id", ("deployment_id",), False, None),
        ("ix_deployment_status_history_changed_by", ("changed_by",), False, None),
        ("ix_deployment_status_history_changed_at", ("changed_at",), False, None),
    ),
}


def _rebuild(table: str, *, canonical: bool, convert: Callable[[str], str]) -> None:
    """Copy `table` into its new definition, converting its uuid columns; swap the two."""
    new = f"_fog_new_{table}"
    items = _definition(table, canonical)
    for item in items:
        if isinstance(item, sa.Constraint) and isinstance(item.name, str):
            item.name = op.f(item.name)  # final names: no naming convention applied
    op.create_table(new, *items)
    names = [item.name for item in items if isinstance(item, sa.Column)]
    selected = ", ".join(convert(c) if c in UUID_COLUMNS[table] else c for c in names)
    op.execute(f"INSERT INTO {new} ({', '.join(names)}) SELECT {selected} FROM {table}")
    op.execute(f"DROP TABLE {table}")  # its indexes and triggers go with it
    op.execute(f"ALTER TABLE {new} RENAME TO {table}")
    for name, columns, unique, where in INDEXES[table]:
        op.create_index(
            op.f(name),
            table,
            list(columns),
            unique=unique,
            sqlite_where=sa.text(where) if where else None,
        )
    if table in TABLES_WITH_UPDATED_AT:
        _touch_trigger(table)


def _touch_trigger(table: str) -> None:
    """0001's update trigger, unchanged (see there for why it reads as it does)."""
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
