from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, false, text, true
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, JSONType, PackedFloats, PackedInts, UTCDateTime, utcnow
from shared.protocol import TraceStatus

PENDING, ACCEPTED, REJECTED = TraceStatus.pending, TraceStatus.accepted, TraceStatus.rejected


class Trace(Base):
    """A submitted completion; `accepted` only once the verifier's verdict is stored."""

    __tablename__ = "traces"
    __table_args__ = (
        Index("ix_traces_campaign_status", "campaign_id", "status"),
        Index("ix_traces_status_created", "status", "created_at"),
        Index("ix_traces_validation_verified", "validation", "verified_at"),
        # One live trace per job: a returned trace stays as evidence while its job is done again.
        Index(
            "uq_traces_live_job",
            "job_id",
            unique=True,
            postgresql_where=text("NOT returned"),
            sqlite_where=text("NOT returned"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("jobs.id", ondelete="CASCADE"))
    campaign_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("campaigns.id", ondelete="CASCADE"))
    worker_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("workers.id"), index=True)
    lease_id: Mapped[uuid.UUID] = mapped_column(GUID)
    attempt_id: Mapped[uuid.UUID] = mapped_column(GUID, unique=True)
    text: Mapped[str] = mapped_column(Text)
    completion_token_ids: Mapped[list[int]] = mapped_column(PackedInts)
    logprobs: Mapped[list[float]] = mapped_column(PackedFloats)
    finish_reason: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    generate_s: Mapped[float] = mapped_column(Float, default=0.0)
    engine: Mapped[dict[str, Any]] = mapped_column(JSONType)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Trust (coordinator/trust): whether the engine applied the seeded sampler, what the spot-check
    # policy decided (None until the verdict is stored), and whether the trace is kept out of dumps
    # because its worker failed a validation after it and it has not been re-validated since.
    verifiable: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    validation: Mapped[str | None] = mapped_column(String(16), nullable=True)
    withdrawn: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Its job went back to the pool (the trace was unverifiable or failed its validation): kept as
    # evidence, counted nowhere, and the job's next trace is the live one.
    returned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
