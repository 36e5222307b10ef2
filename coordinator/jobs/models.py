from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, UTCDateTime, utcnow


class JobStatus(StrEnum):
    """Where a job is in its life: in the pool, with a worker, its trace stored, its trace decided."""

    QUEUED = "queued"
    LEASED = "leased"
    SUBMITTED = "submitted"  # a trace is stored; its verdict is pending
    DONE = "done"  # the trace has its verdict


QUEUED, LEASED, SUBMITTED, DONE = JobStatus.QUEUED, JobStatus.LEASED, JobStatus.SUBMITTED, JobStatus.DONE


class Job(Base):
    """One problem x one sample index within a campaign; leased to at most one worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("campaign_id", "problem_id", "sample_index"),
        Index("ix_jobs_status_deadline", "status", "lease_deadline"),
        Index("ix_jobs_campaign_status", "campaign_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("campaigns.id", ondelete="CASCADE"))
    problem_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("problems.id"))
    sample_index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    lease_id: Mapped[uuid.UUID | None] = mapped_column(GUID, nullable=True, unique=True)
    worker_id: Mapped[uuid.UUID | None] = mapped_column(GUID, ForeignKey("workers.id"), nullable=True)
    lease_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the current lease was granted: heartbeats never push its deadline past this plus
    # FLYWHEEL_LEASE_MAX_LIFETIME_S, so a worker cannot hoard a job forever.
    leased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
