"""All SQL for jobs. Leasing is the one hot, contended path: see `claim`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign
from coordinator.jobs.models import DONE, LEASED, QUEUED, SUBMITTED, Job
from coordinator.problems.models import Problem


def insert_jobs(session: Session, rows: Iterable[dict[str, Any]], chunk: int = 2000) -> int:
    total, batch = 0, []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            session.execute(insert(Job), batch)
            total, batch = total + len(batch), []
    if batch:
        session.execute(insert(Job), batch)
        total += len(batch)
    return total


def running_campaigns(session: Session, models: Sequence[str]) -> Sequence[uuid.UUID]:
    query = select(Campaign.id).where(Campaign.status == "running").order_by(Campaign.created_at)
    if models:
        query = query.where(Campaign.model_name.in_(models))
    return session.scalars(query).all()


def in_flight(session: Session, worker_id: uuid.UUID, now: datetime) -> int:
    query = select(func.count()).where(
        Job.worker_id == worker_id, Job.status == LEASED, Job.lease_deadline > now
    )
    return int(session.scalar(query) or 0)


def claim(
    session: Session, campaign_ids: Sequence[uuid.UUID], limit: int, now: datetime, skip_locked: bool
) -> list[Job]:
    """Lock up to `limit` leasable jobs: queued ones, or leased ones whose deadline passed.

    On PostgreSQL, FOR UPDATE SKIP LOCKED lets concurrent leases pass each other instead of
    queueing on the same rows; on SQLite the whole transaction already holds the write lock.
    """
    leasable = or_(Job.status == QUEUED, and_(Job.status == LEASED, Job.lease_deadline < now))
    query = select(Job).where(Job.campaign_id.in_(campaign_ids), leasable).limit(limit)
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query).all())


def mark_leased(session: Session, assignments: list[dict[str, Any]]) -> None:
    # ORM bulk UPDATE by primary key: one executemany round trip for the whole batch.
    session.execute(update(Job), assignments)


def problems_for(session: Session, problem_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Problem]:
    rows = session.scalars(select(Problem).where(Problem.id.in_(set(problem_ids)))).all()
    return {row.id: row for row in rows}


def campaigns_for(session: Session, campaign_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Campaign]:
    rows = session.scalars(select(Campaign).where(Campaign.id.in_(set(campaign_ids)))).all()
    return {row.id: row for row in rows}


def extend(
    session: Session, worker_id: uuid.UUID, lease_ids: Sequence[uuid.UUID], deadline: datetime
) -> list[uuid.UUID]:
    """Push the deadline of the caller's live leases; returns the lease ids that were extended."""
    query = (
        update(Job)
        .where(Job.lease_id.in_(lease_ids), Job.worker_id == worker_id, Job.status == LEASED)
        .values(lease_deadline=deadline)
        .returning(Job.lease_id)
    )
    return [row for row in session.scalars(query) if row is not None]


def lock_for_submit(session: Session, lease_ids: Sequence[uuid.UUID], skip_locked: bool) -> dict[uuid.UUID, Job]:
    query = select(Job).where(Job.lease_id.in_(lease_ids))
    if skip_locked:
        query = query.with_for_update()
    return {job.lease_id: job for job in session.scalars(query) if job.lease_id is not None}


def set_status(session: Session, job_ids: Sequence[uuid.UUID], status: str) -> None:
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(status=status))


def count_by_status(session: Session) -> dict[str, int]:
    query = select(Job.status, func.count()).group_by(Job.status)
    return {status: int(n) for status, n in session.execute(query)}


__all__ = ["DONE", "LEASED", "QUEUED", "SUBMITTED"]


def release(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Return jobs to the pool at once (the holder reported it cannot finish them)."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids))
        .values(status=QUEUED, lease_id=None, worker_id=None, lease_deadline=None)
    )


def in_flight_any(session: Session, worker_id: uuid.UUID) -> int:
    query = select(func.count()).where(Job.worker_id == worker_id, Job.status == LEASED)
    return int(session.scalar(query) or 0)
