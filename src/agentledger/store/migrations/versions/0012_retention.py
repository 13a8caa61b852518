"""retention: per-workspace retention of bodies and trace rows, and what the retention job has done

Revision ID: 0012_retention
Revises: 0011_audit
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_retention"
down_revision: str | Sequence[str] | None = "0011_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "retention",
        sa.Column("workspace_id", sa.String(length=128), nullable=False),
        sa.Column("bodies_days", sa.Integer(), nullable=True),
        sa.Column("traces_days", sa.Integer(), nullable=True),
        sa.Column("audit_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=True),
        sa.Column("traces_horizon", ts, nullable=True),
        sa.Column("bodies_horizon", ts, nullable=True),
        sa.Column("swept_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id"),
    )


def downgrade() -> None:
    op.drop_table("retention")
