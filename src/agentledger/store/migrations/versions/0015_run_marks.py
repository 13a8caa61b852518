"""run_marks: the runs list's decision and property filters (GET /api/runs?decision=…&property=…)

Revision ID: 0015_run_marks
Revises: 0014_sessions_seen
"""

from collections.abc import Sequence

revision: str = "0015_run_marks"
down_revision: str | Sequence[str] | None = "0014_sessions_seen"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
