"""trust: validations, worker trust records, trace validation state

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import coordinator.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
GUID = coordinator.db.GUID
UTC = coordinator.db.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("verifiable", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("validation", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("withdrawn", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_index("ix_traces_validation_verified", ["validation", "verified_at"], unique=False)
    op.create_table(
        "worker_trust",
        sa.Column("worker_id", GUID(), nullable=False),
        sa.Column("trust", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Boolean(), nullable=False),
        sa.Column("passed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("unverifiable", sa.Integer(), nullable=False),
        sa.Column("vouched_until", UTC(), nullable=True),
        sa.Column("last_failure", JSON, nullable=True),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_table(
        "validations",
        sa.Column("id", GUID(), nullable=False),
        sa.Column("trace_id", GUID(), nullable=False),
        sa.Column("worker_id", GUID(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("logprob_error", sa.Float(), nullable=True),
        sa.Column("tolerance", sa.Float(), nullable=True),
        sa.Column("validator", JSON, nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["trace_id"], ["traces.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("validations") as batch:
        batch.create_index("ix_validations_trace_id", ["trace_id"], unique=False)
        batch.create_index("ix_validations_worker_created", ["worker_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_table("validations")
    op.drop_table("worker_trust")
    with op.batch_alter_table("traces") as batch:
        batch.drop_index("ix_traces_validation_verified")
        batch.drop_column("withdrawn")
        batch.drop_column("validation")
        batch.drop_column("verifiable")
