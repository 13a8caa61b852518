"""fetch_replays: a paid fetch's answer under a client's x-request-id, replayed to a retry (docs/paid-endpoints.md)

Revision ID: 0017_fetch_replays
Revises: 0016_policy_hits
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_fetch_replays"
down_revision: str | Sequence[str] | None = "0016_policy_hits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    op.create_table(
        "fetch_replays",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    op.create_index("ix_fetch_replays_ws_started", "fetch_replays", ["workspace_id", "started_at", "id"])


def downgrade() -> None:
    op.drop_table("fetch_replays")
