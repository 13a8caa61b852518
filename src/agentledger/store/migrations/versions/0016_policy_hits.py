"""policy_hits: what each policy decided, and what a monitor-mode policy would have (GET /api/policies/{id}/hits)

Revision ID: 0016_policy_hits
Revises: 0015_run_marks
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_policy_hits"
down_revision: str | Sequence[str] | None = "0015_run_marks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    # Hits start with this revision: the calls already traced are not read back for them (docs/policies.md).
    op.create_table(
        "policy_hits",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy_id", ID, nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("rule_id", sa.String(length=128), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("session_id", ID, nullable=True),
        sa.Column("department_id", ID, nullable=True),
        sa.Column("virtual_key_id", ID, nullable=True),
        sa.Column("agent_id", ID, nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_policy_hits_policy", "policy_hits", ["workspace_id", "policy_id", "mode", "at", "id"])
    op.create_index("ix_policy_hits_ws_at", "policy_hits", ["workspace_id", "at", "id"])


def downgrade() -> None:
    op.drop_table("policy_hits")
