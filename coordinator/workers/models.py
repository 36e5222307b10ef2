from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, JSONType, UTCDateTime, utcnow


class Worker(Base):
    """A token holder: a volunteer machine, an operator or a researcher."""

    __tablename__ = "workers"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16), index=True)
    # sha256 of the token: tokens carry 256 random bits, so a slow hash adds nothing.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    engine: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    jobs_submitted: Mapped[int] = mapped_column(Integer, default=0)
    jobs_accepted: Mapped[int] = mapped_column(Integer, default=0)
    # Traces of this worker that came back usable (validation passed or skipped) since its last
    # failed validation: what its in-flight limit grows with (workers.service.in_flight_limit).
    lease_credit: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Verification seconds its traces cost in the hour that began at verify_window_at: leases are
    # refused while it is over the hourly budget (workers.service.in_flight_limit).
    verify_spent_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    verify_window_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
