from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, or_, select
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign
from coordinator.jobs.models import Job
from coordinator.problems.models import Problem, ProblemSet
from coordinator.results.models import Trace
from coordinator.trust.models import usable


def summaries(session: Session) -> list[tuple[uuid.UUID, str, str, str | None, int]]:
    query = (
        select(Campaign.id, Campaign.name, Campaign.model_name, Trace.status, func.count(Trace.id))
        .join(Trace, and_(Trace.campaign_id == Campaign.id, usable()), isouter=True)
        .group_by(Campaign.id, Campaign.name, Campaign.model_name, Trace.status)
        .order_by(Campaign.name)
    )
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in session.execute(query)]


ExportCursor = tuple[datetime, uuid.UUID]
"""(created_at, id) of the last trace a page returned; the next page starts after it."""


def export_page(
    session: Session,
    campaign_id: uuid.UUID,
    statuses: Sequence[str],
    min_score: float | None,
    since: datetime | None,
    after: ExportCursor | None,
    limit: int,
) -> list[Row[Any]]:
    """One page of joined rows in dump order (created_at, then id) after `after`: keyset paging, so
    each page is its own short query and no cursor stays open between pages."""
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
        .where(Trace.campaign_id == campaign_id, Trace.status.in_(statuses), usable())
        .order_by(Trace.created_at, Trace.id)
        .limit(limit)
    )
    if min_score is not None:
        query = query.where(Trace.score >= min_score)
    if since is not None:
        query = query.where(Trace.created_at >= since)
    if after is not None:
        query = query.where(_after(after))
    return list(session.execute(query))


def _after(cursor: ExportCursor) -> ColumnElement[bool]:
    # `(created_at, id) > cursor`, spelled out so the leading `created_at >=` can bound an index scan.
    at, trace_id = cursor
    return and_(Trace.created_at >= at, or_(Trace.created_at > at, Trace.id > trace_id))
