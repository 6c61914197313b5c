"""The container spec (issue 14): how a deployment's containers run beyond image and resources.

Six tables. `deployment_specs` is 1:1 with `deployments` (a row only when something is set):
the scalars (`network`, `stop_grace_seconds`, the healthcheck, `image_pull_secret`) and the
ordered argument lists `entrypoint` and `command` as JSON arrays. The lists and maps whose
elements SQL can check one by one are child tables (`deployment_env`, `deployment_labels`,
`deployment_ports`, `deployment_volumes`), so the database itself refuses, with a named
constraint, a port out of range, an unknown protocol, a relative mount path, a duplicate host
port or mount path in one deployment, a `fog.` label key. A child table, not a JSON map, also
lets an operator set one variable with one INSERT. `registry_credentials` holds a user's
registry logins by name (passwords encrypted by fogctl, never written by hand). The seed's
four tables are untouched.

Every insert, change or delete of a deployment's spec row (its spec columns: not
`purge_volumes`, `created_at`, `updated_at`) or of its env, label, port or volume rows adds
one to `deployment_controller_state.generation`, as 0006 counts image and resource changes,
plain SQL included.

The same triggers move the deployment's `deployments.updated_at`: a spec change is a change of
the deployment, and on SQLite that column is what the controller's one-second poll watches
(`changed_since`). Unioning the child tables into the poll instead could not work: they have
no timestamp, and a DELETE leaves nothing behind to find. `purge_volumes` (set by
`fogctl delete --purge-volumes`) is no spec, but the controller must act on it, so setting it
moves `updated_at` too without a new generation (the controller clearing it moves nothing).
On PostgreSQL every spec table also gets a NOTIFY trigger as 0002's (payload
`deployment_id`), so the controller wakes at once there.

Frozen like 0001: names and columns are spelled out, not imported.

Revision ID: 0007_deployment_spec
Revises: 0006_deployment_generation
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007_deployment_spec"
down_revision: str | Sequence[str] | None = "0006_deployment_generation"
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
CHANNEL = "fog_changes"
STATE = "deployment_controller_state"
SPECS = "deployment_specs"
CHILDREN = ("deployment_env", "deployment_labels", "deployment_ports", "deployment_volumes")
CREDENTIALS = "registry_credentials"
# deployment_specs' spec columns: a change of one is a new generation.
SPEC_COLUMNS = (
    "entrypoint",
    "command",
    "network",
    "stop_grace_seconds",
    "healthcheck_command",
    "healthcheck_interval_seconds",
    "healthcheck_timeout_seconds",
    "healthcheck_retries",
    "healthcheck_start_period_seconds",
    "image_pull_secret",
    "deployment_id",
)
JSON_COLUMNS = ("entrypoint", "command", "healthcheck_command")
# The operator asking for a deployment's volumes to be purged (false to true): the controller
# must hear of it. Its clearing, the controller's own write once done, wakes nobody.
PURGE_ASKED = "(NEW.purge_volumes AND NOT OLD.purge_volumes)"
# Every column of the child tables is the operator's.
CHILD_COLUMNS: dict[str, tuple[str, ...]] = {
    "deployment_env": ("deployment_id", "name", "value"),
    "deployment_labels": ("deployment_id", "key", "value"),
    "deployment_ports": ("id", "deployment_id", "container_port", "host_port", "protocol"),
    "deployment_volumes": (
        "id",
        "deployment_id",
        "name",
        "host_path",
        "mount_path",
        "read_only",
    ),
}
TABLES_WITH_UPDATED_AT = (SPECS, CREDENTIALS)
BUMP = f"UPDATE {STATE} SET generation = generation + 1 WHERE deployment_id = "
SQLITE_TOUCH = (
    "UPDATE deployments SET updated_at = COALESCE(max("
    f"{SQLITE_NOW}, strftime('%Y-%m-%d %H:%M:%f000', updated_at, '+0.001 seconds')), "
    f"{SQLITE_NOW}) WHERE id = "
)
PG_TOUCH = "UPDATE deployments SET updated_at = clock_timestamp() WHERE id = "
GENERATION_TABLES = (SPECS, *CHILDREN)
PG_GENERATION_FUNCTIONS = ("fog_generation_deployment_specs", "fog_generation_spec_rows")


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _uuid_check(c: str) -> str:
    return f"typeof({c}) IN ('text', 'null') AND length({c}) = 36 AND {c} GLOB '{UUID_GLOB}'"


class _Kit:
    """Per-backend column types, defaults and checks (as 0006 builds them)."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        if sqlite:
            self.uid: sa.types.TypeEngine[Any] = sa.String(36, collation="NOCASE")
            self.new_id = sa.text(f"({SQLITE_NEW_UUID})")
            self.now = sa.text(f"({SQLITE_NOW})")
        else:
            self.uid, self.new_id = sa.Uuid(), sa.text("gen_random_uuid()")
            self.now = sa.text("now()")

    def id(self) -> sa.Column[Any]:
        return sa.Column("id", self.uid, nullable=False, server_default=self.new_id)

    def stamps(self) -> list[sa.Column[Any]]:
        return [
            sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=self.now)
            for name in ("created_at", "updated_at")
        ]

    def uuid_checks(self, table: str, *columns: str) -> list[sa.CheckConstraint]:
        if not self.sqlite:
            return []
        return [
            sa.CheckConstraint(_uuid_check(c), name=op.f(f"ck_{table}_{c}_uuid")) for c in columns
        ]

    def json_array(self, table: str, column: str, name: str) -> sa.CheckConstraint:
        function = "json_type" if self.sqlite else "json_typeof"
        return sa.CheckConstraint(
            f"{column} IS NULL OR {function}({column}) = 'array'", name=op.f(f"ck_{table}_{name}")
        )

    def deployment_fk(self, table: str) -> sa.ForeignKeyConstraint:
        return sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f(f"fk_{table}_deployment_id_deployments"),
            ondelete="CASCADE",
        )


