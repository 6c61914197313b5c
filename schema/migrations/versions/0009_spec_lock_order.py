"""Spec-table writes lock their deployment first (PostgreSQL).

The generation triggers of the spec tables (0007, 0008) bump `deployment_controller_state`
and then touch `deployments`; the controller's status write and an operator's UPDATE of
`deployments` take the two rows the other way round. An operator's spec write landing beside
a status write could deadlock, and PostgreSQL aborted the operator's transaction (seen in the
test suite). A BEFORE trigger on each spec table now locks the deployment's row first, so
every writer takes deployments, then the state row: they queue instead. SQLite locks the
whole database per write, so it has nothing to change.

Revision ID: 0009_spec_lock_order
Revises: 0008_placement
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009_spec_lock_order"
down_revision: str | Sequence[str] | None = "0008_placement"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPEC_TABLES = (
    "deployment_specs",
    "deployment_env",
    "deployment_labels",
    "deployment_ports",
    "deployment_volumes",
    "deployment_node_selectors",
)
FUNCTION = "fog_lock_deployment_first"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                PERFORM 1 FROM deployments WHERE id = OLD.deployment_id FOR NO KEY UPDATE;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                PERFORM 1 FROM deployments WHERE id = NEW.deployment_id FOR NO KEY UPDATE;
                RETURN NEW;
            END IF;
            RETURN OLD;
        END;
        $$
        """
    )
    for table in SPEC_TABLES:
        op.execute(
            f"CREATE TRIGGER trg_{table}_lock_deployment BEFORE INSERT OR UPDATE OR DELETE "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in SPEC_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_lock_deployment ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
