"""Leases: hand out jobs in batches with a deadline; heartbeats extend it; expiry returns jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from coordinator.config import Settings
from coordinator.db import utcnow
from coordinator.jobs import repository
from coordinator.pipeline import rl
from coordinator.workers import service as workers
from shared.protocol import (
    ARTIFACT_MODEL_PREFIX,
    BudgetForcing,
    ChatMessage,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSpec,
    LeasedJob,
    LeaseGrant,
    LeaseRequest,
    ModelRef,
    PolicyRef,
    ReleaseRequest,
    ReleaseResponse,
    RolloutGroupRef,
    SamplingParams,
)


def lease(
    session: Session, principal: workers.Principal, request: LeaseRequest, settings: Settings
) -> LeaseGrant:
    now = utcnow()
    deadline = now + timedelta(seconds=min(settings.lease_ttl_s, settings.lease_max_lifetime_s))
    workers.seen(session, principal.worker_id, settings.last_seen_every_s)
    workers.check_verification_budget(session, principal, settings)
    limit = workers.in_flight_limit(session, principal, settings)
    room = limit - repository.in_flight(session, principal.worker_id, now)
    rows: Sequence[repository.JobRow] = []
    if room > 0:
        limit = min(request.max_jobs, room)
        dtype = request.dtype or principal.engine_dtype
        rows = repository.claim(
            session, request.models, dtype, limit, now, skip_locked=not settings.is_sqlite
        )
    lease_ids = [uuid.uuid4() for _ in rows]
    if rows:
        job_ids = [row.id for row in rows]
        repository.mark_leased(session, job_ids, lease_ids, principal.worker_id, deadline, now)
    leased = [
        LeasedJob(lease_id=lease_id, deadline=deadline, spec=spec)
        for lease_id, spec in zip(lease_ids, job_specs(session, rows), strict=True)
    ]
    return LeaseGrant(
        jobs=leased, heartbeat_interval_s=settings.heartbeat_interval_s, lease_ttl_s=settings.lease_ttl_s
    )


def job_specs(session: Session, rows: Sequence[repository.JobRow]) -> list[JobSpec]:
    """The specs workers get for these jobs; the validator rebuilds a trace's spec with it too."""
    parts = repository.spec_parts(session, [row.id for row in rows]) if rows else {}
    rollouts = _rollout_refs(session, rows, parts)
    models: dict[uuid.UUID, ModelRef] = {}  # built once per campaign in the batch
    specs = []
    for row in rows:
        part = parts[row.id]
        model = models.get(row.campaign_id)
        if model is None:
            model = models[row.campaign_id] = ModelRef(name=part.model_name, revision=part.model_revision)
        messages = [ChatMessage(role="user", content=part.prompt)]
        if part.system:
            messages.insert(0, ChatMessage(role="system", content=part.system))
        policy, group = rollouts.get(row.id, (None, None))
        specs.append(
            JobSpec(
                job_id=row.id,
                campaign_id=row.campaign_id,
                problem_id=part.external_id,
                messages=messages,
                model=model,
                sampling=SamplingParams.model_validate({**part.sampling, "seed": row.seed}),
                sample_index=row.sample_index,
                samples_per_problem=part.samples_per_problem,
                budget=BudgetForcing.model_validate(part.budget) if part.budget else None,
                policy=policy,
                group=group,
            )
        )
    return specs


def _rollout_refs(
    session: Session, rows: Sequence[repository.JobRow], parts: dict[uuid.UUID, repository.JobRow]
) -> dict[uuid.UUID, tuple[PolicyRef, RolloutGroupRef]]:
    """Policy version and group of the GRPO rollout jobs among these; only jobs whose model is a
    pipeline artifact can be rollouts, so other batches cost no query."""
    ids = [row.id for row in rows if parts[row.id].model_name.startswith(ARTIFACT_MODEL_PREFIX)]
    return rl.rollout_refs(session, ids) if ids else {}


def heartbeat(
    session: Session, principal: workers.Principal, request: HeartbeatRequest, settings: Settings
) -> HeartbeatResponse:
    ttl = timedelta(seconds=settings.lease_ttl_s)
    lifetime = timedelta(seconds=settings.lease_max_lifetime_s)
    extended = repository.extend(session, principal.worker_id, request.lease_ids, utcnow(), ttl, lifetime)
    workers.seen(session, principal.worker_id, settings.last_seen_every_s)
    return HeartbeatResponse(
        extended=extended,
        lost=[lease_id for lease_id in request.lease_ids if lease_id not in extended],
    )


def reopen(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Hand done jobs to the next worker: the trace each had cannot be used."""
    repository.reopen(session, job_ids)


def release(session: Session, principal: workers.Principal, request: ReleaseRequest) -> ReleaseResponse:
    """A worker gives back leases it will not finish (shutting down, pausing)."""
    return ReleaseResponse(released=repository.release_held(session, principal.worker_id, request.lease_ids))
