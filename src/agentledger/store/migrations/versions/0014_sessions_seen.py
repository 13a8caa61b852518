"""sessions_seen: the sessions list's index, most recently active first (GET /api/sessions)

Revision ID: 0014_sessions_seen
Revises: 0013_members
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014_sessions_seen"
down_revision: str | Sequence[str] | None = "0013_members"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sessions_ws_seen", "sessions", ["workspace_id", "last_seen_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_sessions_ws_seen", table_name="sessions")
