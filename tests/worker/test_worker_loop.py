"""The daemon loop in-process: lost leases, acks, --once, shutdown, over real HTTP and a real spool.

The engine here is a deterministic stand-in (the loop is the unit under test; engines have their
own tests): it echoes the job id and can be slowed down to let heartbeats happen mid-batch.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from conftest import MODEL, EchoEngine, make_job, make_worker
from worker_fakes import FakeCoordinator, Reply, error_reply

from shared.protocol import API_PREFIX, Routes, SubmitRequest
from tests.waiting import wait_for
from worker.errors import AuthError


def test_once_processes_one_lease_in_batches(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(7))
    engine = EchoEngine()
    worker = make_worker(coordinator, tmp_path, engine, once=True, max_jobs=5, batch_size=2)
    assert worker.run() == 0
    assert [len(b) for b in engine.batches] == [2, 2, 1]
    assert len(coordinator.stored) == 5 and len(coordinator.queue) == 2
    assert {r.text for r in coordinator.stored.values()} == {str(j.job_id) for b in engine.batches for j in b}
    assert worker.stats.accepted == 5 and len(worker.spool) == 0


def test_jobs_of_lost_leases_are_dropped(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.heartbeat_interval_s = 0.05
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(4))
    engine = EchoEngine(delay_s=0.5)
    worker = make_worker(coordinator, tmp_path, engine, once=True, max_jobs=4, batch_size=1)

    def lose_the_last_two() -> None:
        wait_for(lambda: len(coordinator.leases) == 4, 60, lambda: f"{len(coordinator.leases)} leases")
        coordinator.lost.update(list(coordinator.leases)[2:])

    threading.Thread(target=lose_the_last_two).start()
    worker.run()
    assert len(engine.batches) == 2
    assert len(coordinator.stored) == 2
    assert worker.stats.dropped == 2
    assert coordinator.count(API_PREFIX + Routes.heartbeat) >= 1


def test_rejected_results_leave_the_spool_with_a_reason(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(2))
    coordinator.reject_reason = "answer field too long"
    worker = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        worker.run()
    assert worker.stats.rejected == 2 and worker.stats.accepted == 0
    assert len(worker.spool) == 0
    assert "answer field too long" in caplog.text


def test_whole_batch_4xx_is_split_to_isolate_the_bad_result(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(3))
    engine = EchoEngine()
    bad = {"text": ""}

    def refuse_the_first(request: SubmitRequest) -> Reply | None:
        bad["text"] = bad["text"] or request.results[0].text
        refused = any(result.text == bad["text"] for result in request.results)
        return error_reply(422, "validation_error") if refused else None

    coordinator.refuse_request = refuse_the_first
    worker = make_worker(coordinator, tmp_path, engine, once=True)
    worker.run()
    # the batch of 3 refused, halved until the first result is alone: it is dropped, the rest sent
    assert worker.stats.refused == 1 and worker.stats.accepted == 2
    assert len(worker.spool) == 0


def test_transient_submit_failure_keeps_results_for_the_next_flush(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(2))
    coordinator.submit_status = 503
    worker = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    worker.run()
    assert len(worker.spool) == 2 and coordinator.stored == {}
    coordinator.submit_status = None
    restarted = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    restarted.run()
    assert len(restarted.spool) == 0 and len(coordinator.stored) == 2


def test_stop_abandons_the_batch_and_exits(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(4))
    engine = EchoEngine(delay_s=30)
    worker = make_worker(coordinator, tmp_path, engine, max_jobs=4, batch_size=2)

    def stop_mid_batch() -> None:  # once the batch runs, however long the machine took to start it
        wait_for(lambda: engine.batches, 60, lambda: f"no batch started; status {worker.stats.status}")
        worker.stop.set()

    threading.Thread(target=stop_mid_batch, daemon=True).start()
    started = time.monotonic()
    assert worker.run() == 0
    assert time.monotonic() - started < engine.delay_s  # the batch was abandoned, not waited out
    assert len(engine.batches) == 1 and coordinator.stored == {} and len(worker.spool) == 0


def test_jobs_for_another_model_are_skipped(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend([make_job("other/model"), make_job(MODEL)])
    engine = EchoEngine()
    worker = make_worker(coordinator, tmp_path, engine, once=True)
    worker.run()
    assert [j.model.name for b in engine.batches for j in b] == [MODEL]
    assert len(coordinator.stored) == 1


def test_auth_error_stops_the_daemon_and_keeps_results(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(2))
    coordinator.submit_status = 401
    worker = make_worker(coordinator, tmp_path, EchoEngine())
    with pytest.raises(AuthError):
        worker.run()
    assert len(worker.spool) == 2
