from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from coordinator.db import one_of
from coordinator.jobs.models import Job
from coordinator.problems.models import Problem
from coordinator.results.models import PENDING, Trace

# Core statements on the hot submission path: the ORM's per-statement work costs more than the SQL.
TRACES = cast(Table, Trace.__table__)


def attempt_owners(session: Session, attempt_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """attempt id -> worker id, for the attempts already stored."""
    t = TRACES.c
    query = select(t.attempt_id, t.worker_id).where(one_of(session, t.attempt_id, attempt_ids))
    return {attempt: worker for attempt, worker in session.execute(query)}


def lease_of_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """job id -> the lease id its live trace came under."""
    t = TRACES.c
    query = select(t.job_id, t.lease_id).where(one_of(session, t.job_id, job_ids), t.returned.is_(False))
    return {job: lease for job, lease in session.execute(query)}


def unverifiable_count(session: Session, worker_id: uuid.UUID) -> int:
    t = TRACES.c
    query = select(func.count()).where(t.worker_id == worker_id, t.verifiable.is_(False))
    return int(session.scalar(query) or 0)


def insert_traces(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(TRACES), rows)


def get_for_update(session: Session, trace_id: uuid.UUID, lock: bool) -> Trace | None:
    query = select(Trace).where(Trace.id == trace_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def problem_of(session: Session, job_id: uuid.UUID) -> Problem:
    query = select(Problem).join(Job, Job.problem_id == Problem.id).where(Job.id == job_id)
    return session.scalars(query).one()


def stale_pending(session: Session, older_than: datetime, limit: int) -> Sequence[uuid.UUID]:
    query = (
        select(Trace.id)
        .where(Trace.status == PENDING, Trace.created_at < older_than)
        .order_by(Trace.created_at)
        .limit(limit)
    )
    return session.scalars(query).all()


def count_by_status(session: Session) -> dict[str, int]:
    query = select(Trace.status, func.count()).group_by(Trace.status)
    return {status: int(n) for status, n in session.execute(query)}
