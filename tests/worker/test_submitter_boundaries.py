"""Submitter edges a mutation run found untested: a failure that says nothing about the results
(network, 429) must not mark them suspect, a bisected request whose half failed must be retried
without new work arriving, and every refused result is counted."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import MODEL, make_job
from worker_fakes import FakeCoordinator, Reply, error_reply

from shared.protocol import (
    API_PREFIX,
    Ack,
    AckStatus,
    EngineInfo,
    FinishReason,
    HardwareInfo,
    LeasedJob,
    Routes,
    SubmitRequest,
    SubmitResponse,
    TraceSubmission,
)
from tests.waiting import wait_for
from worker.client import CoordinatorClient
from worker.config import RetryPolicy
from worker.engines.base import Generation
from worker.errors import WorkerError
from worker.leases import LeaseBook
from worker.progress import Stats
from worker.spool import Spool
from worker.submitter import Finished, Submitter

SUBMIT = API_PREFIX + Routes.submit
RETRY = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02)


def _results(coordinator: FakeCoordinator, texts: list[str]) -> list[TraceSubmission]:
    results = [
        TraceSubmission(
            lease_id=uuid.uuid4(), attempt_id=uuid.uuid4(), job_id=uuid.uuid4(), text=text,
            completion_token_ids=[1, 2], logprobs=[-0.5, -0.25], finish_reason=FinishReason.stop,
            engine=EngineInfo(name="transformers"),
        )
        for text in texts
    ]  # fmt: skip
    coordinator.outstanding.update(r.lease_id for r in results)  # leased to this worker
    return results


@contextmanager
def _submitter(url: str, spool: Spool, fatal: list[WorkerError]) -> Iterator[Submitter]:
    with CoordinatorClient(url, "secret-token", retry=RETRY, timeout_s=5) as client:
        describe = (EngineInfo(name="transformers"), HardwareInfo())
        yield Submitter(client, spool, LeaseBook(64), Stats(), describe, 0.05, fatal.append)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_coordinator_keeps_every_result_and_marks_none_suspect(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put_many(_results(FakeCoordinator(), ["a", "b", "c"]))
    fatal: list[WorkerError] = []
    with _submitter(_dead_url(), spool, fatal) as submitter:
        submitter.flush()
        submitter.flush()
    assert len(spool) == 3 and submitter.stats.stalled == 0 and fatal == []


def test_a_rate_limited_submission_is_sent_whole_once_the_coordinator_answers(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """A 429 says nothing about the traces: no result is held back or sent in smaller batches."""
    spool = Spool(tmp_path)
    spool.put_many(_results(coordinator, ["a", "b", "c"]))
    coordinator.fail_next(SUBMIT, *[error_reply(429, "rate_limited")] * RETRY.attempts)
    with _submitter(coordinator.url, spool, []) as submitter:
        submitter.flush()
        assert len(spool) == 3 and submitter.stats.stalled == 0
        submitter.flush()
    assert coordinator.count(SUBMIT) == 2 * RETRY.attempts - 1 and len(coordinator.stored) == 3
    assert len(spool) == 0 and submitter.stats.accepted == 3


def test_the_failed_half_of_a_bisected_request_is_retried_without_new_work(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """The pair is refused for its content (422), so it is halved; the half holding "flaky" then
    fails with a 5xx while the other is stored. The daemon gets no new result after that: the
    failed half must still be sent again, and stored."""
    spool = Spool(tmp_path)
    spool.put_many(_results(coordinator, ["fine", "flaky"]))
    failures = {"left": 2 * RETRY.attempts}

    def refuse(request: SubmitRequest) -> Reply | None:
        if len(request.results) > 1:
            return error_reply(422, "validation_error", "one of these is malformed")
        if request.results[0].text == "flaky" and failures["left"] > 0:
            failures["left"] -= 1
            return error_reply(503, "unavailable")
        return None

    coordinator.refuse_request = refuse
    fatal: list[WorkerError] = []
    with _submitter(coordinator.url, spool, fatal) as submitter:
        submitter.start()  # its first act is to send what the spool holds
        wait_for(
            lambda: len(spool) == 0,
            60,
            lambda: f"spool {[r.text for r in spool.pending()]}, {submitter.stats}",
        )
        submitter.close(timeout=30)
    assert sorted(r.text for r in coordinator.stored.values()) == ["fine", "flaky"]
    assert submitter.stats.accepted == 2 and submitter.stats.refused == 0 and fatal == []


def test_every_result_refused_for_its_content_is_counted(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    spool = Spool(tmp_path)
    spool.put_many(_results(coordinator, ["bad", "good", "bad", "good"]))

    def refuse(request: SubmitRequest) -> Reply | None:
        if any(r.text == "bad" for r in request.results):
            return error_reply(422, "validation_error", "bad trace")
        return None

    coordinator.refuse_request = refuse
    with _submitter(coordinator.url, spool, []) as submitter:
        submitter.flush()
    assert submitter.stats.refused == 2 and submitter.stats.accepted == 2 and len(spool) == 0


def test_a_refused_token_stops_the_submitter_through_on_fatal_and_keeps_the_results(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """401: retrying cannot fix it. The daemon hears of it (on_fatal) and every result stays spooled."""
    spool = Spool(tmp_path)
    spool.put_many(_results(coordinator, ["a", "b"]))
    coordinator.fail_next(SUBMIT, error_reply(401, "unauthorized", "unknown token"))
    fatal: list[WorkerError] = []
    with _submitter(coordinator.url, spool, fatal) as submitter:
        submitter.start()
        wait_for(lambda: fatal, 60, lambda: f"no fatal error yet; {submitter.stats}")
        submitter.close(timeout=30)
    assert [type(e).__name__ for e in fatal] == ["AuthError"]
    assert len(spool) == 2 and coordinator.stored == {}


def _finished(coordinator: FakeCoordinator, text: str) -> Finished:
    job = LeasedJob(
        lease_id=uuid.uuid4(), deadline=datetime.now(UTC) + timedelta(minutes=10), spec=make_job(MODEL)
    )
    coordinator.outstanding.add(job.lease_id)
    return Finished(job, Generation(text, [1, 2], [-0.5, -0.25], FinishReason.stop, 3, 0.01), 0.0)


def test_what_was_generated_reaches_the_spool_after_a_fatal_error(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """Batch "b" is handed over while "a"'s submission is being refused (401): nothing more is sent,
    but "b" is written to the spool, not lost with the stopping thread."""
    spool = Spool(tmp_path)
    handed_over = threading.Event()

    def refuse_once_b_waits(request: SubmitRequest) -> Reply | None:
        assert handed_over.wait(30)
        return error_reply(401, "unauthorized", "unknown token")

    coordinator.refuse_request = refuse_once_b_waits
    fatal: list[WorkerError] = []
    with _submitter(coordinator.url, spool, fatal) as submitter:
        submitter.start()
        submitter.put([_finished(coordinator, "a")])
        wait_for(lambda: len(spool) == 1, 60, lambda: f"{len(spool)} spooled")  # "a" is being sent
        submitter.put([_finished(coordinator, "b1"), _finished(coordinator, "b2")])
        handed_over.set()
        wait_for(lambda: fatal, 60, lambda: f"no fatal error yet; {submitter.stats}")
        submitter.close(timeout=30)
    assert sorted(r.text for r in spool.pending()) == ["a", "b1", "b2"] and coordinator.stored == {}


def test_a_result_the_coordinator_did_not_ack_is_sent_again_without_new_work(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    spool = Spool(tmp_path)
    spool.put_many(_results(coordinator, ["acked", "skipped"]))
    skipped = {"left": 1}

    def drop_one_ack(request: SubmitRequest) -> Reply | None:
        if skipped["left"] and len(request.results) == 2:
            skipped["left"] = 0
            acked = [r for r in request.results if r.text == "acked"]
            coordinator.outstanding.discard(acked[0].lease_id)
            coordinator.stored[acked[0].attempt_id] = acked[0]
            ack = Ack(lease_id=acked[0].lease_id, attempt_id=acked[0].attempt_id, status=AckStatus.accepted)
            return Reply(200, SubmitResponse(acks=[ack]).model_dump(mode="json"))
        return None

    coordinator.refuse_request = drop_one_ack
    with _submitter(coordinator.url, spool, []) as submitter:
        submitter.start()
        wait_for(lambda: len(spool) == 0, 60, lambda: f"spool {[r.text for r in spool.pending()]}")
        submitter.close(timeout=30)
    assert sorted(r.text for r in coordinator.stored.values()) == ["acked", "skipped"]


def test_a_submission_carries_what_the_engine_and_host_reported(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """Down to the flags a validator and the credit read: an unverifiable trace must say so."""
    spool = Spool(tmp_path)
    job = LeasedJob(
        lease_id=uuid.uuid4(), deadline=datetime.now(UTC) + timedelta(minutes=10), spec=make_job(MODEL)
    )
    coordinator.outstanding.add(job.lease_id)
    generation = Generation("t", [1, 2], [-0.5, -0.25], FinishReason.length, 7, 0.25, verifiable=False)
    hardware = HardwareInfo(cpu="test cpu", cpu_count=3)
    with CoordinatorClient(coordinator.url, "secret-token", retry=RETRY, timeout_s=5) as client:
        submitter = Submitter(
            client, spool, LeaseBook(4), Stats(), (EngineInfo(name="transformers"), hardware), 0.05, print
        )
        submitter.start()
        later = LeasedJob(lease_id=uuid.uuid4(), deadline=job.deadline, spec=make_job(MODEL))
        coordinator.outstanding.add(later.lease_id)
        # The second one's wait is negative (a clock step): it is sent as 0.
        submitter.put([Finished(job, generation, 0.5), Finished(later, generation, -1.0)])
        submitter.close(timeout=30)
    stored = sorted(coordinator.stored.values(), key=lambda r: r.timings.queued_s, reverse=True)
    assert [r.timings.queued_s for r in stored] == [0.5, 0.0]
    for r in stored:
        assert (r.verifiable, r.finish_reason, r.hardware) == (False, FinishReason.length, hardware)
        assert (r.timings.prompt_tokens, r.timings.generate_s) == (7, 0.25)
