"""Trust records: one per worker, and one row per validation run."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Float, ForeignKey, Index, Integer, String, Text, and_
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, JSONType, UTCDateTime, utcnow
from coordinator.results.models import Trace


class ValidationState(StrEnum):
    """traces.validation: what the spot-check policy decided for a trace, and what came of it."""

    SKIPPED = "skipped"  # not drawn for validation
    QUEUED = "queued"  # a validation task will re-score it
    RECHECK = "recheck"  # withdrawn after its worker failed a validation; re-validated on its own
    PASSED = "passed"
    FAILED = "failed"
    UNVERIFIABLE = "unverifiable"  # the engine could not apply the seeded sampler: nothing to re-score
    ERROR = "error"  # the validator could not run (model unavailable); trust is left alone


SKIPPED, QUEUED, PASSED = ValidationState.SKIPPED, ValidationState.QUEUED, ValidationState.PASSED
FAILED, UNVERIFIABLE, ERROR = ValidationState.FAILED, ValidationState.UNVERIFIABLE, ValidationState.ERROR


class ValidationPurpose(StrEnum):
    """validations.purpose: why a trace was validated."""

    SPOT_CHECK = "spot-check"  # drawn by the adaptive policy: the outcome moves the worker's trust
    RECHECK = "recheck"  # a withdrawn trace re-validated after a failure: it only decides the trace


# `recheck` is both a purpose and the state of a trace waiting for one (equal as strings).
SPOT_CHECK, RECHECK = ValidationPurpose.SPOT_CHECK, ValidationPurpose.RECHECK

# Which traces dumps, selection and training may use: validated and passed, or not drawn for a
# spot-check (`skipped`, also every trace's state while validation is off). Traces whose decision
# or validation is still to come (None, queued, recheck), failed, errored or unverifiable ones are
# left out until a validation passes them.
USABLE = (PASSED, SKIPPED)
UNSETTLED = (QUEUED, RECHECK)  # a validation is still to come


def usable() -> ColumnElement[bool]:
    """The traces dumps, selection and training may use: not withdrawn after a failed validation
    of their worker (a quarantined worker's traces stay out until each passes a re-check), produced
    by an engine that applied the seeded sampler (an unverifiable trace's tokens and logprobs are a
    claim nobody can check), passed or skipped by validation, and still their job's live trace (a
    returned one was replaced by another worker's)."""
    return and_(
        Trace.withdrawn.is_(False),
        Trace.verifiable.is_(True),
        Trace.validation.in_(USABLE),
        Trace.returned.is_(False),
    )


class WorkerTrust(Base):
    """A worker's standing: consecutive passed validations, and the quarantine after a failure."""

    __tablename__ = "worker_trust"

    worker_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True
    )
    trust: Mapped[int] = mapped_column(Integer, default=0)  # consecutive passes; 0 after any failure
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)
    passed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    unverifiable: Mapped[int] = mapped_column(Integer, default=0)
    # created_at of the newest trace that passed a spot-check: a failure withdraws everything after it
    vouched_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_failure: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Sequential evidence (shared/evidence.py): one CUSUM statistic per alternative, updated with
    # every passed spot-check in the transaction that stores it; the positions and validations
    # weighed, and how many of those were weighed without a calibration (the wide default).
    evidence: Mapped[list[float] | None] = mapped_column(JSONType, nullable=True)
    evidence_positions: Mapped[int] = mapped_column(Integer, default=0)
    evidence_validations: Mapped[int] = mapped_column(Integer, default=0)
    evidence_uncalibrated: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Validation(Base):
    """One re-scoring of one trace, with its evidence (worst position, margin, logprob error)."""

    __tablename__ = "validations"
    __table_args__ = (Index("ix_validations_worker_created", "worker_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    trace_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("traces.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("workers.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    margin: Mapped[float | None] = mapped_column(Float, nullable=True)
    logprob_error: Mapped[float | None] = mapped_column(Float, nullable=True)
    tolerance: Mapped[float | None] = mapped_column(Float, nullable=True)
    validator: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # model, device, dtype
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # what the validation added to its worker's evidence: cells, log-likelihood ratios, statistics
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrustCalibration(Base):
    """Honest cell counts (shared/evidence.py) of a model for one (worker dtype, validator dtype)
    pairing, measured from honest traces (`python -m bench.trust calibrate`)."""

    __tablename__ = "trust_calibrations"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    worker_dtype: Mapped[str] = mapped_column(String(16), primary_key=True)
    validator_dtype: Mapped[str] = mapped_column(String(16), primary_key=True)
    counts: Mapped[list[int]] = mapped_column(JSONType)
    traces: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
