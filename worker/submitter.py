"""Spool and submit finished results on a thread of their own, so the engine goes on generating the
next batch while this one is written to disk and sent.

A result is on disk before it is sent and leaves the disk only on an ack; a result that could
not be sent (network, 5xx, 429) stays spooled and is sent again after `retry_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.protocol import (
    MAX_BATCH,
    MAX_TEXT_CHARS,
    AckStatus,
    EngineInfo,
    HardwareInfo,
    LeasedJob,
    SubmitRequest,
    Timings,
    TraceSubmission,
)
from worker.client import CoordinatorClient
from worker.engines.base import Generation
from worker.errors import RejectedError, TransientError, WorkerError
from worker.leases import LeaseBook
from worker.progress import Stats
from worker.spool import Spool

log = logging.getLogger("flywheel.worker")


@dataclass(frozen=True)
class Finished:
    job: LeasedJob
    generation: Generation
    queued_s: float


def submission(item: Finished, engine: EngineInfo, hardware: HardwareInfo) -> TraceSubmission:
    job, generation = item.job, item.generation
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
            queued_s=max(0.0, item.queued_s),
            generate_s=generation.generate_s,
            prompt_tokens=generation.prompt_tokens,
        ),
        engine=engine,
        hardware=hardware,
        verifiable=generation.verifiable,
    )


class Submitter:
    """Owns the spool while the daemon runs; `on_fatal` hears of errors retrying cannot fix."""

    def __init__(
        self,
        client: CoordinatorClient,
        spool: Spool,
        book: LeaseBook,
        stats: Stats,
        describe: tuple[EngineInfo, HardwareInfo],
        retry_s: float,
        on_fatal: Callable[[WorkerError], None],
    ) -> None:
        self.client = client
        self.spool = spool
        self.book = book
        self.stats = stats
        self.engine, self.hardware = describe
        self.retry_s = retry_s
        self.on_fatal = on_fatal
        self._inbox: queue.Queue[list[Finished] | None] = queue.Queue()
        self._backlog = len(spool) > 0
        self._thread = threading.Thread(target=self._run, name="flywheel-submit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, finished: list[Finished]) -> None:
        self._inbox.put(finished)

    def close(self, timeout: float = 300.0) -> None:
        """Spool and try to send everything handed over so far, then stop the thread."""
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.flush()  # results of an earlier run go first
            while True:
                try:
                    item = self._inbox.get(timeout=self.retry_s if self._backlog else None)
                except queue.Empty:
                    self.flush()
                    continue
                if item is None:
                    break
                self._handle(item)
            self._final_flush()
        except WorkerError as exc:
            self.on_fatal(exc)
            self._drain_to_spool()

    def _handle(self, items: list[Finished]) -> None:
        live = [item for item in items if not self.book.is_lost(item.job.lease_id)]
        self.stats.dropped += len(items) - len(live)
        results = [submission(item, self.engine, self.hardware) for item in live]
        if results:
            self.spool.put_many(results)
            self.submit(results)

    def _drain_to_spool(self) -> None:
        # After a fatal error nothing is sent, but what was generated still reaches the disk.
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item:
                self.spool.put_many([submission(i, self.engine, self.hardware) for i in item])

    def _final_flush(self) -> None:
        # Runs on the way out: it must not hide why the daemon is stopping.
        try:
            self.flush()
        except WorkerError as exc:
            log.warning("final submit failed, results stay in the spool: %s", exc)

    def flush(self) -> None:
        """Send everything in the spool (results of this run or of an earlier, interrupted one)."""
        pending = self.spool.pending()
        self._backlog = False
        if pending:
            self.book.add(result.lease_id for result in pending)
            self.submit(pending)

    def submit(self, results: Sequence[TraceSubmission]) -> None:
        for start in range(0, len(results), MAX_BATCH):
            if not self._submit_batch(list(results[start : start + MAX_BATCH])):
                self._backlog = True
                break
        self.stats.spooled = len(self.spool)

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
            self._backlog = True
        return True

    def _submit_rejected_batch(self, batch: list[TraceSubmission], exc: RejectedError) -> bool:
        # One malformed result must not hold the others back: split until the culprit is alone.
        if len(batch) > 1:
            return all(self._submit_batch([result]) for result in batch)
        self._apply_ack(batch[0], AckStatus.rejected, str(exc))
        return True

    def _apply_ack(self, result: TraceSubmission, status: AckStatus, reason: str | None) -> None:
        self.stats.last_ack_at = time.time()
        self.spool.remove(result.attempt_id)
        self.book.drop([result.lease_id])
        if status is AckStatus.accepted:
            self.stats.accepted += 1
            self.stats.credit_tokens += len(result.completion_token_ids)
        elif status is AckStatus.duplicate:
            self.stats.duplicate += 1
        else:
            self.stats.rejected += 1
            log.warning("result for job %s rejected: %s", result.job_id, reason or "no reason given")
