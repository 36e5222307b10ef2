"""Leases: hand out jobs in batches with a deadline; heartbeats extend it; expiry returns jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from coordinator.config import Settings
from coordinator.db import utcnow
from coordinator.jobs import repository
from coordinator.workers import service as workers
from shared.model_size import ModelSize, local_size
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
    PolicyList,
    PolicyRef,
    ReleaseRequest,
    ReleaseResponse,
    RolloutGroupRef,
    SamplingParams,
    WaitingModel,
    WaitingModels,
)

MAX_WAITING_MODELS = 256  # WaitingModels.models' bound: far more models than campaigns run at once
_SIZES: dict[tuple[str, str | None], ModelSize] = {}


class Rollouts(Protocol):
    """What leasing needs from the area that runs RL (the pipeline), without knowing what GRPO is:
    the policy version and group of each of its rollout jobs, for their specs, and the policy
    versions that have jobs waiting. The pipeline hands itself over with `serve_rollouts`."""

    def rollout_refs(
        self, session: Session, job_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[PolicyRef, RolloutGroupRef]]: ...

    def live_policies(self, session: Session, base_model: str | None) -> PolicyList: ...


_rollouts: list[Rollouts] = []  # at most one: the pipeline's


def serve_rollouts(rollouts: Rollouts) -> None:
    """Called once when the pipeline package is imported (coordinator/pipeline/__init__.py)."""
    _rollouts[:] = [rollouts]


def lease(
    session: Session, principal: workers.Principal, request: LeaseRequest, settings: Settings
) -> LeaseGrant:
    now = utcnow()
    deadline = now + timedelta(seconds=min(settings.lease_ttl_s, settings.lease_max_lifetime_s))
    workers.seen(session, principal.worker_id, settings.last_seen_every_s)
    limit = workers.in_flight_limit(session, principal, settings)  # raises over the verification budget
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
    return _rollouts[0].rollout_refs(session, ids) if ids and _rollouts else {}


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


def waiting_models(session: Session, dtype: str | None) -> WaitingModels:
    """The models with jobs a lease could take now, most jobs first, with their sizes where this
    machine holds their config: what a worker that picks its own work chooses from. A policy version
    is sized by its weights file and the base model it is built on (`Rollouts.live_policies`)."""
    rows = repository.waiting_by_model(session, dtype, utcnow(), MAX_WAITING_MODELS)
    policies: dict[str, PolicyRef] = {}
    if _rollouts and any(row.model_name.startswith(ARTIFACT_MODEL_PREFIX) for row in rows):
        policies = {ref.model_name: ref for ref in _rollouts[0].live_policies(session, None).policies}
    return WaitingModels(models=[_waiting(row, policies.get(row.model_name)) for row in rows])


def _waiting(row: repository.JobRow, policy: PolicyRef | None) -> WaitingModel:
    base = policy.base_model if policy is not None else None
    size = _size(base, None) if base is not None else _size(row.model_name, row.model_revision)
    return WaitingModel(
        name=row.model_name,
        revision=row.model_revision,
        queued_jobs=row.queued,
        parameters=size.parameters,
        size_bytes=policy.size_bytes if policy is not None else size.size_bytes,
        base_model=base,
    )


def _size(name: str, revision: str | None) -> ModelSize:
    """A model's size from its config on this machine; found sizes are kept for the process's life,
    a model not found is looked for again next time (it may be downloaded meanwhile)."""
    key = (name, revision)
    found = _SIZES.get(key)
    if found is None:
        found = local_size(name, revision)
        if found is None:
            return ModelSize(None, None)
        _SIZES[key] = found
    return found
