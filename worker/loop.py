"""The daemon: lease -> generate -> spool -> submit, with heartbeats and a clean shutdown.

Invariants kept here: a result is on disk before it is sent, and leaves the disk only on an ack;
every leased job still being worked on, or spooled and unacknowledged, is heartbeated so its
lease stays ours; a shutdown request abandons the batch at the next decode step.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.protocol import (
    MAX_BATCH,
    MAX_TEXT_CHARS,
    AckStatus,
    HardwareInfo,
    HeartbeatRequest,
    LeasedJob,
    LeaseGrant,
    LeaseRequest,
    SubmitRequest,
    Timings,
    TraceSubmission,
)
from worker.client import CoordinatorClient
from worker.config import WorkerConfig
from worker.engines.base import Engine, Generation
from worker.errors import RejectedError, TransientError, WorkerError
from worker.progress import Progress, Stats
from worker.spool import Spool

log = logging.getLogger("flywheel.worker")
MIN_HEARTBEAT_S = 0.2


def chunks(items: Sequence[LeasedJob], size: int) -> Iterable[list[LeasedJob]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class Heartbeat:
    """Background thread extending every tracked lease; remembers the leases reported lost."""

    def __init__(self, client: CoordinatorClient, interval_s: float) -> None:
        self.client = client
        self.interval_s = interval_s
        self.lost: set[uuid.UUID] = set()
        self._tracked: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flywheel-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)

    def track(self, lease_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            self._tracked.update(lease_ids)

    def untrack(self, lease_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            self._tracked.difference_update(lease_ids)

    def is_lost(self, lease_id: uuid.UUID) -> bool:
        with self._lock:
            return lease_id in self.lost

    def _run(self) -> None:
        while not self._closed.wait(max(MIN_HEARTBEAT_S, self.interval_s)):
            with self._lock:
                ids = sorted(self._tracked)
            for start in range(0, len(ids), MAX_BATCH):
                self._beat(ids[start : start + MAX_BATCH])

    def _beat(self, ids: list[uuid.UUID]) -> None:
        try:
            response = self.client.heartbeat(HeartbeatRequest(lease_ids=ids))
        except Exception as exc:  # a failed beat must never kill the thread; the next one may pass
            log.warning("heartbeat failed: %s", exc)
            return
        if response.lost:
            log.warning("%d lease(s) lost; their jobs are dropped", len(response.lost))
            with self._lock:
                self.lost.update(response.lost)
                self._tracked.difference_update(response.lost)


@dataclass
class Worker:
    """One daemon run; `stop` is set by the signal handler (or a test) to ask for a clean exit."""

    config: WorkerConfig
    client: CoordinatorClient
    engine: Engine
    spool: Spool
    progress: Progress
    hardware: HardwareInfo
    stop: threading.Event

    def __post_init__(self) -> None:
        self.stats = Stats(spooled=len(self.spool))
        self.heartbeat = Heartbeat(self.client, self.config.poll_interval_s)

    def run(self) -> int:
        """Work until stopped, idle past --exit-when-idle, or one round with --once; returns 0."""
        self.heartbeat.start()
        try:
            self.flush()
            self._main_loop()
        finally:
            self._set_status("stopping")
            self._final_flush()
            self.heartbeat.close()
            self.stats.status = "stopped"
            self.progress.close(self.stats)
        log.info("stopped; %d unacknowledged result(s) left in %s", len(self.spool), self.spool.directory)
        return 0

    def _final_flush(self) -> None:
        # Runs on the way out, maybe because of an error: it must not hide that error.
        try:
            self.flush()
        except WorkerError as exc:
            log.warning("final submit failed, results stay in the spool: %s", exc)

    def _main_loop(self) -> None:
        idle_since: float | None = None
        while not self.stop.is_set():
            if len(self.spool):
                self.flush()
            grant = self._lease()
            if grant is not None and grant.jobs:
                idle_since = None
                self._work(grant)
            else:
                idle_since = idle_since if idle_since is not None else time.monotonic()
                if self._should_exit_idle(idle_since):
                    return
                self._set_status("idle")
                self.stop.wait(self._idle_wait(idle_since))
            if self.config.once:
                return

    def _should_exit_idle(self, idle_since: float) -> bool:
        if self.config.once:
            return True
        limit = self.config.exit_when_idle
        return limit is not None and time.monotonic() - idle_since >= limit

    def _idle_wait(self, idle_since: float) -> float:
        wait = self.config.poll_interval_s
        if self.config.exit_when_idle is not None:
            remaining = self.config.exit_when_idle - (time.monotonic() - idle_since)
            wait = min(wait, max(0.05, remaining))
        return wait

    def _set_status(self, status: str) -> None:
        self.stats.status = status
        self.stats.spooled = len(self.spool)
        self.progress.update(self.stats)

    # ------------------------------------------------------------------ leasing

    def _lease(self) -> LeaseGrant | None:
        self._set_status("leasing")
        request = LeaseRequest(max_jobs=self.config.max_jobs, models=[self.config.model])
        try:
            grant = self.client.lease(request)
        except TransientError as exc:
            log.warning("cannot lease jobs: %s", exc)
            return None
        self.heartbeat.interval_s = grant.heartbeat_interval_s
        return grant

    def _accepts(self, job: LeasedJob) -> bool:
        if job.spec.model.name == self.config.model:
            return True
        log.warning("job %s wants model %r, this worker serves %r; skipped", job.spec.job_id,
                    job.spec.model.name, self.config.model)  # fmt: skip
        return False

    def _work(self, grant: LeaseGrant) -> None:
        jobs = [job for job in grant.jobs if self._accepts(job)]
        self.stats.leased += len(grant.jobs)
        self.heartbeat.track(job.lease_id for job in jobs)
        leased_at = time.monotonic()
        spooled: set[uuid.UUID] = set()
        for chunk in chunks(jobs, self.config.batch_size):
            if self.stop.is_set():
                break
            live = self._drop_lost(chunk)
            if live and not self._generate_and_submit(live, leased_at, spooled):
                break
        abandoned = [job.lease_id for job in jobs if job.lease_id not in spooled]
        if abandoned and self.stop.is_set():
            log.info("shutdown requested: %d leased job(s) abandoned", len(abandoned))
        # Their leases expire on the coordinator and the jobs go back to the pool.
        self.heartbeat.untrack(abandoned)

    def _drop_lost(self, chunk: list[LeasedJob]) -> list[LeasedJob]:
        live = [job for job in chunk if not self.heartbeat.is_lost(job.lease_id)]
        self.stats.dropped += len(chunk) - len(live)
        return live

    # ------------------------------------------------------------------ generating

    def _generate_and_submit(self, chunk: list[LeasedJob], leased_at: float, spooled: set[uuid.UUID]) -> bool:
        """Generate one batch, spool it, send it; False when the batch was abandoned."""
        self._set_status("generating")
        started = time.monotonic()
        generations = self.engine.generate([job.spec for job in chunk], should_stop=self.stop.is_set)
        if len(generations) < len(chunk):
            return False
        self.stats.generate_s += time.monotonic() - started
        results = []
        for job, generation in zip(chunk, generations, strict=True):
            self.stats.generated += 1
            self.stats.tokens += len(generation.completion_token_ids)
            if self.heartbeat.is_lost(job.lease_id):
                self.stats.dropped += 1
                continue
            result = self._submission(job, generation, started - leased_at)
            self.spool.put(result)
            spooled.add(job.lease_id)
            results.append(result)
        self.submit(results)
        return True

    def _submission(self, job: LeasedJob, generation: Generation, queued_s: float) -> TraceSubmission:
        text = generation.text
        if len(text) > MAX_TEXT_CHARS:
            log.warning("job %s: text clipped to %d characters", job.spec.job_id, MAX_TEXT_CHARS)
            text = text[:MAX_TEXT_CHARS]
        return TraceSubmission(
            lease_id=job.lease_id,
            attempt_id=uuid.uuid4(),
            job_id=job.spec.job_id,
            text=text,
            completion_token_ids=generation.completion_token_ids,
            logprobs=generation.logprobs,
            finish_reason=generation.finish_reason,
            timings=Timings(
                queued_s=queued_s, generate_s=generation.generate_s, prompt_tokens=generation.prompt_tokens
            ),
            engine=self.engine.info,
            hardware=self.hardware,
        )

    # ------------------------------------------------------------------ submitting

    def flush(self) -> None:
        """Send everything in the spool (results of this run or of an earlier, interrupted one)."""
        pending = self.spool.pending()
        if pending:
            self.heartbeat.track(result.lease_id for result in pending)
            self.submit(pending)

    def submit(self, results: Sequence[TraceSubmission]) -> None:
        if not results:
            return
        self._set_status("submitting")
        for start in range(0, len(results), MAX_BATCH):
            if not self._submit_batch(list(results[start : start + MAX_BATCH])):
                break
        self.stats.spooled = len(self.spool)
        self.progress.update(self.stats)

    def _submit_batch(self, batch: list[TraceSubmission]) -> bool:
        """Send one batch and apply its acks; False on a transient failure (all stays spooled)."""
        try:
            response = self.client.submit(SubmitRequest(results=batch))
        except TransientError as exc:
            log.warning("submit failed, %d result(s) stay in the spool: %s", len(batch), exc)
            return False
        except RejectedError as exc:
            return self._submit_rejected_batch(batch, exc)
        by_attempt = {result.attempt_id: result for result in batch}
        for ack in response.acks:
            result = by_attempt.pop(ack.attempt_id, None)
            if result is not None:
                self._apply_ack(result, ack.status, ack.reason)
        if by_attempt:
            log.warning("%d result(s) got no ack; they stay in the spool", len(by_attempt))
        return True

    def _submit_rejected_batch(self, batch: list[TraceSubmission], exc: RejectedError) -> bool:
        # One malformed result must not hold the others back: split until the culprit is alone.
        if len(batch) > 1:
            return all(self._submit_batch([result]) for result in batch)
        self._apply_ack(batch[0], AckStatus.rejected, str(exc))
        return True

    def _apply_ack(self, result: TraceSubmission, status: AckStatus, reason: str | None) -> None:
        self.spool.remove(result.attempt_id)
        self.heartbeat.untrack([result.lease_id])
        if status is AckStatus.accepted:
            self.stats.accepted += 1
        elif status is AckStatus.duplicate:
            self.stats.duplicate += 1
        else:
            self.stats.rejected += 1
            log.warning("result for job %s rejected: %s", result.job_id, reason or "no reason given")
