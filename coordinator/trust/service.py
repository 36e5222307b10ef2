"""Trust: which traces to validate, what a validation's outcome does, and the operators' actions.

Policy (docs/trust.md): a worker's trust is its count of consecutive passed spot-checks. Each trace
with a verdict is validated with probability `check_probability(trust, floor)`: always while the
worker is new. A failed validation sets trust to 0, quarantines the worker (its token stops working:
the ban flag, so no lease or submission gets through) and withdraws from dumps every trace of
theirs created after the newest trace that passed a spot-check, until each passes a re-check.

Lock order (PostgreSQL row locks). Every transaction that locks a worker's rows takes them in this
order, or in a part of it, never backwards, so no two of them can wait for each other in a cycle:

1. the worker's `worker_trust` row (`repository.trust_of(lock=True)`);
2. the worker's traces: first the one the transaction is about (SELECT ... FOR UPDATE), then, only
   while holding 1, the others a failure or an operator withdraws (`repository.taint`,
   `repository.queue_all`: UPDATEs of many rows in no fixed order, which 1 serialises). A trace's
   credit and validation rows are written only by whoever holds the trace, so they go with it;
3. the jobs of those traces (reopened after a failure; set done by the verdict);
4. the worker's `workers` row (lease credit, ban, verification spend): a plain UPDATE or FOR NO KEY
   UPDATE, never FOR UPDATE, so the foreign-key checks of rows inserted for the worker (FOR KEY
   SHARE) never wait for it.

A step that needs a row's key before it may lock that row reads it unlocked first: the spot-check
decision reads its trace's worker id (which never changes) to lock 1 before 2. The paths:
`after_verdict` 1, 2, then 3 or 4; `record` 1, 2 (its trace, then on a failure the others), 3, 4;
`skip` 2, 4; `revalidate` 1, 2; `_set_banned` 1, 4; the verdict itself
(coordinator/results/service.py `record_verdict`) 2, 3, 4. The lease path updates 4 before it
claims jobs, but claims with SKIP LOCKED and so never waits for 3. The old order (a trace, then
trust, then the worker's other traces) deadlocked a verdict against a failed validation of the
same worker (tests/trust/test_trust_lock_order.py).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast, get_args

from sqlalchemy.orm import Session

from coordinator.credit import service as credit
from coordinator.errors import NotFound
from coordinator.jobs import service as jobs_service
from coordinator.pipeline import service as pipeline
from coordinator.results.models import PENDING, Trace
from coordinator.trust import evidence, models_cache, repository
from coordinator.trust.evidence import Weighed
from coordinator.trust.models import (
    ERROR,
    FAILED,
    PASSED,
    QUEUED,
    RECHECK,
    SKIPPED,
    SPOT_CHECK,
    UNVERIFIABLE,
    Validation,
    WorkerTrust,
)
from coordinator.trust.policy import check_probability, drawn
from coordinator.workers import service as workers
from coordinator.workers.models import Worker
from shared.protocol import JobSpec, NoiseScheme, Scope
from shared.trust_types import Outcome, TrustOut, ValidationOut, WorkerState

RECENT = 20  # validations listed on a worker's record


@dataclass(frozen=True)
class Pending:
    """A trace waiting for re-scoring, with the job spec its worker was given."""

    trace_id: uuid.UUID
    worker_id: uuid.UUID
    spec: JobSpec
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    worker_dtype: str
    noise: NoiseScheme | None  # the engine's noise scheme, as it was validated at submission


# --------------------------------------------------------------------------- the spot-check decision


def _unverifiable(trace: Trace, sampling: dict[str, Any] | None) -> bool:
    """The worker said so, or the engine is one that cannot seed its sampler (an OpenAI-compatible
    server samples with its own RNG; only its greedy traces can be re-scored)."""
    if not trace.verifiable:
        return True
    return trace.engine.get("name") == "openai" and float((sampling or {}).get("temperature", 1.0)) > 0


def skip(session: Session, trace_id: uuid.UUID, lock: bool) -> None:
    """Validation is off: a verified trace is marked skipped (not drawn), which dumps and training
    require of every trace (datasets and pipeline repositories)."""
    trace = repository.trace(session, trace_id, lock=lock)
    if trace is not None and trace.status != PENDING and trace.validation is None:
        trace.validation = SKIPPED
        if trace.verifiable:
            workers.credit_usable(session, trace.worker_id)
        credit.grant(session, trace)


def after_verdict(session: Session, trace_id: uuid.UUID, floor: float, lock: bool) -> bool:
    """Decide, once, whether this verified trace is validated; True: enqueue its validation."""
    worker_id = repository.worker_of(session, trace_id)
    if worker_id is None:
        return False
    record = repository.trust_of(session, worker_id, lock=lock)  # before the trace: lock order
    trace = repository.trace(session, trace_id, lock=lock)
    if trace is None or trace.status == PENDING or trace.validation is not None:
        return False
    openai = trace.engine.get("name") == "openai"
    if _unverifiable(trace, repository.sampling_of(session, trace.campaign_id) if openai else None):
        trace.validation, trace.verifiable = UNVERIFIABLE, False  # False keeps it out of dumps
        record.unverifiable += 1
        _return(session, trace)
        return False
    if _quarantined(session, record) or trace.withdrawn:
        # A quarantined worker's traces stay out of dumps unless they pass, one by one.
        trace.withdrawn, trace.validation = True, RECHECK
        return True
    if drawn(trace.id, check_probability(record.trust, floor)):
        trace.validation = QUEUED
        return True
    trace.validation = SKIPPED
    record.skipped += 1
    workers.credit_usable(session, trace.worker_id)
    credit.grant(session, trace)
    return False


def _quarantined(session: Session, record: WorkerTrust) -> bool:
    """Quarantine lasts while the worker's token is blocked: an operator who lifts the ban through
    /workers/{id}/restore lifts the quarantine too."""
    if not record.quarantined:
        return False
    flags = repository.worker_flags(session, record.worker_id)
    if flags is None or not flags[0]:
        record.quarantined = False
    return record.quarantined


# --------------------------------------------------------------------------- bounds at submission


# campaign id -> vocabulary size, once found: a campaign's model never changes, so the submission
# path queries only for campaigns it has not bounded yet.
_CAMPAIGN_VOCAB: dict[uuid.UUID, int] = {}


def vocab_limits(session: Session, campaign_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """campaign id -> its model's vocabulary size, for the campaigns whose model config this machine
    holds (without torch: models_cache.vocab_size). Token ids of the others are bounded by the
    validator alone (a failed validation)."""
    unknown = [c for c in campaign_ids if c not in _CAMPAIGN_VOCAB]
    if unknown:
        for campaign_id, (name, revision) in repository.campaign_models(session, unknown).items():
            size = models_cache.vocab_size(*pipeline.base_model_of(session, name, revision))
            if size is not None:
                _CAMPAIGN_VOCAB[campaign_id] = size
    return {c: _CAMPAIGN_VOCAB[c] for c in campaign_ids if c in _CAMPAIGN_VOCAB}


# --------------------------------------------------------------------------- validation outcomes


def _scheme(value: object) -> NoiseScheme | None:
    """A stored trace's noise scheme; one this coordinator does not know replays as Flywheel's own
    (and so fails, rather than being waved through)."""
    return cast(NoiseScheme, value) if value in get_args(NoiseScheme) else None


def pending(session: Session, trace_ids: Sequence[uuid.UUID]) -> list[Pending]:
    """The traces among these still waiting for validation, with the job specs their workers got
    (built by the lease path's own function, so the validator checks exactly what was asked)."""
    jobs = repository.job_rows(session, trace_ids)
    traces = [repository.trace(session, trace_id) for trace_id in trace_ids if trace_id in jobs]
    waiting = [t for t in traces if t is not None and t.validation in (QUEUED, RECHECK)]
    specs = jobs_service.job_specs(session, [jobs[t.id] for t in waiting])
    return [
        Pending(
            trace_id=trace.id,
            worker_id=trace.worker_id,
            spec=spec,
            tokens=list(trace.completion_token_ids),
            logprobs=list(trace.logprobs),
            finish_reason=trace.finish_reason,
            text=trace.text,
            worker_dtype=str(trace.engine.get("dtype", "")),
            noise=_scheme(trace.engine.get("noise")),
        )
        for trace, spec in zip(waiting, specs, strict=True)
    ]


@dataclass(frozen=True)
class Result:
    """What a validation run produced: an outcome, or the reason it could not run."""

    outcome: Outcome | None
    error: str
    validator: dict[str, Any]
    seconds: float


def record(
    session: Session, item: Pending, result: Result, lock: bool, threshold: float = math.inf
) -> list[uuid.UUID]:
    """Store a validation's outcome and its consequences; returns traces to re-check (after a
    failure). A second run for the same trace finds it decided and changes nothing. A passed
    spot-check adds its positions to the worker's evidence in the same transaction; evidence
    reaching `threshold` fails the validation, with every consequence a failure has."""
    record = repository.trust_of(session, item.worker_id, lock=lock)  # before the trace: lock order
    trace = repository.trace(session, item.trace_id, lock=lock)
    if trace is None or trace.validation not in (QUEUED, RECHECK):
        return []
    purpose = SPOT_CHECK if trace.validation == QUEUED else RECHECK
    outcome = result.outcome
    if outcome is None:
        _store(session, trace, purpose, ERROR, result, None)
        return []
    repository.touch(record)
    weighed = _weigh(session, item, result, record, purpose, threshold) if outcome.passed else None
    outcome = _judged(outcome, weighed, record, purpose, threshold)
    status = PASSED if outcome.passed else FAILED
    _store(session, trace, purpose, status, replace(result, outcome=outcome), weighed)
    if outcome.passed:
        _passed(session, trace, record, purpose)
        return []
    return _failed(session, trace, record, outcome, weighed, threshold)


def _store(
    session: Session, trace: Trace, purpose: str, status: str, result: Result, weighed: Weighed | None
) -> None:
    row = _validation_row(trace, purpose, status, result)
    row.evidence = weighed.details() if weighed is not None else None
    repository.add_validation(session, row)
    trace.validation = status


def _weigh(
    session: Session, item: Pending, result: Result, record: WorkerTrust, purpose: str, threshold: float
) -> Weighed | None:
    """A passed spot-check of a worker in good standing moves its evidence; a re-check after a
    quarantine by evidence is weighed without moving it (see _judged)."""
    assert result.outcome is not None
    if not result.outcome.cells:
        return None
    pairing = evidence.Pairing(
        item.spec.model.name, item.worker_dtype or "unknown", str(result.validator.get("dtype", ""))
    )
    if purpose == SPOT_CHECK and not record.quarantined:
        return evidence.add(record, evidence.weigh(session, pairing, result.outcome), threshold)
    if purpose == RECHECK and (record.last_failure or {}).get("evidence"):
        return evidence.weigh(session, pairing, result.outcome)
    return None


def _judged(
    outcome: Outcome, weighed: Weighed | None, record: WorkerTrust, purpose: str, threshold: float
) -> Outcome:
    """The outcome, failed where the evidence says so: the worker's statistic reached the threshold,
    or a re-check of a worker quarantined by its evidence leans towards a cheating alternative
    (its own log-likelihood ratio above 0), which a per-trace check cannot rule out."""
    if weighed is None:
        return outcome
    if weighed.crossed:
        reason = (
            f"the worker's evidence reached its threshold: {max(weighed.statistics):.4g} >= "
            f"{threshold:.4g} nats over {record.evidence_validations} validations"
        )
        return replace(outcome, passed=False, reason=reason)
    if purpose == RECHECK and max(weighed.ratios) > 0:
        reason = f"after a quarantine by evidence, the trace leans cheating ({max(weighed.ratios):.4g} nats)"
        return replace(outcome, passed=False, reason=reason)
    return outcome


def _validation_row(trace: Trace, purpose: str, status: str, result: Result) -> Validation:
    outcome = result.outcome
    details = outcome.details() if outcome is not None else {}
    return Validation(
        id=uuid.uuid4(),
        trace_id=trace.id,
        worker_id=trace.worker_id,
        purpose=purpose,
        status=status,
        reason=result.error if outcome is None else outcome.reason,
        position=details.get("position"),
        margin=details.get("margin"),
        logprob_error=details.get("logprob_error"),
        tolerance=details.get("tolerance"),
        validator=result.validator,
        seconds=result.seconds,
    )


def _passed(session: Session, trace: Trace, record: WorkerTrust, purpose: str) -> None:
    trace.withdrawn = False
    record.passed += 1
    workers.credit_usable(session, trace.worker_id)
    credit.grant(session, trace)
    if purpose == SPOT_CHECK and not record.quarantined:
        record.trust += 1
        if record.vouched_until is None or trace.created_at > record.vouched_until:
            record.vouched_until = trace.created_at


def _return(session: Session, trace: Trace) -> None:
    """The trace can never be used (unverifiable, or its claim failed a validation): it stays as
    evidence, and its job goes back to the pool, so the sample is still produced by someone."""
    trace.returned = True
    jobs_service.reopen(session, [trace.job_id])
    credit.revoke(session, [trace.id])


def _failed(
    session: Session,
    trace: Trace,
    record: WorkerTrust,
    outcome: Outcome,
    weighed: Weighed | None = None,
    threshold: float = math.inf,
) -> list[uuid.UUID]:
    # The worker's other traces first, then the job and the workers row (module docstring): a
    # verdict holding one of those traces goes on to the workers row, which is still free.
    recheck = repository.taint(session, trace.worker_id, record.vouched_until, trace.id)
    _return(session, trace)
    trace.withdrawn = True
    record.failed += 1
    record.trust = 0
    record.quarantined = True
    workers.clear_credit(session, trace.worker_id)
    # Evidence weighed this validation only if it crossed, or if it is a re-check after a quarantine
    # by evidence: either way the quarantine stays one by evidence (later re-checks weigh theirs).
    crossed = evidence.failure(weighed, threshold) if weighed is not None else {}
    record.last_failure = {"trace_id": str(trace.id), **outcome.details(), **crossed}
    workers.set_banned(session, trace.worker_id, True)
    return recheck


# --------------------------------------------------------------------------- operators


def _state(worker: Worker, record: WorkerTrust | None) -> WorkerState:
    if not worker.banned:
        return "active"
    return "quarantined" if record is not None and record.quarantined else "banned"


@dataclass(frozen=True)
class View:
    """The settings a worker's record is shown with."""

    floor: float
    false_alarm: float = 1e-6
    lifetime: int = 100_000


def _out(worker: Worker, record: WorkerTrust | None, withdrawn: int, view: View) -> TrustOut:
    trust = record.trust if record is not None else 0
    return TrustOut(
        worker_id=worker.id,
        name=worker.name,
        state=_state(worker, record),
        trust=trust,
        check_probability=check_probability(trust, view.floor),
        passed=record.passed if record else 0,
        failed=record.failed if record else 0,
        skipped=record.skipped if record else 0,
        unverifiable=record.unverifiable if record else 0,
        withdrawn=withdrawn,
        vouched_until=record.vouched_until if record else None,
        last_failure=record.last_failure if record else None,
        evidence=evidence.out(record, view.false_alarm, view.lifetime),
    )


def records(session: Session, view: View, limit: int = 100, offset: int = 0) -> list[TrustOut]:
    rows = repository.records(session, limit, offset)
    withdrawn = repository.withdrawn_counts(session, [row[0].id for row in rows])
    return [_out(w, r, withdrawn.get(w.id, 0), view) for w, r in rows]


def record_of(session: Session, worker_id: uuid.UUID, view: View) -> TrustOut:
    worker = _worker(session, worker_id)
    record = repository.trust_of(session, worker_id)
    withdrawn = repository.withdrawn_counts(session, [worker_id]).get(worker_id, 0)
    recent = [validation_out(v) for v in repository.validations(session, worker_id, None, RECENT)]
    return _out(worker, record, withdrawn, view).model_copy(update={"recent": recent})


def validation_out(v: Validation) -> ValidationOut:
    return ValidationOut.model_validate(v, from_attributes=True)


def validations(
    session: Session, worker_id: uuid.UUID | None, status: str | None, limit: int, offset: int
) -> list[ValidationOut]:
    return [validation_out(v) for v in repository.validations(session, worker_id, status, limit, offset)]


def _worker(session: Session, worker_id: uuid.UUID) -> Worker:
    worker = repository.worker(session, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id}")
    return worker


def restore(session: Session, worker_id: uuid.UUID) -> None:
    """Lift a quarantine or a ban. Trust stays at 0: the worker is validated on every trace again."""
    _set_banned(session, worker_id, False)


def ban(session: Session, worker_id: uuid.UUID) -> None:
    """An operator's ban: the token stops working until restored (unlike a quarantine, on purpose)."""
    _set_banned(session, worker_id, True)


def _set_banned(session: Session, worker_id: uuid.UUID, banned: bool) -> None:
    """An operator's decision replaces any quarantine: banned, or back at work, and either way its
    trust starts again from 0 (every trace validated until it earns trust anew)."""
    _worker(session, worker_id)
    record = repository.trust_of(session, worker_id, lock=True)
    record.quarantined = False
    record.trust = 0
    evidence.reset(record)
    repository.touch(record)
    workers.set_banned(session, worker_id, banned)


def revalidate(session: Session, worker_id: uuid.UUID) -> list[uuid.UUID]:
    """Withdraw every verified trace of the worker until a re-check passes it (the operator's answer
    to a worker whose older traces are in doubt)."""
    _worker(session, worker_id)
    repository.trust_of(session, worker_id, lock=True)  # withdrawals of a worker's traces queue here
    return repository.queue_all(session, worker_id)


def worker_scope(session: Session, worker_id: uuid.UUID) -> Scope:
    return Scope(_worker(session, worker_id).scope)


def rotate_token(session: Session, worker_id: uuid.UUID) -> str:
    """A new token for the worker; the old one stops working."""
    _worker(session, worker_id)
    token = workers.new_token()
    repository.set_token_hash(session, worker_id, workers.hash_token(token))
    workers.forget(worker_id)
    return token


def revoke_token(session: Session, worker_id: uuid.UUID) -> None:
    """The worker's token stops working and none replaces it (the hash of a secret nobody holds)."""
    _worker(session, worker_id)
    repository.set_token_hash(session, worker_id, workers.hash_token(workers.new_token()))
    workers.forget(worker_id)
