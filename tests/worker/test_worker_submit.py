"""Submitting results a coordinator will not take, over real HTTP and a real spool: a result the
coordinator fails on (5xx) or refuses for its content (4xx) never holds the others back; jobs
granted beyond what was asked go back; a heartbeat crossing a submission reports nothing lost."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import pytest
from conftest import MODEL, EchoEngine, make_job, make_worker
from worker_fakes import FakeCoordinator, Reply, error_reply

from shared.protocol import (
    API_PREFIX,
    MAX_COMPLETION_TOKENS,
    HeartbeatRequest,
    JobSpec,
    Routes,
    SubmitRequest,
)
from tests.waiting import wait_for
from worker.engines.base import Generation, ShouldStop
from worker.loop import Worker

SUBMIT = API_PREFIX + Routes.submit
HEARTBEAT = API_PREFIX + Routes.heartbeat
POISON = "poison"


def poisoned_text(job: JobSpec) -> str:
    # A NUL byte: an honest byte-level model can emit one, and PostgreSQL refuses it in text.
    return "bad\x00text" if job.messages[0].content == POISON else str(job.job_id)


def jobs(n: int, poisoned: set[int]) -> list[JobSpec]:
    return [make_job(MODEL, seed=i, prompt=POISON if i in poisoned else f"q{i}") for i in range(n)]


def database_fails_on_nul(request: SubmitRequest) -> Reply | None:
    """The old coordinator: the whole request dies with a 500 when one trace holds a NUL byte."""
    if any("\x00" in result.text for result in request.results):
        return error_reply(500, "internal_error", "Internal Server Error")
    return None


def validation_refuses_nul(request: SubmitRequest) -> Reply | None:
    """A coordinator that refuses such a request as malformed, whole (422)."""
    if any("\x00" in result.text for result in request.results):
        return error_reply(422, "validation_error", "text must not contain NUL")
    return None


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def poisoned_engine() -> EchoEngine:
    """An engine whose text for a poisoned job holds a NUL byte."""
    engine = EchoEngine()
    engine.text = poisoned_text
    return engine


def stop(worker: Worker, thread: threading.Thread) -> None:
    worker.stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_result_the_coordinator_fails_on_is_isolated_and_the_rest_delivered(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.queue.extend(jobs(8, poisoned={5}))
    coordinator.refuse_request = database_fails_on_nul
    engine = poisoned_engine()
    worker = make_worker(coordinator, tmp_path, engine, batch_size=8, max_leases=8)
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        thread = run_in_thread(worker)
        wait_for(
            lambda: len(coordinator.stored) == 7 and worker.stats.stalled == 1,
            60,
            lambda: f"{len(coordinator.stored)} stored, {worker.stats.stalled} stalled",
        )
        stop(worker, thread)
    assert "keeps failing on its own" in caplog.text
    # never dropped on a 5xx: it is still in the spool, and alone there
    [left] = worker.spool.pending()
    assert "\x00" in left.text and worker.stats.refused == 0 and worker.stats.rejected == 0

    coordinator.refuse_request = lambda request: None  # the coordinator is fixed
    restarted = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    restarted.run()
    assert len(restarted.spool) == 0 and len(coordinator.stored) == 8


def test_a_failing_batch_never_holds_back_the_spool_behind_it(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """More than one request's worth in the spool, the bad result in the first request: the old
    daemon retried that first request forever and never sent what came after it."""
    coordinator.queue.extend(jobs(300, poisoned={0}))
    coordinator.submit_status = 503  # down for now: everything stays spooled
    engine = poisoned_engine()
    first = make_worker(coordinator, tmp_path, engine, batch_size=100, max_leases=300)
    thread = run_in_thread(first)
    wait_for(lambda: len(first.spool) == 300, 120, lambda: f"{len(first.spool)} spooled")
    stop(first, thread)

    coordinator.submit_status = None
    coordinator.refuse_request = database_fails_on_nul  # back, but failing on the NUL byte
    restarted = make_worker(coordinator, tmp_path, EchoEngine(), max_leases=300)
    thread = run_in_thread(restarted)
    wait_for(lambda: len(coordinator.stored) == 299, 120, lambda: f"{len(coordinator.stored)} stored")
    stop(restarted, thread)
    assert [r.text for r in restarted.spool.pending()] == ["bad\x00text"]


def test_a_request_refused_for_its_content_is_bisected_to_the_culprit(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.queue.extend(jobs(64, poisoned={37}))
    coordinator.refuse_request = validation_refuses_nul
    engine = poisoned_engine()
    worker = make_worker(coordinator, tmp_path, engine, once=True, batch_size=64, max_jobs=64, max_leases=64)
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        worker.run()
    # halving: 7 refused requests (64, 32, ..., 1) and one accepted sibling at each of 6 levels,
    # where sending one by one takes 65
    assert coordinator.count(SUBMIT) == 13
    assert worker.stats.refused == 1 and worker.stats.accepted == 63 and len(worker.spool) == 0
    assert "refused by the coordinator" in caplog.text and "text must not contain NUL" in caplog.text


@pytest.mark.parametrize("status", [404, 409])
def test_a_refusal_not_about_the_content_keeps_every_result(
    coordinator: FakeCoordinator, tmp_path: Path, status: int
) -> None:
    """A 4xx that says nothing about the traces (a proxy's 404, a conflict) must not empty the spool."""
    coordinator.queue.extend(jobs(3, poisoned=set()))
    coordinator.refuse_request = lambda request: error_reply(status, "not_here")
    worker = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    worker.run()
    assert len(worker.spool) == 3 and worker.stats.rejected == 0 and worker.stats.refused == 0

    coordinator.refuse_request = lambda request: None
    restarted = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    restarted.run()
    assert len(restarted.spool) == 0 and len(coordinator.stored) == 3


class OverlongEngine(EchoEngine):
    """Returns more token ids than the wire format carries for the poisoned job."""

    def generate(self, jobs: list[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        out = super().generate(jobs, should_stop)
        for i, job in enumerate(jobs):
            if job.messages[0].content == POISON:
                n = MAX_COMPLETION_TOKENS + 1
                g = out[i]
                out[i] = Generation(
                    g.text, [1] * n, [-0.1] * n, g.finish_reason, g.prompt_tokens, g.generate_s
                )
        return out


def test_a_result_the_wire_cannot_carry_is_dropped_and_its_lease_given_back(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.queue.extend(jobs(3, poisoned={1}))
    worker = make_worker(coordinator, tmp_path, OverlongEngine(), once=True)
    worker.run()
    assert len(coordinator.stored) == 2 and len(worker.spool) == 0  # the others were not held back
    assert len(coordinator.released) == 1 and len(coordinator.queue) == 1  # its job is back in the pool
    assert worker.stats.refused == 1 and worker.stats.accepted == 2


def test_jobs_granted_beyond_what_was_asked_are_given_back_unrun(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.queue.extend(jobs(10, poisoned=set()))
    coordinator.overgrant = 3
    engine = EchoEngine()
    worker = make_worker(coordinator, tmp_path, engine, once=True, max_leases=4)
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        worker.run()
    assert sum(len(batch) for batch in engine.batches) == 4 and worker.book.peak <= 4
    assert len(coordinator.released) == 3 and len(coordinator.queue) == 6 and len(coordinator.stored) == 4
    assert worker.stats.released == 3 and "granted 7 job(s) for 4 asked" in caplog.text


class CrossingHeartbeat:
    """Holds one heartbeat and the submission of the same leases so that they cross on the wire:
    the coordinator takes the results, then answers the heartbeat (snapshotted before) that those
    leases are gone. `order` says which answer the worker gets first."""

    def __init__(self, coordinator: FakeCoordinator, order: str) -> None:
        self.order = order
        self.submitted: set[uuid.UUID] = set()
        self.submit_in, self.beat_in = threading.Event(), threading.Event()
        self.stored, self.beat_answered, self.beat_seen = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.worker: Worker | None = None
        self.lost_answers = 0
        self._submit = coordinator.routes[("POST", SUBMIT)]
        self._beat = coordinator.routes[("POST", HEARTBEAT)]
        coordinator.routes[("POST", SUBMIT)] = self.submit
        coordinator.routes[("POST", HEARTBEAT)] = self.heartbeat

    def submit(self, headers: dict[str, str], body: bytes) -> Reply:
        self.submitted.update(r.lease_id for r in SubmitRequest.model_validate_json(body).results)
        self.submit_in.set()
        assert self.beat_in.wait(10)
        reply = self._submit(headers, body)
        self.stored.set()
        if self.order == "heartbeat first":  # answer once the worker has read the heartbeat's answer
            assert self.beat_seen.wait(10)
        return reply

    def heartbeat(self, headers: dict[str, str], body: bytes) -> Reply:
        ids = set(HeartbeatRequest.model_validate_json(body).lease_ids)
        if self.beat_answered.is_set():
            self.beat_seen.set()  # the heartbeat thread sent another: it handled the held answer
        if self.submit_in.is_set() and not self.beat_in.is_set() and ids & self.submitted:
            self.beat_in.set()
            assert self.stored.wait(10)
            if self.order == "submission first":
                wait_for(
                    lambda: self.worker is not None and self.worker.stats.accepted == len(ids),
                    60,
                    lambda: f"accepted {self.worker and self.worker.stats.accepted}, want {len(ids)}",
                )
            reply = self._beat(headers, body)
            self.lost_answers = len(reply.body["lost"])
            self.beat_answered.set()
            return reply
        return self._beat(headers, body)


@pytest.mark.parametrize("order", ["submission first", "heartbeat first"])
def test_a_heartbeat_crossing_a_submission_reports_nothing_lost(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture, order: str
) -> None:
    coordinator.queue.extend(jobs(4, poisoned=set()))
    crossing = CrossingHeartbeat(coordinator, order)
    worker = make_worker(coordinator, tmp_path, EchoEngine(), once=True, batch_size=4)
    crossing.worker = worker
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        worker.run()
    assert crossing.beat_answered.is_set() and crossing.lost_answers == 4  # the race did happen
    assert "lost" not in caplog.text
    assert worker.stats.accepted == 4 and worker.stats.dropped == 0
    assert not any(worker.book.is_lost(lease_id) for lease_id in crossing.submitted)
