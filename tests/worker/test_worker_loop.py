"""The daemon loop in-process: lost leases, acks, --once, shutdown, over real HTTP and a real spool.

The engine here is a deterministic stand-in (the loop is the unit under test; engines have their
own tests): it echoes the job id and can be slowed down to let heartbeats happen mid-batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import make_job
from worker_fakes import FakeCoordinator, error_reply

from shared.protocol import API_PREFIX, EngineInfo, FinishReason, HardwareInfo, JobSpec, Routes
from worker.client import CoordinatorClient
from worker.config import RetryPolicy, WorkerConfig
from worker.engines.base import Generation, ShouldStop
from worker.errors import AuthError
from worker.loop import Worker
from worker.progress import NoProgress
from worker.spool import Spool

MODEL = "test/echo"


class EchoEngine:
    info = EngineInfo(name="transformers", version="test", dtype="float32", device="cpu")
    model_name = MODEL
    verifiable = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[JobSpec]] = []

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        self.batches.append(list(jobs))
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if should_stop is not None and should_stop():
                return []
            time.sleep(0.01)
        return [
            Generation(str(job.job_id), [1, 2], [-0.5, -0.25], FinishReason.stop, 3, self.delay_s)
            for job in jobs
        ]

    def close(self) -> None:
        return None


def make_worker(server: FakeCoordinator, tmp: Path, engine: EchoEngine, **config: object) -> Worker:
    settings = WorkerConfig.model_validate(
        {"coordinator": server.url, "model": MODEL, "spool": tmp, "poll_interval_s": 0.1, **config}
    )
    retry = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    stop = threading.Event()
    client = CoordinatorClient(server.url, "tok", retry=retry, stop=stop)
    return Worker(settings, client, engine, Spool(tmp), NoProgress(), HardwareInfo(cpu_count=1), stop)


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
        assert wait_until(lambda: len(coordinator.leases) == 4)
        coordinator.lost.update(list(coordinator.leases)[2:])

    threading.Thread(target=lose_the_last_two).start()
    worker.run()
    assert len(engine.batches) == 2
    assert len(coordinator.stored) == 2
    assert worker.stats.dropped == 2
    assert coordinator.count(API_PREFIX + Routes.heartbeat) >= 1


def wait_until(predicate: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


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
    submit = API_PREFIX + Routes.submit
    coordinator.fail_next(submit, error_reply(422, "validation_error"), error_reply(422, "validation_error"))
    worker = make_worker(coordinator, tmp_path, EchoEngine(), once=True)
    worker.run()
    # batch of 3 refused, then one by one: the first refused again, the other two accepted
    assert worker.stats.rejected == 1 and worker.stats.accepted == 2
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
    threading.Timer(0.5, worker.stop.set).start()
    started = time.monotonic()
    assert worker.run() == 0
    assert time.monotonic() - started < 10
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
