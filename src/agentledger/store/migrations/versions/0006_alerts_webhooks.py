"""alerts and webhooks: alerts of every kind (once per subject and window), webhook subscriptions, their outbox

Revision ID: 0006_alerts_webhooks
Revises: 0005_budgets
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_alerts_webhooks"
down_revision: str | Sequence[str] | None = "0005_budgets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "alerts",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=512), nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("budget_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("agent_id", ID, nullable=True),
        sa.Column("department_id", ID, nullable=True),
        sa.Column("policy_id", ID, nullable=True),
        sa.Column("approval_id", ID, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "kind", "dedupe_key"),
        sa.UniqueConstraint("workspace_id", "id", name="uq_alerts_ws_id"),
    )
    op.create_index("ix_alerts_ws_at", "alerts", ["workspace_id", "at", "id"])
    op.create_index("ix_alerts_ws_kind_at", "alerts", ["workspace_id", "kind", "at", "id"])
    op.create_table(
        "webhooks",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("webhook_id", ID, nullable=False),
        sa.Column("alert_id", ID, nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", ts, nullable=True),
        sa.Column("lease_until", ts, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index(
        "ix_webhook_deliveries_hook", "webhook_deliveries", ["workspace_id", "webhook_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("alerts")
