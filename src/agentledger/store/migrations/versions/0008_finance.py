"""finance: payment steps, a run's paid endpoint, the money measures of the kept books

Revision ID: 0008_finance
Revises: 0007_governance

Every kept row gains the finance measures (and their carries), the ledger tables an error count, the hourly and
daily rollups the run's paid endpoint as a dimension (which changes every row's `dims_key`): so every kept row
is rebuilt from the raw rows once the upgrade is done (store/migrations/env.py), as 0003 filled them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0008_finance"
down_revision: str | Sequence[str] | None = "0007_governance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(length=128)
PAYMENT_COLUMNS = ("revenue_nanos", "refund_nanos", "fee_nanos", "payment_out_nanos")
FINANCE = (*PAYMENT_COLUMNS, "tool_spend_nanos", "estimated_cost_nanos")
CARRIES = tuple(m.removesuffix("_nanos") + "_carry" for m in FINANCE)
LEDGER_TABLES = ("session_paths", "rollup_hourly", "rollup_daily", "rollup_sessions", "rollup_properties")


def _counter(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payment", sa.JSON(), nullable=True))
        for name in PAYMENT_COLUMNS:
            batch_op.add_column(_counter(name))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint_id", ID, nullable=True))
        batch_op.create_index("ix_runs_ws_endpoint", ["workspace_id", "endpoint_id", "started_at", "id"], unique=False)
    with op.batch_alter_table("run_totals", schema=None) as batch_op:
        for name in (*FINANCE, *CARRIES):
            batch_op.add_column(_counter(name))
    for table in LEDGER_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in ("errors", *FINANCE, *CARRIES):
                batch_op.add_column(_counter(name))
            if table in ("rollup_hourly", "rollup_daily"):
                batch_op.add_column(sa.Column("endpoint_id", ID, nullable=True))
    context.config.attributes["rebuild_books"] = True


def downgrade() -> None:
    for table in LEDGER_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table in ("rollup_hourly", "rollup_daily"):
                batch_op.drop_column("endpoint_id")
            for name in ("errors", *FINANCE, *CARRIES):
                batch_op.drop_column(name)
    with op.batch_alter_table("run_totals", schema=None) as batch_op:
        for name in (*FINANCE, *CARRIES):
            batch_op.drop_column(name)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_ws_endpoint")
        batch_op.drop_column("endpoint_id")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        for name in PAYMENT_COLUMNS:
            batch_op.drop_column(name)
        batch_op.drop_column("payment")
