"""Background work of the trust area. Tasks receive ids and are idempotent (at-least-once delivery).

* `after_verdict(runtime, trace_id)`: called once a trace's verdict is stored; decides whether it
  is spot-checked and enqueues the validation after the decision is committed.
* `validate_traces(ids)`: the validation task, on its own queue (`validate`): one batched prefill
  per model, with the model kept loaded for the life of the process (ml/scorer.py).
* `requeue_stale(runtime, age)`: the sweeper's pass: decisions and validations a crash lost.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from itertools import groupby
from pathlib import Path

from coordinator.db import after_commit, transaction, utcnow
from coordinator.errors import FlywheelError
from coordinator.pipeline import service as pipeline
from coordinator.runtime import Runtime, get_runtime
from coordinator.trust import repository, service
from coordinator.trust.validator import Submitted, validate
from ml import scorer as scorers
from ml.errors import ModelUnavailable
from ml.scorer import Scorer
from shared import evidence
from shared.protocol import ARTIFACT_MODEL_PREFIX
from shared.trust_types import Outcome

log = logging.getLogger(__name__)
WAIT_FACTOR = 10


def after_verdict(runtime: Runtime, trace_id: uuid.UUID) -> None:
    settings = runtime.settings
    if not settings.validation_enabled:
        with transaction(runtime.sessions) as session:
            service.skip(session, trace_id, lock=not settings.is_sqlite)
        return
    with transaction(runtime.sessions) as session:
        if service.after_verdict(session, trace_id, settings.validation_floor, lock=not settings.is_sqlite):
            after_commit(session, lambda: enqueue_validation(runtime, [trace_id]))


def enqueue_validation(runtime: Runtime, trace_ids: Sequence[uuid.UUID]) -> None:
    settings = runtime.settings
    ids = [str(i) for i in trace_ids]
    for start in range(0, len(ids), settings.validation_batch):
        chunk = ids[start : start + settings.validation_batch]
        runtime.queue.enqueue(validate_traces, chunk, queue=settings.validate_queue)


def validate_traces(trace_ids: list[str]) -> None:
    """Re-score the traces still queued among these and record each outcome."""
    runtime = get_runtime()
    with transaction(runtime.sessions) as session:
        items = service.pending(session, [uuid.UUID(i) for i in trace_ids])
    for (name, revision), group in groupby(sorted(items, key=_model_of), key=_model_of):
        _validate_group(runtime, name, revision or None, list(group))


def _model_of(item: service.Pending) -> tuple[str, str]:
    return item.spec.model.name, item.spec.model.revision or ""


def _validate_group(runtime: Runtime, name: str, revision: str | None, items: list[service.Pending]) -> None:
    store(runtime, items, score(runtime, name, revision, items))


def score(
    runtime: Runtime, name: str, revision: str | None, items: list[service.Pending]
) -> list[service.Result]:
    """Re-score one model's traces, outside any transaction: a prefill holds no row lock."""
    settings = runtime.settings
    validator = {"model": name, "device": settings.validation_device, "dtype": settings.validation_dtype}
    try:
        base, weights = _source(runtime, name)
        scorer = scorers.scorer(
            name, revision, settings.validation_device, settings.validation_dtype, weights, base
        )
    except ModelUnavailable as exc:
        log.warning("validation of %d traces: %s", len(items), exc)
        return [service.Result(None, str(exc), validator, 0.0)] * len(items)
    validator = {"model": name, "device": scorer.device, "dtype": scorer.dtype}
    return _check(scorer, items, validator, settings.validation_noise.get(name))


