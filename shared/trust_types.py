"""Response models of the trust API (operator-facing: workers never see any of them), and the
verdict of one re-scoring (`Outcome`): made by the model code (ml/rescore.py), recorded by the
coordinator's trust area, which must not import the model code to read it."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from shared.protocol import Wire

WorkerState = Literal["active", "quarantined", "banned"]


class ValidationOut(Wire):
    id: uuid.UUID
    trace_id: uuid.UUID
    worker_id: uuid.UUID
    purpose: str
    status: str
    reason: str
    position: int | None = Field(description="first failing position, or the worst one when passed")
    margin: float | None = Field(description="worst margin of a sampled token, logit units")
    logprob_error: float | None
    tolerance: float | None
    validator: dict[str, Any]
    seconds: float
    evidence: dict[str, Any] | None = Field(
        default=None,
        description="what a passed spot-check added to its worker's evidence: cells (positions per "
        "cell of shared/evidence.py), ratios (log-likelihood ratio per alternative), statistics "
        "(the CUSUMs after it), calibrated (false: weighed with the wide default)",
    )
    created_at: datetime


class EvidenceOut(Wire):
    """A worker's sequential evidence (docs/trust.md, "Evidence over a worker's lifetime")."""

    statistic: float = Field(description="the largest CUSUM statistic over the alternatives, in nats")
    statistics: list[float] = Field(description="one CUSUM statistic per alternative")
    alternatives: list[str] = Field(
        description="each alternative: the group of cells a cheater's positions fall in, and how often"
    )
    threshold: float = Field(description="a statistic reaching this quarantines the worker")
    false_alarm: float = Field(description="bound on an honest worker's alarm over its lifetime")
    lifetime: int = Field(description="validations per worker lifetime the bound is stated for")
    false_alarm_so_far: float = Field(description="the same bound over the validations weighed so far")
    validations: int = Field(description="passed spot-checks weighed")
    positions: int = Field(description="validated positions weighed")
    uncalibrated: int = Field(description="validations weighed with the wide default distribution")


class TrustOut(Wire):
    worker_id: uuid.UUID
    name: str
    state: WorkerState
    trust: int = Field(description="consecutive passed spot-checks")
    check_probability: float = Field(description="chance that the worker's next trace is validated")
    passed: int
    failed: int
    skipped: int
    unverifiable: int
    withdrawn: int = Field(description="traces kept out of dumps until they pass a validation")
    vouched_until: datetime | None
    last_failure: dict[str, Any] | None
    evidence: EvidenceOut
    recent: list[ValidationOut] = Field(default_factory=list)


class CalibrationIn(Wire):
    """Honest cell counts of a model for one pairing, measured by `python -m bench.trust calibrate`."""

    model: str = Field(min_length=1, max_length=255)
    worker_dtype: str = Field(min_length=1, max_length=16)
    validator_dtype: str = Field(min_length=1, max_length=16)
    counts: list[Annotated[int, Field(ge=0)]]
    traces: int = Field(ge=1)


class CalibrationOut(CalibrationIn):
    positions: int
    updated_at: datetime


class Requeued(Wire):
    worker_id: uuid.UUID
    traces: int


class TokenRevoked(Wire):
    worker_id: uuid.UUID
    revoked: bool


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Outcome:
    """The verdict of one re-scoring, with its evidence."""

    passed: bool
    reason: str
    position: int | None  # the first failing position; when passed, the position of the worst margin
    margin: float  # worst margin over sampled positions, logit units (+inf when nothing was sampled)
    logprob_error: float  # worst distance of a claimed logprob outside its honest range, in nats
    tolerance: float  # eps, the honest logit noise allowed
    positions: int
    needed: float = math.inf  # the smallest eps this trace passes with (calibration), in logit units
    # per evidence cell (shared/evidence.py), how many of the trace's positions fell in it; empty
    # when the claim failed before scoring
    cells: tuple[int, ...] = ()

    def details(self) -> dict[str, Any]:
        """JSON-safe: infinities and NaN (nothing sampled, or a failure before scoring) become None."""
        return {
            "reason": self.reason,
            "position": self.position,
            "margin": _finite(self.margin),
            "logprob_error": _finite(self.logprob_error),
            "tolerance": self.tolerance,
            "needed": _finite(self.needed),
            "positions": self.positions,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
