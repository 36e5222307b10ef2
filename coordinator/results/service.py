"""Submissions: idempotent, only from the lease holder, bounded; verdicts recorded by tasks."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy.orm import Session

from coordinator.campaigns import service as campaigns
from coordinator.db import utcnow
from coordinator.jobs import repository as jobs_repository
from coordinator.jobs.models import DONE, LEASED, SUBMITTED
from coordinator.results import repository
from coordinator.results.models import ACCEPTED, PENDING, REJECTED, Trace
from coordinator.trust import service as trust
from coordinator.workers import repository as workers_repository
from coordinator.workers.service import Principal, charge_verification, credit_submissions, seen
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


def nul_field(result: TraceSubmission) -> str | None:
    """The first stored string field holding a NUL character, or None. PostgreSQL's text and JSONB
    refuse U+0000, so such a trace cannot be stored; refusing it per trace keeps it from failing
    the whole batch (a 500 the worker would retry forever)."""
    if "\x00" in result.text:
        return "text"
    for name, info in (("engine", result.engine), ("hardware", result.hardware)):
        if _holds_nul(info.model_dump()):
            return name
    return None


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


def trace_problem(result: TraceSubmission, max_tokens: int, vocab: int | None = None) -> str | None:
    """Why a trace is malformed, or None. Cheap structural checks only; verdicts come later.
    `vocab`: the model's vocabulary size where known (ids are >= 0 by the wire model)."""
    n = len(result.completion_token_ids)
    if n != len(result.logprobs):
        return f"{n} token ids but {len(result.logprobs)} logprobs"
    if n > max_tokens:
        return f"{n} completion tokens exceed the job's max_tokens {max_tokens}"
    if vocab is not None and n and max(result.completion_token_ids) >= vocab:
        return f"token id {max(result.completion_token_ids)} is outside the model's vocabulary of {vocab}"
    if any(not math.isfinite(lp) or lp > 1e-6 for lp in result.logprobs):
        return "logprobs must be finite and <= 0"
    return None


class _Batch:
    """State shared while one submission request is processed in one transaction.

    Jobs are read as plain rows and their new status is kept here, then written with one UPDATE:
    no ORM objects are loaded or flushed on this hot path.
    """

    def __init__(
        self,
        session: Session,
        principal: Principal,
        request: SubmitRequest,
        lock: bool,
        max_unverifiable: int,
    ) -> None:
        results = request.results
        self.principal = principal
        # Room for unverifiable traces (never in dumps, so each one stored burns its job's sample):
        # counted only when the batch holds one.
        self.unverifiable_room = (
            max_unverifiable - repository.unverifiable_count(session, principal.worker_id)
            if any(not r.verifiable for r in results)
            else 0
        )
        self.owners = repository.attempt_owners(session, [r.attempt_id for r in results])
        self.jobs = jobs_repository.lock_for_submit(session, [r.lease_id for r in results], lock)
        self.status = {job.id: job.status for job in self.jobs.values()}
        campaign_ids = sorted({job.campaign_id for job in self.jobs.values()})
        self.vocab = trust.vocab_limits(session, campaign_ids)
        self.dtypes = campaigns.dtypes_of(session, campaign_ids)
        finished = [job.id for job in self.jobs.values() if job.status in (SUBMITTED, DONE)]
        self.stored_leases = repository.lease_of_jobs(session, finished) if finished else {}
        self.new_rows: list[dict[str, Any]] = []
        self.seen: set[uuid.UUID] = set()
        self.requeue: list[uuid.UUID] = []

    def handle(self, result: TraceSubmission) -> Ack:
        owner = self.owners.get(result.attempt_id)
        if owner is not None or result.attempt_id in self.seen:
            if owner is not None and owner != self.principal.worker_id:
                return _ack(result, AckStatus.rejected, "attempt id belongs to another worker")
            return _ack(result, AckStatus.duplicate)
        job = self.jobs.get(result.lease_id)
        if job is None or job.worker_id != self.principal.worker_id:
            reason = "no such lease for this worker (expired and re-assigned?)"
            return _ack(result, AckStatus.rejected, reason)
        if job.id != result.job_id:
            return _ack(result, AckStatus.rejected, "the lease belongs to another job")
        status = self.status[job.id]
        if status in (SUBMITTED, DONE):
            if self.stored_leases.get(job.id) == result.lease_id:
                return _ack(result, AckStatus.duplicate)
            return _ack(result, AckStatus.rejected, "job done")
        if status != LEASED:
            return _ack(result, AckStatus.rejected, "the lease was lost")
        return self._store(job, result)

    def _store(self, job: jobs_repository.JobRow, result: TraceSubmission) -> Ack:
        if result.finish_reason == FinishReason.error:
            self.requeue.append(job.id)  # the worker gave up: hand the job to someone else now
            return _ack(result, AckStatus.rejected, "generation error reported; job returned to the pool")
        dtypes = self.dtypes.get(job.campaign_id)
        if dtypes and result.engine.dtype not in dtypes:
            self.requeue.append(job.id)  # another worker, one the campaign accepts, takes it now
            accepted = " or ".join(sorted(dtypes))
            claimed = result.engine.dtype or "an unnamed dtype"
            reason = f"this campaign takes work computed in {accepted}, not {claimed}"
            return _ack(result, AckStatus.rejected, reason)
        problem = trace_problem(result, int(job.max_tokens or 0), self.vocab.get(job.campaign_id))
        if problem is not None:
            return _ack(result, AckStatus.rejected, problem)
        field = nul_field(result)
        if field is not None:
            self.requeue.append(job.id)  # nothing is stored: the job goes to the next worker now
            reason = f"the {field} holds a NUL character (U+0000), which cannot be stored; job returned"
            return _ack(result, AckStatus.rejected, reason)
        if not result.verifiable and self._over_unverifiable_cap(job):
            reason = (
                "this worker's unverifiable traces reached the cap: use an engine with the seeded sampler"
            )
            return _ack(result, AckStatus.rejected, reason)
        self.seen.add(result.attempt_id)
        self.status[job.id] = SUBMITTED
        self.new_rows.append(_trace_row(job, result, self.principal.worker_id))
        return _ack(result, AckStatus.accepted)

    def _over_unverifiable_cap(self, job: jobs_repository.JobRow) -> bool:
        if self.unverifiable_room <= 0:
            self.requeue.append(job.id)  # refused: another worker takes the job now
            return True
        self.unverifiable_room -= 1
        return False


