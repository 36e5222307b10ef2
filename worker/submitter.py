"""Spool and submit finished results on a thread of their own, so the engine goes on generating the
next batch while this one is written to disk and sent.

A result is on disk before it is sent and leaves the disk only on an ack (accepted, duplicate,
rejected) or when the coordinator refuses it alone for its content (400, 413, 422). A request
refused for its content is split in halves until the results at fault are alone, so they never
hold the others back. A result that could not be sent (network, 5xx, 429) stays spooled and is
sent again after `retry_s`; a batch the coordinator keeps failing (5xx) is halved at each failure
and sent behind the others, and a result that fails alone waits longer and longer (up to
`STALL_MAX_WAIT_S`) without ever blocking what comes after it.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

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
from worker.errors import CoordinatorError, RejectedError, TransientError, WorkerError
from worker.leases import LeaseBook, give_back
from worker.progress import Stats
from worker.spool import Spool

log = logging.getLogger("flywheel.worker")
CONTENT_REFUSALS = frozenset({400, 413, 422})  # the request's content is at fault: bisect, drop the culprit
STALL_MAX_WAIT_S = 600.0  # the longest a result failing alone waits between tries


class Outcome(enum.Enum):
    sent = "sent"  # acked (or refused alone and dropped)
    failed = "failed"  # the coordinator failed on it (5xx): maybe its content, maybe not
    unavailable = "unavailable"  # nothing learnt about the content (network, 429, other 4xx): stop the round


@dataclass
class Suspect:
    """A spooled result whose batch failed: sent in smaller batches, behind the others."""

    strikes: int = 0
    batch_limit: int = MAX_BATCH
    not_before: float = 0.0  # time.monotonic(); only set once it failed alone


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
        self._suspects: dict[uuid.UUID, Suspect] = {}  # in memory: a restart starts the isolation over
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
        results = [result for item in live if (result := self._submission(item)) is not None]
        if results:
            self.spool.put_many(results)
            self.book.finish(result.lease_id for result in results)
            self.submit(results)

    def _submission(self, item: Finished) -> TraceSubmission | None:
        # A result the wire format cannot carry would fail every send: refuse it here, once.
        try:
            return submission(item, self.engine, self.hardware)
        except ValidationError as exc:
            self.stats.refused += 1
            why = f"result for job {item.job.spec.job_id} cannot be sent ({exc.errors()[:2]})"
            log.warning("%s; dropped", why)
            give_back(self.client, self.book, [item.job.lease_id], why)
            return None

    def _drain_to_spool(self) -> None:
        # After a fatal error nothing is sent, but what was generated still reaches the disk.
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item:
                self.spool.put_many([r for i in item if (r := self._submission(i)) is not None])

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
            self.book.finish(result.lease_id for result in pending)
            self.submit(pending)

    def submit(self, results: Sequence[TraceSubmission]) -> None:
        """One round: results whose batches failed go last, in smaller batches; the round stops
        when the coordinator is unreachable or two batches in a row fail."""
        now = time.monotonic()
        due = [r for r in results if self._suspect(r).not_before <= now]
        due.sort(key=lambda r: self._suspect(r).strikes)  # stable: oldest first within a rank
        if len(due) < len(results):
            self._backlog = True
        failures = 0
        for batch in self._batches(due):
            outcome = self._deliver(batch)
            failures = failures + 1 if outcome is Outcome.failed else 0
            if outcome is not Outcome.sent:
                self._backlog = True
            if outcome is Outcome.unavailable or failures >= 2:
                break
        self.stats.spooled = len(self.spool)
        self.stats.stalled = sum(1 for s in self._suspects.values() if s.not_before > 0)

    def _suspect(self, result: TraceSubmission) -> Suspect:
        return self._suspects.get(result.attempt_id) or Suspect()

    def _batches(self, results: list[TraceSubmission]) -> Iterator[list[TraceSubmission]]:
        """Consecutive results, each batch no larger than the smallest limit of its members."""
        batch: list[TraceSubmission] = []
        limit = MAX_BATCH
        for result in results:
            own = self._suspect(result).batch_limit
            if batch and len(batch) >= min(limit, own):
                yield batch
                batch, limit = [], MAX_BATCH
            batch.append(result)
            limit = min(limit, own)
        if batch:
            yield batch

    def _deliver(self, batch: list[TraceSubmission]) -> Outcome:
        """Send one batch and apply its acks."""
        try:
            response = self.client.submit(SubmitRequest(results=batch))
        except TransientError as exc:
            return self._failed(batch, exc)
        except RejectedError as exc:
            if exc.status_code in CONTENT_REFUSALS:
                return self._bisect(batch, exc)
            log.warning("submit refused (%s); %d result(s) stay in the spool", exc, len(batch))
            return Outcome.unavailable
        by_attempt = {result.attempt_id: result for result in batch}
        for ack in response.acks:
            result = by_attempt.pop(ack.attempt_id, None)
            if result is not None:
                self._apply_ack(result, ack.status, ack.reason)
        if by_attempt:
            log.warning("%d result(s) got no ack; they stay in the spool", len(by_attempt))
            self._backlog = True
        return Outcome.sent

    def _bisect(self, batch: list[TraceSubmission], exc: RejectedError) -> Outcome:
        # The request was refused for its content: halve it until the results at fault are alone.
        if len(batch) == 1:
            self._drop_refused(batch[0], exc)
            return Outcome.sent
        middle = (len(batch) + 1) // 2
        outcomes = []
        for half in (batch[:middle], batch[middle:]):
            outcomes.append(self._deliver(half))
            if outcomes[-1] is Outcome.unavailable:
                return Outcome.unavailable
        return Outcome.failed if Outcome.failed in outcomes else Outcome.sent

    def _failed(self, batch: list[TraceSubmission], exc: TransientError) -> Outcome:
        log.warning("submit failed, %d result(s) stay in the spool: %s", len(batch), exc)
        if exc.status_code is None or exc.status_code < 500:  # network or 429: says nothing about the content
            return Outcome.unavailable
        now = time.monotonic()
        for result in batch:
            suspect = self._suspects.setdefault(result.attempt_id, Suspect())
            suspect.strikes += 1
            suspect.batch_limit = min(suspect.batch_limit, max(1, (len(batch) + 1) // 2))
            if len(batch) == 1:
                suspect.not_before = now + min(STALL_MAX_WAIT_S, self.retry_s * 2**suspect.strikes)
        if len(batch) == 1:
            log.warning("result for job %s keeps failing on its own; retried later, behind the others",
                        batch[0].job_id)  # fmt: skip
        return Outcome.failed

    def _drop_refused(self, result: TraceSubmission, exc: CoordinatorError) -> None:
        self.stats.refused += 1
        log.warning("result for job %s refused by the coordinator; dropped from the spool: %s", result.job_id,
                    exc)  # fmt: skip
        self._forget(result)

    def _apply_ack(self, result: TraceSubmission, status: AckStatus, reason: str | None) -> None:
        self.stats.last_ack_at = time.time()
        self._forget(result)
        if status is AckStatus.accepted:
            self.stats.accepted += 1
            self.stats.credit_tokens += len(result.completion_token_ids)
        elif status is AckStatus.duplicate:
            self.stats.duplicate += 1
        else:
            self.stats.rejected += 1
            log.warning("result for job %s rejected: %s", result.job_id, reason or "no reason given")

    def _forget(self, result: TraceSubmission) -> None:
        self.spool.remove(result.attempt_id)
        self._suspects.pop(result.attempt_id, None)
        self.book.drop([result.lease_id])
