"""campaign_dtypes: the compute dtypes a campaign takes work in, one row each (was a delimited
string matched with LIKE in campaigns.worker_dtypes)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coordinator.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _tables() -> tuple[sa.TableClause, sa.TableClause]:
    guid = coordinator.db.GUID()
    campaigns = sa.table("campaigns", sa.column("id", guid), sa.column("worker_dtypes", sa.String))
    dtypes = sa.table("campaign_dtypes", sa.column("campaign_id", guid), sa.column("dtype", sa.String))
    return campaigns, dtypes


def upgrade() -> None:
    op.create_table(
        "campaign_dtypes",
        sa.Column("campaign_id", coordinator.db.GUID(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", "dtype"),
    )
    bind = op.get_bind()
    campaigns, dtypes = _tables()
    kept = campaigns.c.worker_dtypes.isnot(None)
    rows = bind.execute(sa.select(campaigns.c.id, campaigns.c.worker_dtypes).where(kept))
    values = [{"campaign_id": cid, "dtype": d} for cid, joined in rows for d in joined.split(",") if d]
    if values:
        bind.execute(dtypes.insert(), values)
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("worker_dtypes")


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("worker_dtypes", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    campaigns, dtypes = _tables()
    joined: dict[object, list[str]] = {}
    for campaign_id, dtype in bind.execute(
        sa.select(dtypes.c.campaign_id, dtypes.c.dtype).order_by(dtypes.c.dtype)
    ):
        joined.setdefault(campaign_id, []).append(dtype)
    for campaign_id, names in joined.items():
        value = ",".join(["", *names, ""])
        bind.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(worker_dtypes=value))
    op.drop_table("campaign_dtypes")