def _trace_row(job: jobs_repository.JobRow, result: TraceSubmission, worker_id: uuid.UUID) -> dict[str, Any]:
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
        "verifiable": result.verifiable,
        "status": PENDING,
        "created_at": utcnow(),
    }


def submit(
    session: Session,
    principal: Principal,
    request: SubmitRequest,
    lock: bool,
    seen_every_s: float = 0.0,
    max_unverifiable: int = 32,
) -> tuple[SubmitResponse, list[uuid.UUID]]:
    """Store what is valid; returns the acks and the ids of the traces to verify after commit."""
    batch = _Batch(session, principal, request, lock, max_unverifiable)
    acks = [batch.handle(result) for result in request.results]
    repository.insert_traces(session, batch.new_rows)
    if batch.requeue:
        jobs_repository.release(session, batch.requeue)
    if batch.new_rows:
        jobs_repository.set_status(session, [row["job_id"] for row in batch.new_rows], SUBMITTED)
        credit_submissions(session, principal.worker_id, len(batch.new_rows), seen_every_s)
    else:
        seen(session, principal.worker_id, seen_every_s)
    return SubmitResponse(acks=acks), [row["id"] for row in batch.new_rows]


def load_for_verification(session: Session, trace_id: uuid.UUID) -> tuple[VerifierSpec, str] | None:
    trace = repository.get_for_update(session, trace_id, lock=False)
    if trace is None or trace.status != PENDING:
        return None
    problem = repository.problem_of(session, trace.job_id)
    return VerifierSpec.model_validate(problem.verifier_spec), trace.text


def record_verdict(
    session: Session, trace_id: uuid.UUID, verdict: Verdict, lock: bool, seconds: float = 0.0
) -> Trace | None:
    """Store the verdict once; a second run of the same task finds the trace decided and stops.
    `seconds`: what verifying it cost, charged to its worker's verification budget. Locks the
    trace, its job, then its worker's row: the lock order of coordinator/trust/service.py."""
    trace = repository.get_for_update(session, trace_id, lock=lock)
    if trace is None or trace.status != PENDING:
        return None
    jobs_repository.set_status(session, [trace.job_id], DONE)
    charge_verification(session, trace.worker_id, seconds, lock)
    trace.status = ACCEPTED if verdict.passed else REJECTED
    trace.score = verdict.score
    stalls = (trace.verdict or {}).get("stalls")  # attempts a stalled host left no verdict from
    stored = verdict.model_dump(mode="json")
    if stalls and "stalls" not in stored["details"]:
        stored["details"]["stalls"] = stalls
    trace.verdict = stored
    trace.verified_at = utcnow()
    if verdict.passed:
        workers_repository.add_counts(session, trace.worker_id, accepted=1)
    return trace
