"""All SQL for jobs. Leasing is the one hot, contended path: see `claim`."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, Table, and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign, CampaignDtype, CampaignStatus
from coordinator.db import one_of
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


# The hot paths (lease, submit) use Core statements on the tables: the same SQL as the ORM forms
# without the ORM's per-statement compile and row-loading work, which dominated their CPU time.
JOBS = cast(Table, Job.__table__)
CAMPAIGNS = cast(Table, Campaign.__table__)
PROBLEMS = cast(Table, Problem.__table__)

# A row of a multi-column SELECT (any number of columns, read by name).
JobRow = Row[*tuple[Any, ...]]


def in_flight(session: Session, worker_id: uuid.UUID, now: datetime) -> int:
    j = JOBS.c
    query = (
        select(func.count())
        .select_from(JOBS)
        .where(j.worker_id == worker_id, j.status == LEASED, j.lease_deadline > now)
    )
    return int(session.execute(query).scalar() or 0)


def claim(
    session: Session, models: Sequence[str], dtype: str, limit: int, now: datetime, skip_locked: bool
) -> Sequence[JobRow]:
    """Lock up to `limit` leasable jobs of running campaigns that take work computed in `dtype`:
    queued ones, or leased ones whose deadline passed.

    On PostgreSQL, FOR UPDATE SKIP LOCKED lets concurrent leases pass each other instead of queueing
    on the same rows; on SQLite the whole transaction already holds the write lock. The locking scan
    reads jobs alone (campaigns only through a small semi-join); what the specs need is fetched by
    primary key afterwards (`spec_parts`). No ORDER BY: with stale planner statistics (a campaign
    just inserted) PostgreSQL answered it by sorting every queued job, on every lease.
    """
    j, c = JOBS.c, CAMPAIGNS.c
    running = select(c.id).where(c.status == CampaignStatus.RUNNING, _takes(c.id, dtype))
    if models:
        running = running.where(one_of(session, c.model_name, models))
    leasable = or_(j.status == QUEUED, and_(j.status == LEASED, j.lease_deadline < now))
    query = (
        select(j.id, j.campaign_id, j.problem_id, j.sample_index, j.seed)
        .where(j.campaign_id.in_(running.scalar_subquery()), leasable)
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).all()


def waiting_by_model(session: Session, dtype: str | None, now: datetime, limit: int) -> Sequence[JobRow]:
    """(model_name, model_revision, queued) over running campaigns, most jobs first: the jobs a
    lease could take now (`claim`'s rule), of campaigns that take work computed in `dtype` when
    one is given."""
    j, c = JOBS.c, CAMPAIGNS.c
    leasable = or_(j.status == QUEUED, and_(j.status == LEASED, j.lease_deadline < now))
    queued = func.count().label("queued")
    query = (
        select(c.model_name, c.model_revision, queued)
        .select_from(JOBS.join(CAMPAIGNS, c.id == j.campaign_id))
        .where(c.status == CampaignStatus.RUNNING, leasable)
        .group_by(c.model_name, c.model_revision)
        .order_by(queued.desc(), c.model_name)
        .limit(limit)
    )
    if dtype:
        query = query.where(_takes(c.id, dtype))
    return session.execute(query).all()


def _takes(campaign_id: ColumnElement[Any], dtype: str) -> ColumnElement[bool]:
    """The campaign takes work computed in `dtype`: it names no dtypes, or names this one."""
    d = CampaignDtype
    restricted = exists().where(d.campaign_id == campaign_id)
    return or_(~restricted, exists().where(d.campaign_id == campaign_id, d.dtype == dtype))


def spec_parts(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobRow]:
    """job id -> what its job spec needs from its problem and campaign (primary-key lookups)."""
    j, c, p = JOBS.c, CAMPAIGNS.c, PROBLEMS.c
    query = (
        select(
            j.id,
            p.external_id,
            p.prompt,
            p.system,
            c.model_name,
            c.model_revision,
            c.sampling,
            c.samples_per_problem,
            c.budget,
        )
        .select_from(JOBS.join(CAMPAIGNS, c.id == j.campaign_id).join(PROBLEMS, p.id == j.problem_id))
        .where(one_of(session, j.id, job_ids))
    )
    return {row.id: row for row in session.execute(query)}


_MARK_LEASED = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("job_id"))
    .values(
        status=LEASED,
        lease_id=bindparam("new_lease_id"),
        worker_id=bindparam("new_worker_id"),
        lease_deadline=bindparam("new_deadline"),
        leased_at=bindparam("new_leased_at"),
        attempts=JOBS.c.attempts + 1,
    )
)


def mark_leased(
    session: Session,
    job_ids: Sequence[uuid.UUID],
    lease_ids: Sequence[uuid.UUID],
    worker_id: uuid.UUID,
    deadline: datetime,
    now: datetime,
) -> None:
    # One executemany (a single pipelined round trip on psycopg) for the whole batch.
    common = {"new_worker_id": worker_id, "new_deadline": deadline, "new_leased_at": now}
    session.execute(
        _MARK_LEASED,
        [
            {"job_id": job, "new_lease_id": lease, **common}
            for job, lease in zip(job_ids, lease_ids, strict=True)
        ],
    )


def extend(
    session: Session,
    worker_id: uuid.UUID,
    lease_ids: Sequence[uuid.UUID],
    now: datetime,
    ttl: timedelta,
    max_lifetime: timedelta,
) -> dict[uuid.UUID, datetime]:
    """Push the deadline of the caller's live leases to now + ttl, but never past their grant time
    + max_lifetime; returns lease id -> new deadline for the leases still alive."""
    j = JOBS.c
    held = select(j.lease_id, j.leased_at).where(
        j.lease_id.in_(lease_ids), j.worker_id == worker_id, j.status == LEASED
    )
    deadlines: dict[uuid.UUID, datetime] = {}
    started: dict[uuid.UUID, datetime] = {}
    for lease_id, leased_at in session.execute(held.with_for_update()):
        granted = leased_at or now  # granted before leases had a start time: the cap counts from now
        deadline = min(now + ttl, granted + max_lifetime)
        if deadline > now:
            deadlines[lease_id], started[lease_id] = deadline, granted
    if deadlines:
        session.execute(
            update(JOBS)
            .where(j.lease_id == bindparam("held_lease"))
            .values(lease_deadline=bindparam("new_deadline"), leased_at=bindparam("granted"))
            .execution_options(synchronize_session=False),
            [{"held_lease": k, "new_deadline": v, "granted": started[k]} for k, v in deadlines.items()],
        )
    return deadlines


def lock_for_submit(session: Session, lease_ids: Sequence[uuid.UUID], lock: bool) -> dict[uuid.UUID, JobRow]:
    """The jobs behind these leases (locked on PostgreSQL), with their campaign's max_tokens."""
    j, c = JOBS.c, CAMPAIGNS.c
    max_tokens = c.sampling["max_tokens"].as_integer().label("max_tokens")
    query = (
        select(j.id, j.lease_id, j.worker_id, j.status, j.campaign_id, max_tokens)
        .select_from(JOBS.join(CAMPAIGNS, c.id == j.campaign_id))
        .where(one_of(session, j.lease_id, lease_ids))
    )
    if lock:
        query = query.with_for_update(of=JOBS)
    return {row.lease_id: row for row in session.execute(query)}


def set_status(session: Session, job_ids: Sequence[uuid.UUID], status: str) -> None:
    session.execute(update(JOBS).where(one_of(session, JOBS.c.id, job_ids)).values(status=status))


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


def reopen(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Put done jobs back in the pool: their trace turned out unusable (docs/trust.md)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == DONE)
            .values(status=QUEUED, lease_id=None, worker_id=None, lease_deadline=None, leased_at=None)
        )


def in_flight_any(session: Session, worker_id: uuid.UUID) -> int:
    query = select(func.count()).where(Job.worker_id == worker_id, Job.status == LEASED)
    return int(session.scalar(query) or 0)


def release_held(session: Session, worker_id: uuid.UUID, lease_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Return the caller's live leases to the pool; leases it does not hold are left alone."""
    held = select(Job.lease_id).where(
        Job.lease_id.in_(lease_ids), Job.worker_id == worker_id, Job.status == LEASED
    )
    released = [lease_id for lease_id in session.scalars(held.with_for_update()) if lease_id is not None]
    if released:
        session.execute(
            update(Job)
            .where(Job.lease_id.in_(released))
            .values(status=QUEUED, lease_id=None, worker_id=None, lease_deadline=None)
        )
    return released
