"""policy_hits: what each policy decided, and what a monitor-mode policy would have (GET /api/policies/{id}/hits)

Revision ID: 0016_policy_hits
Revises: 0015_run_marks
"""

from collections.abc import Sequence

revision: str = "0016_policy_hits"
down_revision: str | Sequence[str] | None = "0015_run_marks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
