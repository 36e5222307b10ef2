from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from coordinator.jobs.models import Job
from coordinator.problems.models import Problem
from coordinator.results.models import PENDING, Trace


def existing_attempts(session: Session, attempt_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Trace]:
    rows = session.scalars(select(Trace).where(Trace.attempt_id.in_(attempt_ids))).all()
    return {row.attempt_id: row for row in rows}


def traces_for_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Trace]:
    rows = session.scalars(select(Trace).where(Trace.job_id.in_(job_ids))).all()
    return {row.job_id: row for row in rows}


def insert_traces(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(Trace), rows)


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
