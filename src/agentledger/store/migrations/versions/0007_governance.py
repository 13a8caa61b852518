"""governance: policies and their versions, approvals of escalated calls, run controls

Revision ID: 0007_governance
Revises: 0006_alerts_webhooks
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_governance"
down_revision: str | Sequence[str] | None = "0006_alerts_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "policies",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=1024), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_table(
        "policy_versions",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("policy_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=1024), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "policy_id", "version"),
    )
    op.create_table(
        "approvals",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("binding", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("virtual_key_id", ID, nullable=True),
        sa.Column("agent_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("policy_id", ID, nullable=True),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("rule_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("decided_at", ts, nullable=True),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("comment", sa.String(length=2048), nullable=True),
        sa.Column("used_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_approvals_ws_status", "approvals", ["workspace_id", "status", "created_at"])
    op.create_index("ix_approvals_binding", "approvals", ["workspace_id", "binding", "created_at"])
    op.create_table(
        "run_controls",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("run_id", ID, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("by", sa.String(length=256), nullable=True),
        sa.Column("at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "run_id"),
    )


def downgrade() -> None:
    op.drop_table("run_controls")
    op.drop_index("ix_approvals_binding", table_name="approvals")
    op.drop_index("ix_approvals_ws_status", table_name="approvals")
    op.drop_table("approvals")
    op.drop_table("policy_versions")
    op.drop_table("policies")
