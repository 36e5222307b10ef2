"""Background verification. Idempotent: safe to run twice, safe to lose (the sweeper re-finds it)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from coordinator.db import transaction, utcnow
from coordinator.results import repository, service
from coordinator.results.models import PENDING
from coordinator.runtime import Runtime, get_runtime
from coordinator.trust import tasks as trust_tasks
from shared.protocol import Verdict, VerifierSpec

if TYPE_CHECKING:
    from verifier.errors import HostStalledError

log = logging.getLogger(__name__)
# Traces per verification task: one task per submitted batch, not one per trace, because creating
# and enqueueing a task costs the API more than storing the trace does.
VERIFY_CHUNK = 16
# Attempts a verification gets while the host stalls (a limit tripped while the program waited for a
# CPU): the earlier ones store nothing and leave the trace pending for the sweeper to retry later;
# the last stores what it measured, saying so.
STALL_ATTEMPTS = 3


def verify_trace(trace_id: str) -> None:
    runtime = get_runtime()
    tid = uuid.UUID(trace_id)
    with transaction(runtime.sessions) as session:
        loaded = service.load_for_verification(session, tid)
    if loaded is None:
        return
    started = time.monotonic()
    verdict = _verdict(runtime, tid, *loaded)
    if verdict is None:
        return  # indeterminate: still pending, so the sweeper enqueues it again later
    cost = time.monotonic() - started  # charged to the worker's verification budget
    with transaction(runtime.sessions) as session:
        service.record_verdict(session, tid, verdict, lock=not runtime.settings.is_sqlite, seconds=cost)
    trust_tasks.after_verdict(runtime, tid)  # the spot-check decision (docs/trust.md)


def _verdict(runtime: Runtime, tid: uuid.UUID, spec: VerifierSpec, text: str) -> Verdict | None:
    """The verifier's verdict, or None where the host stalled and the trace waits for a retry."""
    from verifier.api import verify
    from verifier.errors import HostStalledError

    try:
        # The verifier runs outside any transaction: it may take seconds and holds no locks.
        return verify(spec, text)
    except HostStalledError as stalled:
        with transaction(runtime.sessions) as session:
            return count_stall(session, tid, stalled, lock=not runtime.settings.is_sqlite)


def count_stall(session: Session, tid: uuid.UUID, stalled: HostStalledError, lock: bool) -> Verdict | None:
    """Note one stalled attempt on the pending trace (in `verdict`, which holds nothing else until
    the verdict is stored); on the last allowed attempt return what it measured, to be stored."""
    trace = repository.get_for_update(session, tid, lock=lock)
    if trace is None or trace.status != PENDING:
        return None  # another run decided it meanwhile
    stalls = [*(trace.verdict or {}).get("stalls", []), stalled.reason]
    if len(stalls) < STALL_ATTEMPTS:
        trace.verdict = {"stalls": stalls}
        log.warning("trace %s left pending after attempt %d: %s", tid, len(stalls), stalled.reason)
        return None
    measured = stalled.verdict
    reason = f"{measured.reason}; stored as measured after {len(stalls)} attempts ({stalled.reason})"
    return measured.model_copy(update={"reason": reason, "details": {**measured.details, "stalls": stalls}})


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
        runtime.queue.enqueue(verify_traces, chunk, queue=runtime.settings.verify_queue)


def requeue_pending(runtime: Runtime, older_than_s: float, limit: int = 10_000) -> int:
    """Re-enqueue traces still pending after `older_than_s` (a lost task or a crash mid-verify)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with transaction(runtime.sessions) as session:
        stale = list(repository.stale_pending(session, cutoff, limit))
    if stale:
        log.info("re-enqueueing verification of %d pending traces", len(stale))
        enqueue_verification(runtime, stale)
    return len(stale)
