"""traces.completion_token_ids and traces.logprobs as packed binary arrays (int32 and float64,
little-endian: coordinator.db.PackedInts / PackedFloats) instead of JSON lists

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import coordinator.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

CHUNK = 1000  # traces converted per round trip: memory stays flat in the table's size
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


Types = tuple[sa.types.TypeEngine[Any], sa.types.TypeEngine[Any]]


def _convert(old: Types, new: Types, read: Callable[[Any], Any]) -> None:
    """Add packed (or JSON) twins of both columns, copy every row across in keyset order, then
    replace the old columns by the new ones under their names."""
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("token_ids_new", new[0], nullable=True))
        batch.add_column(sa.Column("logprobs_new", new[1], nullable=True))
    bind = op.get_bind()
    guid = coordinator.db.GUID()
    traces = sa.table("traces", sa.column("id", guid), sa.column("completion_token_ids", old[0]),
                      sa.column("logprobs", old[1]), sa.column("token_ids_new", new[0]),
                      sa.column("logprobs_new", new[1]))  # fmt: skip
    after = None
    while True:
        query = sa.select(traces.c.id, traces.c.completion_token_ids, traces.c.logprobs).order_by(traces.c.id)
        if after is not None:
            query = query.where(traces.c.id > after)
        rows = bind.execute(query.limit(CHUNK)).all()
        if not rows:
            break
        for trace_id, ids, logprobs in rows:
            update = traces.update().where(traces.c.id == trace_id)
            bind.execute(update.values(token_ids_new=read(ids), logprobs_new=read(logprobs)))
        after = rows[-1][0]
    with op.batch_alter_table("traces") as batch:
        batch.drop_column("completion_token_ids")
        batch.drop_column("logprobs")
        batch.alter_column("token_ids_new", new_column_name="completion_token_ids", nullable=False)
        batch.alter_column("logprobs_new", new_column_name="logprobs", nullable=False)


def _listed(value: Any) -> list[Any]:
    """A stored JSON list as numbers to pack. A list that is not all numbers (stored before the
    wire model checked them) packs as empty: the validator then fails that claim alone (its ids
    and logprobs differ in length), as it failed the unreplayable list before."""
    values = json.loads(value) if isinstance(value, str | bytes) else list(value)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return values if numbers else []


def upgrade() -> None:
    packed = (coordinator.db.PackedInts(), coordinator.db.PackedFloats())
    _convert((JSON_TYPE, JSON_TYPE), packed, _listed)


def downgrade() -> None:
    packed = (coordinator.db.PackedInts(), coordinator.db.PackedFloats())
    _convert(packed, (JSON_TYPE, JSON_TYPE), list)
