"""All SQL of the trust area: trust records, validation rows, the trust columns of traces, tokens."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign
from coordinator.credit import repository as credit
from coordinator.db import one_of, utcnow
from coordinator.jobs.models import Job
from coordinator.results.models import PENDING, Trace
from coordinator.trust.models import (
    ERROR,
    QUEUED,
    RECHECK,
    SKIPPED,
    TrustCalibration,
    Validation,
    WorkerTrust,
)
from coordinator.workers.models import Worker

TRACES = cast(Table, Trace.__table__)
WORKERS = cast(Table, Worker.__table__)


def trust_of(session: Session, worker_id: uuid.UUID, lock: bool = False) -> WorkerTrust:
    """The worker's record, created on first use (a new worker starts at trust 0). Concurrent first
    uses insert once: the losing INSERT does nothing instead of failing its transaction."""
    values = {
        "worker_id": worker_id, "trust": 0, "quarantined": False, "passed": 0, "failed": 0, "skipped": 0,
        "unverifiable": 0, "evidence_positions": 0, "evidence_validations": 0, "evidence_uncalibrated": 0,
        "updated_at": utcnow(),
    }  # fmt: skip
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(WorkerTrust).values(values).on_conflict_do_nothing(index_elements=["worker_id"]))
    query = select(WorkerTrust).where(WorkerTrust.worker_id == worker_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one()


def sampling_of(session: Session, campaign_id: uuid.UUID) -> dict[str, Any] | None:
    value = session.scalar(select(Campaign.sampling).where(Campaign.id == campaign_id))
    return dict(value) if value is not None else None


def campaign_models(
    session: Session, campaign_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    """campaign id -> (model name, revision)."""
    query = select(Campaign.id, Campaign.model_name, Campaign.model_revision).where(
        Campaign.id.in_(campaign_ids)
    )
    return {row[0]: (row[1], row[2]) for row in session.execute(query)}


def trace(session: Session, trace_id: uuid.UUID, lock: bool = False) -> Trace | None:
    query = select(Trace).where(Trace.id == trace_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def worker_of(session: Session, trace_id: uuid.UUID) -> uuid.UUID | None:
    """The trace's worker, read without a lock (it never changes): what the worker's trust record
    is locked by before the trace is (coordinator/trust/service.py, lock order)."""
    return session.scalar(select(Trace.worker_id).where(Trace.id == trace_id))


def job_rows(session: Session, trace_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """trace id -> its job's (id, campaign_id, seed, sample_index), what the lease path builds a
    JobSpec from."""
    t, j = TRACES.c, Job
    query = (
        select(t.id.label("trace_id"), j.id, j.campaign_id, j.seed, j.sample_index)
        .select_from(TRACES.join(Job, j.id == t.job_id))
        .where(one_of(session, t.id, trace_ids))
    )
    return {row.trace_id: row for row in session.execute(query)}


def worker_flags(session: Session, worker_id: uuid.UUID) -> tuple[bool, str] | None:
    """(banned, name) of a worker, or None."""
    row = session.execute(select(Worker.banned, Worker.name).where(Worker.id == worker_id)).first()
    return None if row is None else (bool(row[0]), str(row[1]))


def add_validation(session: Session, validation: Validation) -> None:
    session.add(validation)


def taint(
    session: Session, worker_id: uuid.UUID, after: datetime | None, failed: uuid.UUID
) -> list[uuid.UUID]:
    """Withdraw the worker's traces created after `after` (all, if None) that no validation vouches
    for, and mark them for re-validation. Returns the ids to enqueue: those already queued have a
    task, and those without a verdict yet are decided (as re-checks) when their verdict comes."""
    t = TRACES.c
    # A returned trace is settled: its job is done again by someone else.
    scope = [t.worker_id == worker_id, t.id != failed, t.returned.is_(False)]
    if after is not None:
        scope.append(t.created_at > after)
    unvouched = (SKIPPED, ERROR, QUEUED)
    enqueue = list(session.scalars(select(t.id).where(*scope, t.validation.in_((SKIPPED, ERROR)))))
    session.execute(
        update(TRACES)
        .where(*scope, or_(t.validation.is_(None), t.validation.in_(unvouched)))
        .values(withdrawn=True)
    )
    session.execute(update(TRACES).where(*scope, t.validation.in_(unvouched)).values(validation=RECHECK))
    credit.revoke(session, enqueue)  # only skipped traces among them were usable, hence credited
    return enqueue


def queue_all(session: Session, worker_id: uuid.UUID) -> list[uuid.UUID]:
    """Withdraw every verified, verifiable trace of the worker until it is re-validated."""
    t = TRACES.c
    scope = (t.worker_id == worker_id, t.status != PENDING, t.verifiable.is_(True), t.returned.is_(False))
    ids = list(session.scalars(select(t.id).where(*scope)))
    if ids:
        session.execute(
            update(TRACES).where(one_of(session, t.id, ids)).values(withdrawn=True, validation=RECHECK)
        )
    credit.revoke(session, ids)
    return ids


def undecided(session: Session, verified_before: datetime, limit: int) -> list[uuid.UUID]:
    """Traces with a verdict but no spot-check decision (the decision step was lost)."""
    t = TRACES.c
    query = (
        select(t.id)
        .where(t.validation.is_(None), t.status != PENDING, t.verified_at < verified_before)
        .order_by(t.verified_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def waiting(session: Session, verified_before: datetime, limit: int) -> list[uuid.UUID]:
    """Traces queued for validation long ago (a lost task or a crashed validator)."""
    t = TRACES.c
    query = (
        select(t.id)
        .where(t.validation.in_((QUEUED, RECHECK)), t.verified_at < verified_before)
        .order_by(t.verified_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def records(session: Session, limit: int, offset: int) -> list[tuple[Worker, WorkerTrust | None]]:
    """(Worker, WorkerTrust or None) for volunteer workers, oldest first."""
    query = (
        select(Worker, WorkerTrust)
        .join(WorkerTrust, WorkerTrust.worker_id == Worker.id, isouter=True)
        .where(Worker.scope == "volunteer")
        .order_by(Worker.created_at, Worker.id)
        .limit(limit)
        .offset(offset)
    )
    return [(w, r) for w, r in session.execute(query)]


def worker(session: Session, worker_id: uuid.UUID) -> Worker | None:
    return session.get(Worker, worker_id)


def withdrawn_counts(session: Session, worker_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not worker_ids:
        return {}
    t = TRACES.c
    query = (
        select(t.worker_id, func.count())
        .where(one_of(session, t.worker_id, worker_ids), t.withdrawn.is_(True))
        .group_by(t.worker_id)
    )
    return {wid: int(n) for wid, n in session.execute(query)}


def validations(
    session: Session, worker_id: uuid.UUID | None, status: str | None, limit: int, offset: int = 0
) -> Sequence[Validation]:
    query = (
        select(Validation).order_by(Validation.created_at.desc(), Validation.id).limit(limit).offset(offset)
    )
    if worker_id is not None:
        query = query.where(Validation.worker_id == worker_id)
    if status is not None:
        query = query.where(Validation.status == status)
    return session.scalars(query).all()


def set_token_hash(session: Session, worker_id: uuid.UUID, token_hash: str) -> bool:
    result = session.execute(update(WORKERS).where(WORKERS.c.id == worker_id).values(token_hash=token_hash))
    return bool(getattr(result, "rowcount", 0))


def touch(record: WorkerTrust) -> None:
    record.updated_at = utcnow()


def calibration(
    session: Session, model: str, worker_dtype: str, validator_dtype: str
) -> TrustCalibration | None:
    return session.get(TrustCalibration, (model, worker_dtype, validator_dtype))


def calibrations(session: Session) -> Sequence[TrustCalibration]:
    query = select(TrustCalibration).order_by(
        TrustCalibration.model_name, TrustCalibration.worker_dtype, TrustCalibration.validator_dtype
    )
    return session.scalars(query).all()


def put_calibration(session: Session, row: TrustCalibration) -> None:
    """Insert or replace a pairing's calibration (a new measurement supersedes the old one)."""
    session.merge(row)
