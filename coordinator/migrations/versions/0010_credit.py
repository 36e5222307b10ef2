"""credit_events (the credit ledger), teams and team_members

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coordinator.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    guid, when = coordinator.db.GUID(), coordinator.db.UTCDateTime()
    op.create_table(
        "credit_events",
        sa.Column("id", guid, primary_key=True),
        sa.Column("worker_id", guid, sa.ForeignKey("workers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trace_id", guid, sa.ForeignKey("traces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("revoked_at", when, nullable=True),
    )
    live = sa.text("revoked_at IS NULL")
    op.create_index(
        "uq_credit_live_trace", "credit_events", ["trace_id"], unique=True,
        postgresql_where=live, sqlite_where=live,
    )  # fmt: skip
    op.create_index("ix_credit_worker_created", "credit_events", ["worker_id", "created_at"])
    op.create_index("ix_credit_created", "credit_events", ["created_at"])
    op.create_table(
        "teams",
        sa.Column("id", guid, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", when, nullable=False),
    )
    op.create_table(
        "team_members",
        sa.Column("worker_id", guid, sa.ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("team_id", guid, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("joined_at", when, nullable=False),
    )
    op.create_index("ix_team_members_team_id", "team_members", ["team_id"])


def downgrade() -> None:
    op.drop_table("team_members")
    op.drop_table("teams")
    op.drop_table("credit_events")
