"""Campaigns: a problem set x a model x sampling x samples per problem, expanded into jobs."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.orm import Session

from coordinator.campaigns import repository
from coordinator.campaigns.models import Campaign, CampaignDtype, CampaignStatus
from coordinator.errors import BadRequest, Conflict, NotFound
from coordinator.jobs import repository as jobs_repository
from coordinator.jobs.models import LEASED, QUEUED
from coordinator.problems import repository as problems_repository
from coordinator.problems import service as problems
from coordinator.results.models import ACCEPTED, REJECTED
from shared.protocol import (
    BudgetForcing,
    CampaignCreate,
    CampaignOut,
    CampaignProgress,
    ModelRef,
    SamplingParams,
)


def job_seed(campaign_seed: int, problem_id: uuid.UUID, sample_index: int) -> int:
    """A per-job seed the worker cannot choose: it binds a trace to exactly one job."""
    digest = hashlib.sha256(f"{campaign_seed}:{problem_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits a signed BIGINT


def create(session: Session, request: CampaignCreate) -> Campaign:
    problem_set = problems.get_set(session, request.problem_set_id)
    if repository.by_name(session, request.name) is not None:
        raise Conflict(f"a campaign named {request.name!r} exists")
    if problem_set.size == 0:
        raise BadRequest("the problem set is empty")
    campaign = repository.add(
        session,
        Campaign(
            id=uuid.uuid4(),
            name=request.name,
            problem_set_id=problem_set.id,
            model_name=request.model.name,
            model_revision=request.model.revision,
            sampling=request.sampling.model_dump(),
            samples_per_problem=request.samples_per_problem,
            seed=request.seed,
            budget=request.budget.model_dump() if request.budget else None,
            dtypes=[CampaignDtype(dtype=d) for d in sorted(set(request.worker_dtypes or ()))],
        ),
    )
    problem_ids = problems_repository.problem_ids(session, problem_set.id)
    jobs_repository.insert_jobs(session, _job_rows(campaign, problem_ids))
    return campaign


def _job_rows(campaign: Campaign, problem_ids: Sequence[uuid.UUID]) -> Iterator[dict[str, Any]]:
    for problem_id in problem_ids:
        for index in range(campaign.samples_per_problem):
            yield {
                "id": uuid.uuid4(),
                "campaign_id": campaign.id,
                "problem_id": problem_id,
                "sample_index": index,
                "seed": job_seed(campaign.seed, problem_id, index),
            }


def get(session: Session, campaign_id: uuid.UUID) -> Campaign:
    campaign = repository.get(session, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


def set_status(session: Session, campaign_id: uuid.UUID, status: str) -> Campaign:
    if status not in {CampaignStatus.RUNNING, CampaignStatus.PAUSED}:
        raise BadRequest("status must be 'running' or 'paused'")
    campaign = get(session, campaign_id)
    campaign.status = status
    return campaign


def progress(session: Session, campaign_id: uuid.UUID) -> CampaignProgress:
    jobs = repository.job_counts(session, campaign_id)
    traces, tokens = repository.trace_counts(session, campaign_id)
    return CampaignProgress(
        jobs=sum(jobs.values()),
        queued=jobs.get(QUEUED, 0),
        leased=jobs.get(LEASED, 0),
        submitted=sum(traces.values()),
        accepted=traces.get(ACCEPTED, 0),
        rejected=traces.get(REJECTED, 0),
        completion_tokens=tokens,
    )


# campaign id -> the dtypes it takes work in (empty: any). Set at creation and never changed, so the
# submission path queries only for campaigns it has not seen yet.
_DTYPES: dict[uuid.UUID, frozenset[str]] = {}


def dtypes_of(session: Session, campaign_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, frozenset[str]]:
    """campaign id -> the dtypes it takes work in (an empty set: any dtype)."""
    unknown = [c for c in campaign_ids if c not in _DTYPES]
    if unknown:
        found = repository.dtypes_of(session, unknown)
        _DTYPES.update({c: found.get(c, frozenset()) for c in unknown})
    return {c: _DTYPES[c] for c in campaign_ids}


def to_out(session: Session, campaign: Campaign) -> CampaignOut:
    report = progress(session, campaign.id)
    done = report.jobs > 0 and report.accepted + report.rejected == report.jobs
    return CampaignOut(
        id=campaign.id,
        name=campaign.name,
        problem_set_id=campaign.problem_set_id,
        model=ModelRef(name=campaign.model_name, revision=campaign.model_revision),
        sampling=SamplingParams.model_validate(campaign.sampling),
        samples_per_problem=campaign.samples_per_problem,
        budget=BudgetForcing.model_validate(campaign.budget) if campaign.budget else None,
        worker_dtypes=sorted(d.dtype for d in campaign.dtypes) or None,
        status=CampaignStatus.DONE if done else CampaignStatus(campaign.status),
        created_at=campaign.created_at,
        progress=report,
    )


def list_campaigns(session: Session) -> Sequence[Campaign]:
    return repository.list_all(session)
