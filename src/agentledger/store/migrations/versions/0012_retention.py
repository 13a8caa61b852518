"""retention: per-workspace retention of bodies and trace rows, and what the retention job has done

Revision ID: 0012_retention
Revises: 0011_audit
"""

from collections.abc import Sequence

revision: str = "0012_retention"
down_revision: str | Sequence[str] | None = "0011_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
