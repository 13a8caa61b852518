"""budgets: budgets, rate limits, the budget ledger and alerts; requests record their policy decision

Revision ID: 0005_budgets
Revises: 0004_routing
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_budgets"
down_revision: str | Sequence[str] | None = "0004_routing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "budgets",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=1024), nullable=True),
        sa.Column("property", sa.String(length=64), nullable=True),
        sa.Column("limit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("anchor", ts, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("throttle_rpm", sa.Integer(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_table(
        "rate_limits",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=1024), nullable=True),
        sa.Column("property", sa.String(length=64), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True),
        sa.Column("concurrent", sa.Integer(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_table(
        "budget_ledger",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("budget_id", ID, nullable=False),
        sa.Column("counter_key", sa.String(length=1200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reserved_delta", sa.BigInteger(), nullable=False),
        sa.Column("spent_delta", sa.BigInteger(), nullable=False),
        sa.Column("reservation_id", ID, nullable=True),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("note", sa.String(length=256), nullable=True),
        sa.Column("at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_budget_ledger_ws_at", "budget_ledger", ["workspace_id", "at"])
    op.create_index("ix_budget_ledger_budget", "budget_ledger", ["workspace_id", "budget_id", "at"])
    op.create_index("ix_budget_ledger_reservation", "budget_ledger", ["workspace_id", "reservation_id"])
    op.create_index("ix_budget_ledger_run", "budget_ledger", ["workspace_id", "run_id"])
    op.create_table(
        "budget_alerts",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("budget_id", ID, nullable=False),
        sa.Column("window_key", sa.String(length=160), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("spent_nanos", sa.BigInteger(), nullable=False),
        sa.Column("limit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "budget_id", "window_key", "threshold"),
    )
    op.create_index("ix_budget_alerts_ws_at", "budget_alerts", ["workspace_id", "at"])
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("policy_decision", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("governance", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("governance")
        batch.drop_column("policy_decision")
    op.drop_table("budget_alerts")
    op.drop_table("budget_ledger")
    op.drop_table("rate_limits")
    op.drop_table("budgets")
