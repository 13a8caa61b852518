"""paid endpoints over x402, workflow agents' runtimes, payment proofs claimed once, payment signers

Revision ID: 0009_paid_endpoints
Revises: 0008_finance
"""

from collections.abc import Sequence

revision: str = "0009_paid_endpoints"
down_revision: str | Sequence[str] | None = "0008_finance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
