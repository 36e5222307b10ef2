from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, select
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign
from coordinator.jobs.models import Job
from coordinator.problems.models import Problem, ProblemSet
from coordinator.results.models import Trace
from coordinator.trust.models import USABLE


def _in_dumps() -> ColumnElement[bool]:
    """Traces a dump may contain: not withdrawn after a failed validation of their worker,
    produced by an engine that applied the seeded sampler (an unverifiable trace is never checked,
    so it could be anything), and passed or skipped by validation (a queued one may yet fail;
    docs/trust.md)."""
    return and_(Trace.withdrawn.is_(False), Trace.verifiable.is_(True), Trace.validation.in_(USABLE))


def summaries(session: Session) -> list[tuple[uuid.UUID, str, str, str | None, int]]:
    query = (
        select(Campaign.id, Campaign.name, Campaign.model_name, Trace.status, func.count(Trace.id))
        .join(Trace, and_(Trace.campaign_id == Campaign.id, _in_dumps()), isouter=True)
        .group_by(Campaign.id, Campaign.name, Campaign.model_name, Trace.status)
        .order_by(Campaign.name)
    )
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in session.execute(query)]


def export_rows(
    session: Session,
    campaign_id: uuid.UUID,
    statuses: Sequence[str],
    min_score: float | None,
    since: datetime | None,
    batch: int = 500,
) -> Iterator[Row[Any]]:
    """Stream joined rows in server-side batches: memory stays flat however large the dump."""
    query = (
        select(
            Trace,
            Job.sample_index,
            Job.seed,
            Problem.external_id,
            Problem.prompt,
            Problem.system,
            Problem.extra,
            ProblemSet.name,
            ProblemSet.source,
        )
        .join(Job, Job.id == Trace.job_id)
        .join(Problem, Problem.id == Job.problem_id)
        .join(ProblemSet, ProblemSet.id == Problem.problem_set_id)
        .where(Trace.campaign_id == campaign_id, Trace.status.in_(statuses), _in_dumps())
        .order_by(Trace.created_at, Trace.id)
    )
    if min_score is not None:
        query = query.where(Trace.score >= min_score)
    if since is not None:
        query = query.where(Trace.created_at >= since)
    yield from session.execute(query.execution_options(yield_per=batch))
