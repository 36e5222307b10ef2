"""Background verification. Idempotent: safe to run twice, safe to lose (the sweeper re-finds it)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta

from coordinator.db import transaction, utcnow
from coordinator.results import repository, service
from coordinator.runtime import Runtime, get_runtime
from coordinator.trust import tasks as trust_tasks

log = logging.getLogger(__name__)
VERIFY_TASK = "coordinator.results.tasks.verify_traces"
# Traces per verification task: one task per submitted batch, not one per trace, because creating
# and enqueueing a task costs the API more than storing the trace does.
VERIFY_CHUNK = 16


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
    trust_tasks.after_verdict(runtime, tid)  # the spot-check decision (docs/trust.md)


def verify_traces(trace_ids: list[str]) -> None:
    """`verify_trace` for each id. One failure does not stop the others; the task still fails at the
    end, so the task runner records it, and the sweeper retries the traces left pending."""
    failed = 0
    for trace_id in trace_ids:
        try:
            verify_trace(trace_id)
        except Exception:
            failed += 1
            log.exception("verification of trace %s failed", trace_id)
    if failed:
        raise RuntimeError(f"{failed} of {len(trace_ids)} verifications failed")


def enqueue_verification(runtime: Runtime, trace_ids: Sequence[uuid.UUID]) -> None:
    ids = [str(trace_id) for trace_id in trace_ids]
    for start in range(0, len(ids), VERIFY_CHUNK):
        chunk = ids[start : start + VERIFY_CHUNK]
        runtime.queue.enqueue(VERIFY_TASK, chunk, queue=runtime.settings.verify_queue)


def requeue_pending(runtime: Runtime, older_than_s: float, limit: int = 10_000) -> int:
    """Re-enqueue traces still pending after `older_than_s` (a lost task or a crash mid-verify)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with transaction(runtime.sessions) as session:
        stale = list(repository.stale_pending(session, cutoff, limit))
    if stale:
        log.info("re-enqueueing verification of %d pending traces", len(stale))
        enqueue_verification(runtime, stale)
    return len(stale)