def store(runtime: Runtime, items: list[service.Pending], results: list[service.Result]) -> None:
    """Record each outcome in a transaction of its own (service.record takes the locks in the
    order its module docstring gives), then enqueue the re-checks a failure asked for."""
    settings = runtime.settings
    threshold = evidence.threshold(settings.evidence_false_alarm, settings.evidence_lifetime)
    for item, result in zip(items, results, strict=True):
        with transaction(runtime.sessions) as session:
            recheck = service.record(session, item, result, not settings.is_sqlite, threshold)
            if recheck:
                log.warning(
                    "worker %s failed a validation; re-checking %d traces", item.worker_id, len(recheck)
                )
                after_commit(session, partial(enqueue_validation, runtime, recheck))


def _check(
    scorer: Scorer, items: list[service.Pending], validator: dict[str, str], noise: dict[str, float] | None
) -> list[service.Result]:
    """Validate a batch; should it raise, each trace alone, so that only the culprit fails."""
    submitted = [
        Submitted(i.spec, i.tokens, i.logprobs, i.finish_reason, i.text, i.worker_dtype, i.noise)
        for i in items
    ]
    try:
        checked = validate(scorer, submitted, noise=noise)
    except Exception as exc:  # whatever a claim makes the validator raise
        if len(items) > 1:
            log.warning("validation of %d traces raised %r; validating them one by one", len(items), exc)
            return [result for item in items for result in _check(scorer, [item], validator, noise)]
        return [_unreplayed(scorer, items[0], exc, validator)]
    return [service.Result(c.outcome, "", validator, c.seconds) for c in checked]


def _unreplayed(
    scorer: Scorer, item: service.Pending, exc: Exception, validator: dict[str, str]
) -> service.Result:
    """One trace the validator raised on. While the model still runs a trivial prefill, the claim
    is at fault: a failed validation (an honest trace replays). When memory ran out or the model
    no longer runs, the validator is: an error, which leaves the worker's trust alone."""
    log.warning("validation of trace %s raised", item.trace_id, exc_info=exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or not _runs(scorer):
        return service.Result(None, f"the validator failed: {exc!r}", validator, 0.0)
    reason = f"the validator cannot replay this claim: {type(exc).__name__}: {exc}"
    failed = Outcome(False, reason, None, -math.inf, math.nan, 0.0, len(item.tokens))
    return service.Result(failed, "", validator, 0.0)


def _runs(scorer: Scorer) -> bool:
    """Whether the model still runs one prefill of one token (after a claim made it raise)."""
    try:
        scorer.completion_logits([[0]], [[0]])
    except Exception:  # the validator, not the claim, is broken
        log.exception("the validation model no longer runs")
        return False
    return True


def _source(runtime: Runtime, name: str) -> tuple[str | None, Path | None]:
    """Base model and weights file of a model published as an artifact (a checkpoint or an RL policy
    version); (None, None) for a name the model cache resolves itself."""
    if not name.startswith(ARTIFACT_MODEL_PREFIX):
        return None, None
    try:
        with transaction(runtime.sessions) as session:
            source = pipeline.resolve(session, runtime.settings, name)
    except FlywheelError as exc:
        raise ModelUnavailable(f"cannot load {name!r} for validation: {exc}") from exc
    return source.base, source.weights


def requeue_stale(runtime: Runtime, older_than_s: float, limit: int = 10_000) -> int:
    """Decide traces whose decision was lost (with validation off too: they are marked skipped),
    and re-enqueue validations left waiting."""
    now = utcnow()
    enabled = runtime.settings.validation_enabled
    with transaction(runtime.sessions) as session:
        undecided = repository.undecided(session, now - timedelta(seconds=older_than_s), limit)
        # A validation waits behind slower work than a verification does: only a wait ten times as
        # long means a lost task, so a busy validator's queue is not filled with copies.
        cutoff = now - timedelta(seconds=WAIT_FACTOR * older_than_s)
        waiting = repository.waiting(session, cutoff, limit) if enabled else []
    for trace_id in undecided:
        after_verdict(runtime, trace_id)
    if waiting:
        log.info("re-enqueueing validation of %d traces", len(waiting))
        enqueue_validation(runtime, waiting)
    return len(undecided) + len(waiting)
