"""Leases: hand out jobs in batches with a deadline; heartbeats extend it; expiry returns jobs."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.orm import Session

from coordinator.config import Settings
from coordinator.db import utcnow
from coordinator.jobs import repository
from coordinator.jobs.models import LEASED, Job
from coordinator.workers import service as workers
from shared.protocol import (
    ChatMessage,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSpec,
    LeasedJob,
    LeaseGrant,
    LeaseRequest,
    ModelRef,
    SamplingParams,
)


def lease(
    session: Session, principal: workers.Principal, request: LeaseRequest, settings: Settings
) -> LeaseGrant:
    now = utcnow()
    deadline = now + timedelta(seconds=settings.lease_ttl_s)
    workers.seen(session, principal.worker_id)
    room = settings.max_in_flight_per_worker - repository.in_flight(session, principal.worker_id, now)
    campaign_ids = repository.running_campaigns(session, request.models)
    jobs: list[Job] = []
    if room > 0 and campaign_ids:
        limit = min(request.max_jobs, room)
        jobs = repository.claim(session, campaign_ids, limit, now, skip_locked=not settings.is_sqlite)
    assignments = [
        {
            "id": job.id,
            "status": LEASED,
            "lease_id": uuid.uuid4(),
            "worker_id": principal.worker_id,
            "lease_deadline": deadline,
            "attempts": job.attempts + 1,
        }
        for job in jobs
    ]
    if assignments:
        repository.mark_leased(session, assignments)
    leased = [
        LeasedJob(lease_id=a["lease_id"], deadline=deadline, spec=spec)
        for a, spec in zip(assignments, _specs(session, jobs), strict=True)
    ]
    return LeaseGrant(
        jobs=leased, heartbeat_interval_s=settings.heartbeat_interval_s, lease_ttl_s=settings.lease_ttl_s
    )


def _specs(session: Session, jobs: list[Job]) -> list[JobSpec]:
    problems = repository.problems_for(session, (job.problem_id for job in jobs))
    campaigns = repository.campaigns_for(session, (job.campaign_id for job in jobs))
    specs = []
    for job in jobs:
        problem, campaign = problems[job.problem_id], campaigns[job.campaign_id]
        messages = [ChatMessage(role="user", content=problem.prompt)]
        if problem.system:
            messages.insert(0, ChatMessage(role="system", content=problem.system))
        specs.append(
            JobSpec(
                job_id=job.id,
                campaign_id=campaign.id,
                problem_id=problem.external_id,
                messages=messages,
                model=ModelRef(name=campaign.model_name, revision=campaign.model_revision),
                sampling=SamplingParams.model_validate({**campaign.sampling, "seed": job.seed}),
                sample_index=job.sample_index,
                samples_per_problem=campaign.samples_per_problem,
            )
        )
    return specs


def heartbeat(
    session: Session, principal: workers.Principal, request: HeartbeatRequest, settings: Settings
) -> HeartbeatResponse:
    deadline = utcnow() + timedelta(seconds=settings.lease_ttl_s)
    extended = repository.extend(session, principal.worker_id, request.lease_ids, deadline)
    workers.seen(session, principal.worker_id)
    kept = set(extended)
    return HeartbeatResponse(
        extended=dict.fromkeys(extended, deadline),
        lost=[lease_id for lease_id in request.lease_ids if lease_id not in kept],
    )
