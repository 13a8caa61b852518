"""members: members of a workspace with roles, their personal access tokens, and virtual keys owned by a member

Revision ID: 0013_members
Revises: 0012_retention
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_members"
down_revision: str | Sequence[str] | None = "0012_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    ident = sa.String(length=128)
    op.create_table(
        "members",
        sa.Column("workspace_id", ident, nullable=False),
        sa.Column("id", ident, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("department_id", ident, nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
        sa.UniqueConstraint("workspace_id", "email", name="uq_members_email"),
    )
    op.create_table(
        "personal_access_tokens",
        sa.Column("workspace_id", ident, nullable=False),
        sa.Column("id", ident, nullable=False),
        sa.Column("member_id", ident, nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=True),
        sa.Column("revoked_at", ts, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id", "member_id"], ["members.workspace_id", "members.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_personal_access_tokens_member_id", "personal_access_tokens", ["member_id"])
    op.add_column("virtual_keys", sa.Column("owner_member_id", ident, nullable=True))
    op.create_index("ix_virtual_keys_owner_member_id", "virtual_keys", ["owner_member_id"])


def downgrade() -> None:
    op.drop_index("ix_virtual_keys_owner_member_id", table_name="virtual_keys")
    op.drop_column("virtual_keys", "owner_member_id")
    op.drop_index("ix_personal_access_tokens_member_id", table_name="personal_access_tokens")
    op.drop_table("personal_access_tokens")
    op.drop_table("members")
