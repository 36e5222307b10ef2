"""Background work of the trust area. Tasks receive ids and are idempotent (at-least-once delivery).

* `after_verdict(runtime, trace_id)`: called once a trace's verdict is stored; decides whether it
  is spot-checked and enqueues the validation after the decision is committed.
* `validate_traces(ids)`: the validation task, on its own queue (`validate`): one batched prefill
  per model, with the model kept loaded for the life of the process (models_cache).
* `requeue_stale(runtime, age)`: the sweeper's pass: decisions and validations a crash lost.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from itertools import groupby
from pathlib import Path

from coordinator.db import transaction, utcnow
from coordinator.errors import FlywheelError
from coordinator.pipeline import service as pipeline
from coordinator.runtime import Runtime, get_runtime
from coordinator.trust import models_cache, repository, service
from coordinator.trust.validator import Submitted, validate
from shared.protocol import ARTIFACT_MODEL_PREFIX

log = logging.getLogger(__name__)
VALIDATE_TASK = "coordinator.trust.tasks.validate_traces"
WAIT_FACTOR = 10


def after_verdict(runtime: Runtime, trace_id: uuid.UUID) -> None:
    settings = runtime.settings
    if not settings.validation_enabled:
        return
    with transaction(runtime.sessions) as session:
        chosen = service.after_verdict(
            session, trace_id, settings.validation_floor, lock=not settings.is_sqlite
        )
    if chosen:
        enqueue_validation(runtime, [trace_id])


def enqueue_validation(runtime: Runtime, trace_ids: Sequence[uuid.UUID]) -> None:
    settings = runtime.settings
    ids = [str(i) for i in trace_ids]
    for start in range(0, len(ids), settings.validation_batch):
        chunk = ids[start : start + settings.validation_batch]
        runtime.queue.enqueue(VALIDATE_TASK, chunk, queue=settings.validate_queue)


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
    settings = runtime.settings
    validator = {"model": name, "device": settings.validation_device, "dtype": settings.validation_dtype}
    try:
        base, weights = _source(runtime, name)
        scorer = models_cache.scorer(
            name, revision, settings.validation_device, settings.validation_dtype, weights, base
        )
    except models_cache.ModelUnavailable as exc:
        log.warning("validation of %d traces: %s", len(items), exc)
        results = [service.Result(None, str(exc), validator, 0.0)] * len(items)
    else:
        validator = {"model": name, "device": scorer.device, "dtype": scorer.dtype}
        submitted = [
            Submitted(i.spec, i.tokens, i.logprobs, i.finish_reason, i.text, i.worker_dtype) for i in items
        ]
        checked = validate(scorer, submitted, noise=settings.validation_noise.get(name))
        results = [service.Result(c.outcome, "", validator, c.seconds) for c in checked]
    for item, result in zip(items, results, strict=True):
        with transaction(runtime.sessions) as session:
            recheck = service.record(session, item, result, lock=not runtime.settings.is_sqlite)
        if recheck:
            log.warning("worker %s failed a validation; re-checking %d traces", item.worker_id, len(recheck))
            enqueue_validation(runtime, recheck)


def _source(runtime: Runtime, name: str) -> tuple[str | None, Path | None]:
    """Base model and weights file of a model published as an artifact (a checkpoint or an RL policy
    version); (None, None) for a name the model cache resolves itself."""
    if not name.startswith(ARTIFACT_MODEL_PREFIX):
        return None, None
    try:
        with transaction(runtime.sessions) as session:
            source = pipeline.resolve(session, runtime.settings, name)
    except FlywheelError as exc:
        raise models_cache.ModelUnavailable(f"cannot load {name!r} for validation: {exc}") from exc
    return source.base, source.weights


def requeue_stale(runtime: Runtime, older_than_s: float, limit: int = 10_000) -> int:
    """Decide traces whose decision was lost, and re-enqueue validations left waiting."""
    if not runtime.settings.validation_enabled:
        return 0
    now = utcnow()
    with transaction(runtime.sessions) as session:
        undecided = repository.undecided(session, now - timedelta(seconds=older_than_s), limit)
        # A validation waits behind slower work than a verification does: only a wait ten times as
        # long means a lost task, so a busy validator's queue is not filled with copies.
        waiting = repository.waiting(session, now - timedelta(seconds=WAIT_FACTOR * older_than_s), limit)
    for trace_id in undecided:
        after_verdict(runtime, trace_id)
    if waiting:
        log.info("re-enqueueing validation of %d traces", len(waiting))
        enqueue_validation(runtime, waiting)
    return len(undecided) + len(waiting)
