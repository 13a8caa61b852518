"""finance: payment steps, a run's paid endpoint, the money measures of the kept books

Revision ID: 0008_finance
Revises: 0007_governance
"""

from collections.abc import Sequence

revision: str = "0008_finance"
down_revision: str | Sequence[str] | None = "0007_governance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
