from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coordinator.db import GUID, Base, JSONType, UTCDateTime, utcnow


class CampaignStatus(StrEnum):
    """Whether volunteers get a campaign's jobs; `done` is reported once every job has its verdict."""

    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"


class CampaignDtype(Base):
    """One compute dtype a campaign takes work computed in (docs/trust.md: why restrict it)."""

    __tablename__ = "campaign_dtypes"

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    dtype: Mapped[str] = mapped_column(String(16), primary_key=True)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    problem_set_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("problem_sets.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_revision: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sampling: Mapped[dict[str, Any]] = mapped_column(JSONType)
    samples_per_problem: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    budget: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # The compute dtypes it takes work in; none: any dtype.
    dtypes: Mapped[list[CampaignDtype]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", passive_deletes=True
    )
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.RUNNING, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
