"""Submissions: idempotent, only from the lease holder, bounded; verdicts recorded by tasks."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy.orm import Session

from coordinator.db import utcnow
from coordinator.jobs import repository as jobs_repository
from coordinator.jobs.models import DONE, LEASED, SUBMITTED, Job
from coordinator.results import repository
from coordinator.results.models import ACCEPTED, PENDING, REJECTED, Trace
from coordinator.workers import repository as workers_repository
from coordinator.workers.service import Principal
from shared.protocol import (
    Ack,
    AckStatus,
    FinishReason,
    SubmitRequest,
    SubmitResponse,
    TraceSubmission,
    Verdict,
    VerifierSpec,
)


def _ack(result: TraceSubmission, status: AckStatus, reason: str | None = None) -> Ack:
    return Ack(lease_id=result.lease_id, attempt_id=result.attempt_id, status=status, reason=reason)


def trace_problem(result: TraceSubmission, max_tokens: int) -> str | None:
    """Why a trace is malformed, or None. Cheap structural checks only; verdicts come later."""
    n = len(result.completion_token_ids)
    if n != len(result.logprobs):
        return f"{n} token ids but {len(result.logprobs)} logprobs"
    if n > max_tokens:
        return f"{n} completion tokens exceed the job's max_tokens {max_tokens}"
    if any(t < 0 for t in result.completion_token_ids):
        return "negative token id"
    if any(not math.isfinite(lp) or lp > 1e-6 for lp in result.logprobs):
        return "logprobs must be finite and <= 0"
    return None


class _Batch:
    """State shared while one submission request is processed in one transaction."""

    def __init__(self, session: Session, principal: Principal, request: SubmitRequest, lock: bool) -> None:
        results = request.results
        self.session = session
        self.principal = principal
        self.attempts = repository.existing_attempts(session, [r.attempt_id for r in results])
        self.jobs = jobs_repository.lock_for_submit(session, [r.lease_id for r in results], lock)
        self.traces = repository.traces_for_jobs(session, [job.id for job in self.jobs.values()])
        campaign_ids = {job.campaign_id for job in self.jobs.values()}
        self.campaigns = jobs_repository.campaigns_for(session, campaign_ids)
        self.new_rows: list[dict[str, Any]] = []
        self.seen: set[uuid.UUID] = set()
        self.requeue: list[uuid.UUID] = []

    def handle(self, result: TraceSubmission) -> Ack:
        previous = self.attempts.get(result.attempt_id)
        if previous is not None or result.attempt_id in self.seen:
            if previous is not None and previous.worker_id != self.principal.worker_id:
                return _ack(result, AckStatus.rejected, "attempt id belongs to another worker")
            return _ack(result, AckStatus.duplicate)
        job = self.jobs.get(result.lease_id)
        if job is None or job.worker_id != self.principal.worker_id:
            return _ack(result, AckStatus.rejected, "no such lease for this worker (expired and re-assigned?)")
        if job.id != result.job_id:
            return _ack(result, AckStatus.rejected, "the lease belongs to another job")
        if job.status in (SUBMITTED, DONE):
            stored = self.traces.get(job.id)
            same = stored is not None and stored.lease_id == result.lease_id
            return _ack(result, AckStatus.duplicate if same else AckStatus.rejected, None if same else "job done")
        if job.status != LEASED:
            return _ack(result, AckStatus.rejected, "the lease was lost")
        return self._store(job, result)

    def _store(self, job: Job, result: TraceSubmission) -> Ack:
        if result.finish_reason == FinishReason.error:
            self.requeue.append(job.id)  # the worker gave up: hand the job to someone else now
            return _ack(result, AckStatus.rejected, "generation error reported; job returned to the pool")
        max_tokens = int(self.campaigns[job.campaign_id].sampling.get("max_tokens", 0))
        problem = trace_problem(result, max_tokens)
        if problem is not None:
            return _ack(result, AckStatus.rejected, problem)
        self.seen.add(result.attempt_id)
        job.status = SUBMITTED
        self.new_rows.append(_trace_row(job, result, self.principal.worker_id))
        return _ack(result, AckStatus.accepted)


def _trace_row(job: Job, result: TraceSubmission, worker_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "job_id": job.id,
        "campaign_id": job.campaign_id,
        "worker_id": worker_id,
        "lease_id": result.lease_id,
        "attempt_id": result.attempt_id,
        "text": result.text,
        "completion_token_ids": result.completion_token_ids,
        "logprobs": result.logprobs,
        "finish_reason": result.finish_reason.value,
        "prompt_tokens": result.timings.prompt_tokens,
        "completion_tokens": len(result.completion_token_ids),
        "generate_s": result.timings.generate_s,
        "engine": result.engine.model_dump(),
        "hardware": result.hardware.model_dump(),
        "status": PENDING,
        "created_at": utcnow(),
    }


def submit(
    session: Session, principal: Principal, request: SubmitRequest, lock: bool
) -> tuple[SubmitResponse, list[uuid.UUID]]:
    """Store what is valid; returns the acks and the ids of the traces to verify after commit."""
    batch = _Batch(session, principal, request, lock)
    acks = [batch.handle(result) for result in request.results]
    repository.insert_traces(session, batch.new_rows)
    if batch.requeue:
        jobs_repository.release(session, batch.requeue)
    if batch.new_rows:
        workers_repository.add_counts(session, principal.worker_id, submitted=len(batch.new_rows))
    workers_repository.touch(session, principal.worker_id, utcnow())
    return SubmitResponse(acks=acks), [row["id"] for row in batch.new_rows]


def load_for_verification(session: Session, trace_id: uuid.UUID) -> tuple[VerifierSpec, str] | None:
    trace = repository.get_for_update(session, trace_id, lock=False)
    if trace is None or trace.status != PENDING:
        return None
    problem = repository.problem_of(session, trace.job_id)
    return VerifierSpec.model_validate(problem.verifier_spec), trace.text


def record_verdict(session: Session, trace_id: uuid.UUID, verdict: Verdict, lock: bool) -> Trace | None:
    """Store the verdict once; a second run of the same task finds the trace decided and stops."""
    trace = repository.get_for_update(session, trace_id, lock=lock)
    if trace is None or trace.status != PENDING:
        return None
    trace.status = ACCEPTED if verdict.passed else REJECTED
    trace.score = verdict.score
    trace.verdict = verdict.model_dump(mode="json")
    trace.verified_at = utcnow()
    jobs_repository.set_status(session, [trace.job_id], DONE)
    if verdict.passed:
        workers_repository.add_counts(session, trace.worker_id, accepted=1)
    return trace
