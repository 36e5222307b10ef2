"""Credit: one row per grant (a usable trace's credit), and teams workers may join."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, UTCDateTime, utcnow


class CreditGrant(Base):
    """Credit granted for one trace: taken back (`revoked_at`) if the trace is withdrawn or returned,
    granted again (a new row) if a re-check passes it. At most one live grant per trace, which the
    partial unique index makes a property of the table rather than of the code."""

    __tablename__ = "credit_events"
    __table_args__ = (
        Index(
            "uq_credit_live_trace",
            "trace_id",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
        Index("ix_credit_worker_created", "worker_id", "created_at"),
        Index("ix_credit_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    worker_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("workers.id", ondelete="CASCADE"))
    trace_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("traces.id", ondelete="CASCADE"))
    tokens: Mapped[int] = mapped_column(Integer)
    # Estimated parameters of the trace's model: the rate (docs/credit.md); 0 where its config was not found.
    parameters: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(128), unique=True)  # the name case-folded: "Foo" is "foo"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamMember(Base):
    """A worker's team: at most one, chosen at registration."""

    __tablename__ = "team_members"

    worker_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
