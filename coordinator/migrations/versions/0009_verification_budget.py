"""workers.verify_spent_s / verify_window_at: verification time a worker's traces cost this hour

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coordinator.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("verify_spent_s", sa.Float(), server_default="0", nullable=False))
        batch.add_column(sa.Column("verify_window_at", coordinator.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("verify_window_at")
        batch.drop_column("verify_spent_s")
