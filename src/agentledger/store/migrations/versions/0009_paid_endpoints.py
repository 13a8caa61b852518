"""paid endpoints over x402, workflow agents' runtimes, payment proofs claimed once, payment signers

Revision ID: 0009_paid_endpoints
Revises: 0008_finance
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_paid_endpoints"
down_revision: str | Sequence[str] | None = "0008_finance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "x402_payments",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("payer", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.String(length=80), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("endpoint_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("payment_id", ID, nullable=True),
        sa.Column("reference", sa.String(length=256), nullable=True),
        sa.Column("error", sa.String(length=1024), nullable=True),
        sa.Column("valid_before", ts, nullable=True),
        sa.Column("claimed_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_x402_payments_run", "x402_payments", ["workspace_id", "run_id"])
    op.create_table(
        "workflow_runtimes",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("auth_name", sa.String(length=64), nullable=True),
        sa.Column("auth_value_encrypted", sa.Text(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.ForeignKeyConstraint(["workspace_id", "agent_id"], ["agents.workspace_id", "agents.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "agent_id"),
    )
    op.create_table(
        "paid_endpoints",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("asset", sa.String(length=64), nullable=False),
        sa.Column("pay_to", sa.String(length=64), nullable=False),
        sa.Column("fee_percent", sa.String(length=16), nullable=False),
        sa.Column("fee_fixed_nanos", sa.BigInteger(), nullable=False),
        sa.Column("input_schema", sa.JSON(), nullable=True),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("max_timeout_s", sa.Integer(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("virtual_key_id", ID, nullable=False),
        sa.Column("virtual_key_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("disabled_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id", "agent_id"], ["agents.workspace_id", "agents.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
        sa.UniqueConstraint("workspace_id", "slug", name="uq_paid_endpoints_ws_slug"),
    )


def downgrade() -> None:
    op.drop_table("paid_endpoints")
    op.drop_table("workflow_runtimes")
    op.drop_index("ix_x402_payments_run", table_name="x402_payments")
    op.drop_table("x402_payments")
