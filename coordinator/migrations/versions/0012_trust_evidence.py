"""trust_evidence: per-worker sequential evidence (CUSUM statistics, positions and validations
weighed), each validation's contribution, and honest calibrations per (model, worker dtype,
validator dtype)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import coordinator.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("worker_trust") as batch:
        batch.add_column(sa.Column("evidence", JSON, nullable=True))
        for name in ("evidence_positions", "evidence_validations", "evidence_uncalibrated"):
            batch.add_column(sa.Column(name, sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("validations") as batch:
        batch.add_column(sa.Column("evidence", JSON, nullable=True))
    op.create_table(
        "trust_calibrations",
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("worker_dtype", sa.String(length=16), nullable=False),
        sa.Column("validator_dtype", sa.String(length=16), nullable=False),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("traces", sa.Integer(), nullable=False),
        sa.Column("updated_at", coordinator.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_name", "worker_dtype", "validator_dtype"),
    )


def downgrade() -> None:
    op.drop_table("trust_calibrations")
    with op.batch_alter_table("validations") as batch:
        batch.drop_column("evidence")
    with op.batch_alter_table("worker_trust") as batch:
        for name in ("evidence_uncalibrated", "evidence_validations", "evidence_positions", "evidence"):
            batch.drop_column(name)
