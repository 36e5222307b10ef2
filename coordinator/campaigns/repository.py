from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign, CampaignDtype
from coordinator.jobs.models import Job
from coordinator.results.models import ACCEPTED, REJECTED, Trace


def dtypes_of(session: Session, campaign_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, frozenset[str]]:
    """campaign id -> the dtypes it takes work in, for those among these that restrict them."""
    query = select(CampaignDtype.campaign_id, CampaignDtype.dtype).where(
        CampaignDtype.campaign_id.in_(campaign_ids)
    )
    found: dict[uuid.UUID, set[str]] = {}
    for campaign_id, dtype in session.execute(query):
        found.setdefault(campaign_id, set()).add(dtype)
    return {campaign_id: frozenset(names) for campaign_id, names in found.items()}


def add(session: Session, campaign: Campaign) -> Campaign:
    session.add(campaign)
    session.flush()
    return campaign


def get(session: Session, campaign_id: uuid.UUID) -> Campaign | None:
    return session.get(Campaign, campaign_id)


def by_name(session: Session, name: str) -> Campaign | None:
    return session.scalars(select(Campaign).where(Campaign.name == name)).first()


def list_all(session: Session) -> Sequence[Campaign]:
    return session.scalars(select(Campaign).order_by(Campaign.created_at)).all()


def job_counts(session: Session, campaign_id: uuid.UUID) -> dict[str, int]:
    query = select(Job.status, func.count()).where(Job.campaign_id == campaign_id).group_by(Job.status)
    return {status: int(n) for status, n in session.execute(query)}


def trace_counts(session: Session, campaign_id: uuid.UUID) -> tuple[dict[str, int], int]:
    query = (
        select(Trace.status, func.count(), func.coalesce(func.sum(Trace.completion_tokens), 0))
        .where(Trace.campaign_id == campaign_id, Trace.returned.is_(False))
        .group_by(Trace.status)
    )
    counts, tokens = {}, 0
    for status, n, t in session.execute(query):
        counts[status] = int(n)
        tokens += int(t)
    return counts, tokens


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Campaign)) or 0)


def verified_samples(session: Session, campaign_id: uuid.UUID) -> list[tuple[uuid.UUID, str, int, str]]:
    """(problem, completion, tokens, status) of every verified trace, in sample order."""
    query = (
        select(Job.problem_id, Trace.text, Trace.completion_tokens, Trace.status)
        .join(Job, Job.id == Trace.job_id)
        .where(
            Trace.campaign_id == campaign_id,
            Trace.status.in_((ACCEPTED, REJECTED)),
            Trace.returned.is_(False),
        )
        .order_by(Job.problem_id, Job.sample_index)
    )
    return [(r[0], r[1], int(r[2]), r[3]) for r in session.execute(query)]
