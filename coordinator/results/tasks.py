"""Background verification. Idempotent: safe to run twice, safe to lose (the sweeper re-finds it)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from coordinator.db import transaction, utcnow
from coordinator.results import repository, service
from coordinator.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)
VERIFY_TASK = "coordinator.results.tasks.verify_trace"


def verify_trace(trace_id: str) -> None:
    from verifier.api import verify

    runtime = get_runtime()
    tid = uuid.UUID(trace_id)
    with transaction(runtime.sessions) as session:
        loaded = service.load_for_verification(session, tid)
    if loaded is None:
        return
    spec, text = loaded
    # The verifier runs outside any transaction: it may take seconds and holds no locks.
    verdict = verify(spec, text)
    with transaction(runtime.sessions) as session:
        service.record_verdict(session, tid, verdict, lock=not runtime.settings.is_sqlite)


def enqueue_verification(runtime: Runtime, trace_ids: list[uuid.UUID]) -> None:
    for trace_id in trace_ids:
        runtime.queue.enqueue(VERIFY_TASK, str(trace_id), queue=runtime.settings.verify_queue)


def requeue_pending(runtime: Runtime, older_than_s: float, limit: int = 10_000) -> int:
    """Re-enqueue traces still pending after `older_than_s` (a lost task or a crash mid-verify)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with transaction(runtime.sessions) as session:
        stale = list(repository.stale_pending(session, cutoff, limit))
    if stale:
        log.info("re-enqueueing verification of %d pending traces", len(stale))
        enqueue_verification(runtime, stale)
    return len(stale)
