"""audit: the hash-chained audit log per workspace and its signed checkpoints

Revision ID: 0011_audit
Revises: 0010_outbound_payments
"""

from collections.abc import Sequence

revision: str = "0011_audit"
down_revision: str | Sequence[str] | None = "0010_outbound_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
