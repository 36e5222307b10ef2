"""A worker's sequential evidence, weighed and stored with each passed spot-check (docs/trust.md,
"Evidence over a worker's lifetime"); the arithmetic is shared/evidence.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from coordinator.db import utcnow
from coordinator.errors import BadRequest
from coordinator.trust import repository
from coordinator.trust.models import TrustCalibration, WorkerTrust
from shared import evidence
from shared.trust_types import CalibrationIn, CalibrationOut, EvidenceOut, Outcome


@dataclass(frozen=True)
class Pairing:
    """What a validation's honest distribution is looked up by."""

    model: str
    worker_dtype: str
    validator_dtype: str


@dataclass(frozen=True)
class Weighed:
    """One validation's contribution: its log-likelihood ratios, whether it was weighed against a
    calibration, and (after `add`) the worker's statistics and whether one reached the threshold."""

    cells: tuple[int, ...]
    ratios: list[float]
    calibrated: bool
    statistics: list[float]
    crossed: bool = False

    def details(self) -> dict[str, Any]:
        return {
            "cells": list(self.cells),
            "ratios": self.ratios,
            "statistics": self.statistics,
            "calibrated": self.calibrated,
        }


def weigh(session: Session, pairing: Pairing, outcome: Outcome) -> Weighed:
    """The log-likelihood ratios of an outcome's cells against the pairing's honest distribution,
    or against the wide default where no calibration was stored."""
    row = repository.calibration(session, pairing.model, pairing.worker_dtype, pairing.validator_dtype)
    honest = evidence.honest_distribution(row.counts if row is not None else None)
    ratios = evidence.log_ratios(outcome.cells, evidence.cell_ratios(honest))
    return Weighed(outcome.cells, ratios, row is not None, [])


def add(record: WorkerTrust, weighed: Weighed, threshold: float) -> Weighed:
    """Advance the worker's CUSUMs by one passed spot-check (in the caller's transaction)."""
    statistics = evidence.advance(record.evidence or [], weighed.ratios)
    record.evidence = statistics
    record.evidence_positions += sum(weighed.cells)
    record.evidence_validations += 1
    record.evidence_uncalibrated += 0 if weighed.calibrated else 1
    crossed = max(statistics) >= threshold
    return Weighed(weighed.cells, weighed.ratios, weighed.calibrated, statistics, crossed)


def reset(record: WorkerTrust) -> None:
    """An operator's decision starts the evidence again (the counts of what was weighed stay)."""
    record.evidence = [0.0] * len(evidence.ALTERNATIVES)


def failure(weighed: Weighed, threshold: float) -> dict[str, Any]:
    """What a quarantine by evidence records as the worker's last failure."""
    return {"evidence": True, "statistics": weighed.statistics, "threshold": threshold}


def out(record: WorkerTrust | None, false_alarm: float, lifetime: int) -> EvidenceOut:
    h = evidence.threshold(false_alarm, lifetime)
    statistics = list(record.evidence or []) if record is not None else []
    statistics = statistics or [0.0] * len(evidence.ALTERNATIVES)
    validations = record.evidence_validations if record is not None else 0
    return EvidenceOut(
        statistic=max(statistics),
        statistics=statistics,
        alternatives=[f"{group} {share:g}" for group, share in evidence.ALTERNATIVES],
        threshold=h,
        false_alarm=false_alarm,
        lifetime=lifetime,
        false_alarm_so_far=evidence.false_alarm(h, validations) if validations else 0.0,
        validations=validations,
        positions=record.evidence_positions if record is not None else 0,
        uncalibrated=record.evidence_uncalibrated if record is not None else 0,
    )


# --------------------------------------------------------------------------- calibrations


def put_calibration(session: Session, body: CalibrationIn) -> CalibrationOut:
    if len(body.counts) != evidence.BINS:
        raise BadRequest(f"a calibration has {evidence.BINS} counts, not {len(body.counts)}")
    row = TrustCalibration(
        model_name=body.model,
        worker_dtype=body.worker_dtype,
        validator_dtype=body.validator_dtype,
        counts=list(body.counts),
        traces=body.traces,
        updated_at=utcnow(),
    )
    repository.put_calibration(session, row)
    return calibration_out(row)


def calibration_out(row: TrustCalibration) -> CalibrationOut:
    return CalibrationOut(
        model=row.model_name,
        worker_dtype=row.worker_dtype,
        validator_dtype=row.validator_dtype,
        counts=list(row.counts),
        traces=row.traces,
        positions=sum(row.counts),
        updated_at=row.updated_at,
    )


def calibrations(session: Session) -> list[CalibrationOut]:
    return [calibration_out(row) for row in repository.calibrations(session)]
