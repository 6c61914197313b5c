"""Placement (issue 15): where a deployment may run and how it spreads.

`deployment_specs` gains `spread_by` (a node label key to spread over), `max_per_node` (at
most this many replicas on one node) and `rebalance` (move replicas when the spread is off;
default true, so existing rows keep today's behaviour plus healing). The node selector is a
child table, `deployment_node_selectors` (one row per key=value pair), for the reasons 0007
gives for its child tables: the database checks each key and value by itself, with a named
constraint, and an operator adds one pair with one INSERT.

Label keys and values follow Kubernetes' syntax, as controller/placement_rules.py checks them;
PostgreSQL says it with a regular expression, SQLite (no REGEXP) with GLOB patterns over the
parts `instr` and `substr` cut out of the key. The table test in
tests/integration/test_placement_schema.py holds both to the Python rules.

A placement change is a spec change: the new columns join `deployment_specs`' generation and
NOTIFY triggers (replaced here with the longer column list), and the new table gets 0007's
triggers (generation, the deployment's `updated_at` for the SQLite poll, NOTIFY). The upgrade
itself moves no generation.

Frozen like 0001: names and columns are spelled out, not imported.

Revision ID: 0008_placement
Revises: 0007_deployment_spec
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008_placement"
down_revision: str | Sequence[str] | None = "0007_deployment_spec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPECS = "deployment_specs"
SELECTORS = "deployment_node_selectors"
CHANNEL = "fog_changes"
STATE = "deployment_controller_state"
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
_HEX = "[0-9a-fA-F]"
UUID_GLOB = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
BUMP = f"UPDATE {STATE} SET generation = generation + 1 WHERE deployment_id = "
SQLITE_TOUCH = (
    "UPDATE deployments SET updated_at = COALESCE(max("
    f"{SQLITE_NOW}, strftime('%Y-%m-%d %H:%M:%f000', updated_at, '+0.001 seconds')), "
    f"{SQLITE_NOW}) WHERE id = "
)
PG_TOUCH = "UPDATE deployments SET updated_at = clock_timestamp() WHERE id = "
PURGE_ASKED = "(NEW.purge_volumes AND NOT OLD.purge_volumes)"
JSON_COLUMNS = ("entrypoint", "command", "healthcheck_command")
# deployment_specs' spec columns as 0007 left them, and with placement.
SPEC_COLUMNS_0007 = (
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
SPEC_COLUMNS = (*SPEC_COLUMNS_0007, "spread_by", "max_per_node", "rebalance")
SELECTOR_COLUMNS = ("deployment_id", "key", "value")

NAME_MAX = 63
PREFIX_MAX = 253
KEY_MAX = PREFIX_MAX + 1 + NAME_MAX
# Must match schema.models: label_key_sql() and label_value_sql().
PG_NAME = f"[A-Za-z0-9]([A-Za-z0-9_.-]{{0,{NAME_MAX - 2}}}[A-Za-z0-9])?"
PG_DNS_LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"


def _is_sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _sqlite_name(part: str) -> str:
    return (
        f"length({part}) BETWEEN 1 AND {NAME_MAX} AND {part} GLOB '[A-Za-z0-9]*' "
        f"AND {part} GLOB '*[A-Za-z0-9]' AND {part} NOT GLOB '*[^A-Za-z0-9_.-]*'"
    )


def _sqlite_subdomain(part: str) -> str:
    return (
        f"length({part}) <= {PREFIX_MAX} AND {part} GLOB '[a-z0-9]*' "
        f"AND {part} GLOB '*[a-z0-9]' AND {part} NOT GLOB '*[^a-z0-9.-]*' "
        f"AND {part} NOT GLOB '*..*' AND {part} NOT GLOB '*.-*' AND {part} NOT GLOB '*-.*'"
    )


def _ascii_text(c: str) -> str:
    return f"typeof({c}) = 'text' AND length(CAST({c} AS BLOB)) = length({c})"


def key_rule(c: str, sqlite: bool) -> str:
    if not sqlite:
        return (
            f"{c} ~ '^({PG_DNS_LABEL}(\\.{PG_DNS_LABEL})*/)?{PG_NAME}$' "
            f"AND strpos({c}, '/') <= {PREFIX_MAX + 1}"
        )
    slash = f"instr({c}, '/')"
    return (
        f"{_ascii_text(c)} AND CASE WHEN {slash} = 0 THEN {_sqlite_name(c)} "
        f"ELSE {_sqlite_subdomain(f'substr({c}, 1, {slash} - 1)')} "
        f"AND {_sqlite_name(f'substr({c}, {slash} + 1)')} END"
    )


def value_rule(c: str, sqlite: bool) -> str:
    if not sqlite:
        return f"{c} ~ '^({PG_NAME})?$'"
    return f"{_ascii_text(c)} AND ({c} = '' OR {_sqlite_name(c)})"


def upgrade() -> None:
    sqlite = _is_sqlite()
    # Plain ADD COLUMN with a column CHECK on both backends: no table rebuild on SQLite (a
    # batch rebuild would lose 0004's COLLATE NOCASE and 0007's triggers).
    op.execute(
        f"ALTER TABLE {SPECS} ADD COLUMN spread_by VARCHAR({KEY_MAX}) "
        f"CONSTRAINT ck_{SPECS}_spread_by_syntax "
        f"CHECK (spread_by IS NULL OR ({key_rule('spread_by', sqlite)}))"
    )
    op.execute(
        f"ALTER TABLE {SPECS} ADD COLUMN max_per_node INTEGER "
        f"CONSTRAINT ck_{SPECS}_max_per_node_positive "
        "CHECK (max_per_node IS NULL OR max_per_node >= 1)"
    )
    op.execute(f"ALTER TABLE {SPECS} ADD COLUMN rebalance BOOLEAN DEFAULT true NOT NULL")
    _create_selectors(sqlite)
    if sqlite:
        op.execute(f"DROP TRIGGER trg_{SPECS}_generation")
        _sqlite_specs_update_trigger(SPEC_COLUMNS)
        _sqlite_selector_triggers()
    else:
        _pg_specs_functions(SPEC_COLUMNS)
        op.execute(
            f"CREATE TRIGGER trg_{SELECTORS}_generation AFTER INSERT OR UPDATE OR DELETE "
            f"ON {SELECTORS} FOR EACH ROW EXECUTE FUNCTION fog_generation_spec_rows()"
        )
        _pg_notify_function(SELECTORS, SELECTOR_COLUMNS, also="")
        op.execute(
            f"CREATE TRIGGER trg_{SELECTORS}_notify AFTER INSERT OR UPDATE OR DELETE "
            f"ON {SELECTORS} FOR EACH ROW EXECUTE FUNCTION fog_notify_{SELECTORS}()"
        )


def _create_selectors(sqlite: bool) -> None:
    t = SELECTORS
    uid: sa.types.TypeEngine[Any] = sa.String(36, collation="NOCASE") if sqlite else sa.Uuid()
    uuid_check = (
        [
            sa.CheckConstraint(
                "typeof(deployment_id) IN ('text', 'null') AND length(deployment_id) = 36 "
                f"AND deployment_id GLOB '{UUID_GLOB}'",
                name=op.f(f"ck_{t}_deployment_id_uuid"),
            )
        ]
        if sqlite
        else []
    )
    op.create_table(
        t,
        sa.Column("deployment_id", uid, nullable=False),
        sa.Column("key", sa.String(length=KEY_MAX), nullable=False),
        sa.Column(
            "value", sa.String(length=NAME_MAX), nullable=False, server_default=sa.text("''")
        ),
        sa.CheckConstraint(key_rule("key", sqlite), name=op.f(f"ck_{t}_key_syntax")),
        sa.CheckConstraint(value_rule("value", sqlite), name=op.f(f"ck_{t}_value_syntax")),
        *uuid_check,
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f(f"fk_{t}_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", "key", name=op.f(f"pk_{t}")),
    )


def _changed(columns: Sequence[str]) -> str:
    return "(" + " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns) + ")"


def _sqlite_specs_update_trigger(columns: Sequence[str]) -> None:
    """0007's update trigger of `deployment_specs` over `columns` (its insert and delete
    triggers do not name columns and stay)."""
    spec_changed = _changed(columns)
    moved = "NEW.deployment_id IS NOT OLD.deployment_id"
    op.execute(
        f"""
        CREATE TRIGGER trg_{SPECS}_generation AFTER UPDATE ON {SPECS}
        FOR EACH ROW WHEN {spec_changed} OR {PURGE_ASKED}
        BEGIN
            {BUMP}OLD.deployment_id AND {spec_changed};
            {BUMP}NEW.deployment_id AND {moved};
            {SQLITE_TOUCH}OLD.deployment_id;
            {SQLITE_TOUCH}NEW.deployment_id AND {moved};
        END
        """
    )


def _sqlite_selector_triggers() -> None:
    """Insert, update and delete of a selector row: a new generation of its deployment(s) and
    their `updated_at` moved (the poll's marker), as 0007's child tables."""
    moved = "NEW.deployment_id IS NOT OLD.deployment_id"
    t = SELECTORS
    op.execute(
        f"""
        CREATE TRIGGER trg_{t}_generation_insert AFTER INSERT ON {t}
        FOR EACH ROW BEGIN
            {BUMP}NEW.deployment_id;
            {SQLITE_TOUCH}NEW.deployment_id;
        END
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER trg_{t}_generation AFTER UPDATE ON {t}
        FOR EACH ROW WHEN {_changed(SELECTOR_COLUMNS)}
        BEGIN
            {BUMP}OLD.deployment_id;
            {BUMP}NEW.deployment_id AND {moved};
            {SQLITE_TOUCH}OLD.deployment_id;
            {SQLITE_TOUCH}NEW.deployment_id AND {moved};
        END
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER trg_{t}_generation_delete AFTER DELETE ON {t}
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


def _pg_specs_functions(columns: Sequence[str]) -> None:
    """`deployment_specs`' generation and NOTIFY functions over `columns` (their triggers,
    from 0007, call them by name and stay)."""
    spec_changed = f"{_pg_row('OLD', columns)} IS DISTINCT FROM {_pg_row('NEW', columns)}"
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION fog_generation_deployment_specs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                {BUMP}NEW.deployment_id;
                {PG_TOUCH}NEW.deployment_id;
            ELSIF TG_OP = 'DELETE' THEN
                {BUMP}OLD.deployment_id;
                {PG_TOUCH}OLD.deployment_id;
            ELSIF {spec_changed} OR {PURGE_ASKED} THEN
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
        $$
        """
    )
    # A purge request notifies; the controller clearing it does not (as 0007).
    _pg_notify_function(SPECS, columns, also=f" AND NOT {PURGE_ASKED}")


def _pg_notify_function(table: str, columns: Sequence[str], also: str) -> None:
    """0002's NOTIFY function for `table`, quiet when none of `columns` changed."""
    row_id = "row.id" if table == SPECS else "NULL"
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION fog_notify_{table}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            row {table}%ROWTYPE;
        BEGIN
            IF TG_OP = 'UPDATE' AND {_pg_row("OLD", columns)} IS NOT DISTINCT FROM
                {_pg_row("NEW", columns)}{also} THEN
                RETURN NULL;  -- only columns no operator writes moved
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


def downgrade() -> None:
    sqlite = _is_sqlite()
    # Dropping the table drops its triggers; its NOTIFY function goes by hand.
    op.drop_table(SELECTORS)
    if sqlite:
        # SQLite drops no column a trigger names: 0007's trigger goes back after the drop.
        op.execute(f"DROP TRIGGER trg_{SPECS}_generation")
    else:
        op.execute(f"DROP FUNCTION fog_notify_{SELECTORS}()")
        # 0007's functions first: a PL/pgSQL body naming a dropped column fails at run time.
        _pg_specs_functions(SPEC_COLUMNS_0007)
    for column in ("rebalance", "max_per_node", "spread_by"):
        op.execute(f"ALTER TABLE {SPECS} DROP COLUMN {column}")
    if sqlite:
        _sqlite_specs_update_trigger(SPEC_COLUMNS_0007)