def upgrade() -> None:
    kit = _Kit(_is_sqlite())
    _create_specs(kit)
    _create_children(kit)
    _create_credentials(kit)
    if kit.sqlite:
        _sqlite_touch_updated_at()
        _sqlite_generation_triggers()
    else:
        for table in TABLES_WITH_UPDATED_AT:
            op.execute(
                f"CREATE TRIGGER trg_{table}_touch_updated_at BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION fog_touch_updated_at()"
            )
        _pg_generation_triggers()
        _pg_notify_triggers()


def _create_specs(kit: _Kit) -> None:
    t = SPECS
    op.create_table(
        t,
        kit.id(),
        sa.Column("deployment_id", kit.uid, nullable=False),
        sa.Column("entrypoint", sa.JSON(), nullable=True),
        sa.Column("command", sa.JSON(), nullable=True),
        sa.Column("network", sa.String(length=16), nullable=True),
        sa.Column("stop_grace_seconds", sa.Integer(), nullable=True),
        sa.Column("healthcheck_command", sa.JSON(), nullable=True),
        sa.Column("healthcheck_interval_seconds", sa.Float(), nullable=True),
        sa.Column("healthcheck_timeout_seconds", sa.Float(), nullable=True),
        sa.Column("healthcheck_retries", sa.Integer(), nullable=True),
        sa.Column("healthcheck_start_period_seconds", sa.Float(), nullable=True),
        sa.Column("image_pull_secret", sa.String(length=100), nullable=True),
        sa.Column("purge_volumes", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        *kit.stamps(),
        kit.json_array(t, "entrypoint", "entrypoint_array"),
        kit.json_array(t, "command", "command_array"),
        kit.json_array(t, "healthcheck_command", "healthcheck_command_array"),
        sa.CheckConstraint(
            "network IS NULL OR network IN ('host', 'bridge', 'none')",
            name=op.f(f"ck_{t}_network_known"),
        ),
        sa.CheckConstraint(
            "stop_grace_seconds IS NULL OR "
            "(stop_grace_seconds >= 0 AND stop_grace_seconds <= 3600)",
            name=op.f(f"ck_{t}_stop_grace_seconds_range"),
        ),
        sa.CheckConstraint(
            "healthcheck_interval_seconds IS NULL OR healthcheck_interval_seconds > 0",
            name=op.f(f"ck_{t}_healthcheck_interval_positive"),
        ),
        sa.CheckConstraint(
            "healthcheck_timeout_seconds IS NULL OR healthcheck_timeout_seconds > 0",
            name=op.f(f"ck_{t}_healthcheck_timeout_positive"),
        ),
        sa.CheckConstraint(
            "healthcheck_retries IS NULL OR healthcheck_retries >= 1",
            name=op.f(f"ck_{t}_healthcheck_retries_positive"),
        ),
        sa.CheckConstraint(
            "healthcheck_start_period_seconds IS NULL OR healthcheck_start_period_seconds >= 0",
            name=op.f(f"ck_{t}_healthcheck_start_period_non_negative"),
        ),
        sa.CheckConstraint(
            "healthcheck_command IS NOT NULL OR (healthcheck_interval_seconds IS NULL AND "
            "healthcheck_timeout_seconds IS NULL AND healthcheck_retries IS NULL AND "
            "healthcheck_start_period_seconds IS NULL)",
            name=op.f(f"ck_{t}_healthcheck_needs_command"),
        ),
        sa.CheckConstraint(
            "image_pull_secret IS NULL OR length(image_pull_secret) > 0",
            name=op.f(f"ck_{t}_image_pull_secret_not_empty"),
        ),
        *kit.uuid_checks(t, "id", "deployment_id"),
        kit.deployment_fk(t),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{t}")),
        sa.UniqueConstraint("deployment_id", name=op.f(f"uq_{t}_deployment_id")),
    )


def _create_children(kit: _Kit) -> None:
    t = "deployment_env"
    op.create_table(
        t,
        sa.Column("deployment_id", kit.uid, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("value", sa.String(), nullable=False, server_default=sa.text("''")),
        sa.CheckConstraint("length(name) > 0", name=op.f(f"ck_{t}_name_not_empty")),
        sa.CheckConstraint("name NOT LIKE '%=%'", name=op.f(f"ck_{t}_name_without_equals")),
        *kit.uuid_checks(t, "deployment_id"),
        kit.deployment_fk(t),
        sa.PrimaryKeyConstraint("deployment_id", "name", name=op.f(f"pk_{t}")),
    )
    t = "deployment_labels"
    op.create_table(
        t,
        sa.Column("deployment_id", kit.uid, nullable=False),
        sa.Column("key", sa.String(length=253), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False, server_default=sa.text("''")),
        sa.CheckConstraint("length(key) > 0", name=op.f(f"ck_{t}_key_not_empty")),
        sa.CheckConstraint("substr(key, 1, 4) <> 'fog.'", name=op.f(f"ck_{t}_key_not_reserved")),
        *kit.uuid_checks(t, "deployment_id"),
        kit.deployment_fk(t),
        sa.PrimaryKeyConstraint("deployment_id", "key", name=op.f(f"pk_{t}")),
    )
    t = "deployment_ports"
    op.create_table(
        t,
        kit.id(),
        sa.Column("deployment_id", kit.uid, nullable=False),
        sa.Column("container_port", sa.Integer(), nullable=False),
        sa.Column("host_port", sa.Integer(), nullable=True),
        sa.Column("protocol", sa.String(length=3), nullable=False, server_default=sa.text("'tcp'")),
        sa.CheckConstraint(
            "container_port >= 1 AND container_port <= 65535",
            name=op.f(f"ck_{t}_container_port_range"),
        ),
        sa.CheckConstraint(
            "host_port IS NULL OR (host_port >= 1 AND host_port <= 65535)",
            name=op.f(f"ck_{t}_host_port_range"),
        ),
        sa.CheckConstraint("protocol IN ('tcp', 'udp')", name=op.f(f"ck_{t}_protocol_known")),
        *kit.uuid_checks(t, "id", "deployment_id"),
        kit.deployment_fk(t),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{t}")),
        sa.UniqueConstraint(
            "deployment_id",
            "host_port",
            "protocol",
            name=op.f(f"uq_{t}_deployment_id_host_port_protocol"),
        ),
        sa.UniqueConstraint(
            "deployment_id",
            "container_port",
            "protocol",
            name=op.f(f"uq_{t}_deployment_id_container_port_protocol"),
        ),
    )
    op.create_index(op.f(f"ix_{t}_deployment_id"), t, ["deployment_id"])
    t = "deployment_volumes"
    name_format = (
        sa.CheckConstraint(
            "name IS NULL OR name GLOB '[a-zA-Z0-9]*' AND name NOT GLOB '*[^a-zA-Z0-9_.-]*'",
            name=op.f(f"ck_{t}_name_format"),
        )
        if kit.sqlite
        else sa.CheckConstraint(
            "name IS NULL OR name ~ '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$'",
            name=op.f(f"ck_{t}_name_format"),
        )
    )
    op.create_table(
        t,
        kit.id(),
        sa.Column("deployment_id", kit.uid, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("host_path", sa.String(length=4096), nullable=True),
        sa.Column("mount_path", sa.String(length=4096), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.CheckConstraint(
            "(name IS NULL) <> (host_path IS NULL)", name=op.f(f"ck_{t}_name_or_host_path")
        ),
        sa.CheckConstraint(
            "substr(mount_path, 1, 1) = '/'", name=op.f(f"ck_{t}_mount_path_absolute")
        ),
        sa.CheckConstraint(
            "host_path IS NULL OR substr(host_path, 1, 1) = '/'",
            name=op.f(f"ck_{t}_host_path_absolute"),
        ),
        name_format,
        *kit.uuid_checks(t, "id", "deployment_id"),
        kit.deployment_fk(t),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{t}")),
        sa.UniqueConstraint(
            "deployment_id", "mount_path", name=op.f(f"uq_{t}_deployment_id_mount_path")
        ),
        sa.UniqueConstraint("deployment_id", "name", name=op.f(f"uq_{t}_deployment_id_name")),
    )
    op.create_index(op.f(f"ix_{t}_deployment_id"), t, ["deployment_id"])


def _create_credentials(kit: _Kit) -> None:
    t = CREDENTIALS
    op.create_table(
        t,
        kit.id(),
        sa.Column("user_id", kit.uid, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("registry_host", sa.String(length=500), nullable=False),
        sa.Column("username", sa.String(length=500), nullable=False),
        sa.Column("password_encrypted", sa.String(), nullable=False),
        *kit.stamps(),
        sa.CheckConstraint("length(name) > 0", name=op.f(f"ck_{t}_name_not_empty")),
        sa.CheckConstraint(
            "length(registry_host) > 0", name=op.f(f"ck_{t}_registry_host_not_empty")
        ),
        sa.CheckConstraint("length(username) > 0", name=op.f(f"ck_{t}_username_not_empty")),
        *kit.uuid_checks(t, "id", "user_id"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f(f"fk_{t}_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{t}")),
        sa.UniqueConstraint("user_id", "name", name=op.f(f"uq_{t}_user_id_name")),
    )
    op.create_index(op.f(f"ix_{t}_user_id"), t, ["user_id"])


def _sqlite_touch_updated_at() -> None:
    """0001's SQLite update trigger, unchanged (see there for why it reads as it does)."""
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


def _changed(columns: Sequence[str]) -> str:
    return "(" + " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns) + ")"


def _sqlite_generation_triggers() -> None:
    """Per spec table: insert, update (of operator columns) and delete bump the generation of
    the deployment(s) the row belongs to and move their `updated_at` (the poll's marker)."""
    moved = "NEW.deployment_id IS NOT OLD.deployment_id"
    for table in GENERATION_TABLES:
        if table == SPECS:
            spec_changed = _changed(SPEC_COLUMNS)
            # A purge request wakes the controller but is no new generation.
            when = f"{spec_changed} OR {PURGE_ASKED}"
            bump_old = f"{BUMP}OLD.deployment_id AND {spec_changed}"
        else:
            when = _changed(CHILD_COLUMNS[table])
            bump_old = f"{BUMP}OLD.deployment_id"
        op.execute(
            f"""
            CREATE TRIGGER trg_{table}_generation_insert AFTER INSERT ON {table}
            FOR EACH ROW BEGIN
                {BUMP}NEW.deployment_id;
                {SQLITE_TOUCH}NEW.deployment_id;
            END
            """
        )
        op.execute(
            f"""
            CREATE TRIGGER trg_{table}_generation AFTER UPDATE ON {table}
            FOR EACH ROW WHEN {when}
            BEGIN
                {bump_old};
                {BUMP}NEW.deployment_id AND {moved};
                {SQLITE_TOUCH}OLD.deployment_id;
                {SQLITE_TOUCH}NEW.deployment_id AND {moved};
            END
            """
        )
        op.execute(
            f"""
            CREATE TRIGGER trg_{table}_generation_delete AFTER DELETE ON {table}
            FOR EACH ROW BEGIN
                {BUMP}OLD.deployment_id;
                {SQLITE_TOUCH}OLD.deployment_id;
            END
            """
        )


def _pg_row(prefix: str, columns: Sequence[str]) -> str:
    # json has no equality operator: compare its text.
    return (
        "ROW("
        + ", ".join(
            f"{prefix}.{c}::text" if c in JSON_COLUMNS else f"{prefix}.{c}" for c in columns
        )
        + ")"
    )


def _pg_generation_body(spec_changed: str, touch_changed: str) -> str:
    """A PL/pgSQL trigger body: bump and touch the old and the new deployment of the row.
    A row deleted by its deployment's cascade finds neither a state row nor a deployment
    (both deleted by the same statement) and changes nothing, as 0006 notes."""
    return f"""
        BEGIN
            IF TG_OP = 'INSERT' THEN
                {BUMP}NEW.deployment_id;
                {PG_TOUCH}NEW.deployment_id;
            ELSIF TG_OP = 'DELETE' THEN
                {BUMP}OLD.deployment_id;
                {PG_TOUCH}OLD.deployment_id;
            ELSIF {touch_changed} THEN
                IF {spec_changed} THEN
                    {BUMP}OLD.deployment_id;
                END IF;
                {PG_TOUCH}OLD.deployment_id;
                IF NEW.deployment_id <> OLD.deployment_id THEN
                    {BUMP}NEW.deployment_id;
                    {PG_TOUCH}NEW.deployment_id;
                END IF;
            END IF;
            RETURN NULL;
        END;
    """


def _pg_generation_triggers() -> None:
    spec_changed = f"{_pg_row('OLD', SPEC_COLUMNS)} IS DISTINCT FROM {_pg_row('NEW', SPEC_COLUMNS)}"
    op.execute(
        f"""
        CREATE FUNCTION fog_generation_deployment_specs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        {_pg_generation_body(spec_changed, f"{spec_changed} OR {PURGE_ASKED}")}
        $$
        """
    )
    # The child tables hold nothing but the operator's columns: any change is a spec change.
    op.execute(
        f"""
        CREATE FUNCTION fog_generation_spec_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        {_pg_generation_body("OLD IS DISTINCT FROM NEW", "OLD IS DISTINCT FROM NEW")}
        $$
        """
    )
    for table in GENERATION_TABLES:
        function = (
            "fog_generation_deployment_specs" if table == SPECS else "fog_generation_spec_rows"
        )
        op.execute(
            f"CREATE TRIGGER trg_{table}_generation AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )


def _pg_notify_triggers() -> None:
    """0002's NOTIFY triggers for the spec tables; `id` is NULL for env and label rows,
    which have none (the controller only reads `deployment_id`)."""
    watched = {SPECS: SPEC_COLUMNS, **CHILD_COLUMNS}
    for table, columns in watched.items():
        row_id = "NULL" if table in ("deployment_env", "deployment_labels") else "row.id"
        also = f" AND NOT {PURGE_ASKED}" if table == SPECS else ""
        op.execute(
            f"""
            CREATE FUNCTION fog_notify_{table}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            DECLARE
                row {table}%ROWTYPE;
            BEGIN
                IF TG_OP = 'UPDATE' AND {_pg_row("OLD", columns)} IS NOT DISTINCT FROM
                    {_pg_row("NEW", columns)}{also} THEN
                    RETURN NULL;  -- only updated_at moved
                END IF;
                IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
                PERFORM pg_notify('{CHANNEL}', json_build_object(
                    'table', TG_TABLE_NAME,
                    'op', lower(TG_OP),
                    'id', {row_id},
                    'deployment_id', row.deployment_id
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
    sqlite = _is_sqlite()
    # Dropping a table drops its triggers; the functions stay on PostgreSQL.
    for table in (CREDENTIALS, *reversed(CHILDREN), SPECS):
        op.drop_table(table)
    if not sqlite:
        for function in (*PG_GENERATION_FUNCTIONS, *(f"fog_notify_{t}" for t in GENERATION_TABLES)):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
