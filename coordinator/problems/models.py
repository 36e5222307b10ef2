from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, JSONType, UTCDateTime, utcnow


class ProblemSet(Base):
    __tablename__ = "problem_sets"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Problem(Base):
    __tablename__ = "problems"
    __table_args__ = (UniqueConstraint("problem_set_id", "external_id"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    problem_set_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("problem_sets.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(String(256))
    prompt: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    verifier_kind: Mapped[str] = mapped_column(String(32))
    # Gold answers and hidden tests: never leave the coordinator.
    verifier_spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
