"""routing: provider key fallbacks, retry policies and per-kind options; requests record their route

Revision ID: 0004_routing
Revises: 0003_books

Columns only, all with defaults: existing keys keep no fallbacks and one attempt, existing requests one attempt.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_routing"
down_revision: str | Sequence[str] | None = "0003_books"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("provider_keys") as batch:
        batch.add_column(sa.Column("fallbacks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("retry", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("requested_model", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("provider_key", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("route_attempts", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("route_attempts")
        batch.drop_column("provider_key")
        batch.drop_column("requested_model")
    with op.batch_alter_table("provider_keys") as batch:
        batch.drop_column("options")
        batch.drop_column("retry")
        batch.drop_column("fallbacks")
