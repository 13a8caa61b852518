"""run_marks: the runs list's decision and property filters (GET /api/runs?decision=…&property=…)

Revision ID: 0015_run_marks
Revises: 0014_sessions_seen

The marks of the runs already stored are filled from their rows once the upgrade is done
(store/migrations/env.py), as 0003 filled the books.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0015_run_marks"
down_revision: str | Sequence[str] | None = "0014_sessions_seen"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_marks",
        sa.Column("workspace_id", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("mark", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "run_id", "mark"),
    )
    op.create_index("ix_run_marks_ws_mark", "run_marks", ["workspace_id", "mark", "started_at", "run_id"])
    context.config.attributes["rebuild_marks"] = True


def downgrade() -> None:
    op.drop_index("ix_run_marks_ws_mark", table_name="run_marks")
    op.drop_table("run_marks")
