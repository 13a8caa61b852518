"""outbound payments: a workspace's payment signers (keys for x402 payments the gateway makes for its agents)

Revision ID: 0010_outbound_payments
Revises: 0009_paid_endpoints
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_outbound_payments"
down_revision: str | Sequence[str] | None = "0009_paid_endpoints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "payment_signers",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("key_encrypted", sa.Text(), nullable=False),
        sa.Column("max_payment_nanos", sa.BigInteger(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_payment_signers_ws_name"),
    )


def downgrade() -> None:
    op.drop_table("payment_signers")
