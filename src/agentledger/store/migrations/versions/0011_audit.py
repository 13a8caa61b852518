"""audit: the hash-chained audit log per workspace and its signed checkpoints

Revision ID: 0011_audit
Revises: 0010_outbound_payments
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_audit"
down_revision: str | Sequence[str] | None = "0010_outbound_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "audit_events",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("time", ts, nullable=False),
        sa.Column("actor_type", sa.String(length=32), nullable=False),
        sa.Column("actor_id", sa.String(length=256), nullable=False),
        sa.Column("actor_role", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=256), nullable=False),
        sa.Column("before", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("after", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("step_id", ID, nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "seq"),
        sa.UniqueConstraint("workspace_id", "id", name="uq_audit_events_ws_id"),
    )
    op.create_index("ix_audit_events_action", "audit_events", ["workspace_id", "action", "seq"])
    op.create_index("ix_audit_events_actor", "audit_events", ["workspace_id", "actor_id", "seq"])
    op.create_index("ix_audit_events_target", "audit_events", ["workspace_id", "target_type", "target_id", "seq"])
    op.create_index("ix_audit_events_time", "audit_events", ["workspace_id", "time"])
    op.create_index("ix_audit_events_run", "audit_events", ["workspace_id", "run_id"])
    op.create_table(
        "audit_heads",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("signed_at", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "seq"),
    )
    op.create_table(
        "audit_keys",
        sa.Column("workspace_id", ID, nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "key_id"),
    )


def downgrade() -> None:
    op.drop_table("audit_keys")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_heads")
    op.drop_table("audit_events")
