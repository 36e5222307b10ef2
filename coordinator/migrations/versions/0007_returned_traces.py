"""traces.returned: a trace whose job went back to the pool; one live trace per job

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# 0001 left the unique constraint on traces.job_id unnamed: PostgreSQL named it itself, and SQLite's
# batch mode names the reflected constraint by this convention so it can be dropped.
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique() -> str:
    return "traces_job_id_key" if op.get_bind().dialect.name == "postgresql" else "uq_traces_job_id"


def upgrade() -> None:
    with op.batch_alter_table("traces", naming_convention=CONVENTION) as batch:
        batch.add_column(sa.Column("returned", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.drop_constraint(_old_unique(), type_="unique")
    op.create_index(
        "uq_traces_live_job",
        "traces",
        ["job_id"],
        unique=True,
        postgresql_where=sa.text("NOT returned"),
        sqlite_where=sa.text("NOT returned"),
    )


def downgrade() -> None:
    # Only the live trace of each job can stay under the old one-trace-per-job rule.
    op.execute("DELETE FROM traces WHERE returned")
    op.drop_index("uq_traces_live_job", table_name="traces")
    with op.batch_alter_table("traces", naming_convention=CONVENTION) as batch:
        batch.drop_column("returned")
        batch.create_unique_constraint(_old_unique(), ["job_id"])
