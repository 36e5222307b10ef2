"""The daemon's pipeline in-process, over real HTTP and a real spool: prefetching within the lease
cap, submitting while the next batch generates, giving leases back, the volunteer's controls."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import MODEL, EchoEngine, make_job, make_worker
from worker_fakes import FakeCoordinator, Reply

from shared.protocol import API_PREFIX, Routes
from tests.waiting import wait_for
from worker.state import StateStore, read_status

SUBMIT = API_PREFIX + Routes.submit
LEASE = API_PREFIX + Routes.lease


def run_in_thread(worker: object) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.parametrize(("batch_size", "max_leases"), [(3, 5), (4, 8), (1, 1)])
def test_prefetch_never_holds_more_leases_than_allowed(
    coordinator: FakeCoordinator, tmp_path: Path, batch_size: int, max_leases: int
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(25))
    engine = EchoEngine(delay_s=0.03)
    worker = make_worker(
        coordinator, tmp_path, engine, batch_size=batch_size, max_leases=max_leases, exit_when_idle=0.3
    )
    assert worker.run() == 0
    assert len(coordinator.stored) == 25
    assert coordinator.peak_outstanding <= max_leases and worker.book.peak <= max_leases
    assert all(len(batch) <= batch_size for batch in engine.batches)
    if max_leases > batch_size:  # jobs for the next batch were leased while one generated
        assert coordinator.peak_outstanding > batch_size


def test_next_batch_generates_while_the_last_one_is_submitted(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """The first submission is held back until the engine has started the second batch: a
    daemon that waited for its submission before generating again would never get there."""
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(6))
    engine = EchoEngine(delay_s=0.1)
    second_batch_started = threading.Event()
    submit = coordinator.routes[("POST", SUBMIT)]

    def held_submit(headers: dict[str, str], body: bytes) -> Reply:
        if not second_batch_started.wait(timeout=15):
            return Reply(503, {"error": {"code": "test", "message": "second batch never started"}})
        return submit(headers, body)

    coordinator.routes[("POST", SUBMIT)] = held_submit
    worker = make_worker(coordinator, tmp_path, engine, batch_size=2, max_leases=6, exit_when_idle=0.3)
    thread = run_in_thread(worker)
    wait_for(lambda: len(engine.batches) >= 2, 60, lambda: f"batches started: {len(engine.batches)}")
    second_batch_started.set()
    thread.join(timeout=30)
    assert len(coordinator.stored) == 6 and worker.stats.accepted == 6
    assert engine.spans[1][0] < coordinator.submit_times[0]  # batch 2 began before submission 1 ended


def test_pause_gives_leases_back_and_resume_finishes(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(8))
    engine = EchoEngine(delay_s=0.3)
    worker = make_worker(coordinator, tmp_path, engine, batch_size=2, max_leases=4, exit_when_idle=0.5)
    thread = run_in_thread(worker)
    wait_for(lambda: engine.batches, 60, lambda: f"no batch started; status {worker.stats.status}")
    worker.controls.request_pause(True)  # what SIGUSR1 does
    wait_for(lambda: worker.stats.status == "paused", 60, lambda: f"status {worker.stats.status}")
    wait_for(lambda: not coordinator.outstanding, 60, lambda: f"outstanding {coordinator.outstanding}")
    # (abandoned and queued leases went back)
    assert coordinator.released and StateStore(tmp_path).read().paused
    leases_while_paused = coordinator.count(LEASE)
    time.sleep(0.5)
    assert coordinator.count(LEASE) == leases_while_paused  # nothing is leased while paused
    with StateStore(tmp_path).update() as state:  # what `flywheel worker resume` does
        state.paused = False
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert {r.job_id for r in coordinator.stored.values()} == {j.job_id for j in coordinator.leases.values()}
    assert len(coordinator.stored) == 8


def test_shutdown_with_an_older_coordinator_lets_leases_expire(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.supports_release = False
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(4))
    engine = EchoEngine(delay_s=30)
    worker = make_worker(coordinator, tmp_path, engine, batch_size=2, max_leases=4)
    threading.Timer(0.5, worker.stop.set).start()
    assert worker.run() == 0
    assert coordinator.count(API_PREFIX + Routes.release) >= 1  # it tried, got 404, went on
    assert len(coordinator.outstanding) == 4 and not coordinator.released
    assert worker.stats.released == 0 and len(worker.book) == 0


def test_shutdown_gives_back_queued_and_abandoned_leases(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(4))
    worker = make_worker(coordinator, tmp_path, EchoEngine(delay_s=30), batch_size=2, max_leases=4)
    threading.Timer(0.5, worker.stop.set).start()
    assert worker.run() == 0
    assert len(coordinator.released) == 4 and not coordinator.outstanding and len(coordinator.queue) == 4


def test_daily_cap_persists_across_restarts(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(12))
    worker = make_worker(coordinator, tmp_path, EchoEngine(), batch_size=2, max_jobs_per_day=5)
    thread = run_in_thread(worker)
    wait_for(lambda: len(coordinator.stored) == 5, 60, lambda: f"{len(coordinator.stored)} stored")
    wait_for(lambda: worker.stats.status == "daily cap reached", 60, lambda: f"status {worker.stats.status}")
    worker.stop.set()
    thread.join(timeout=30)
    assert coordinator.peak_outstanding <= 5 and StateStore(tmp_path).read().jobs_today == 5

    again = make_worker(coordinator, tmp_path, EchoEngine(), batch_size=2, max_jobs_per_day=5)
    thread = run_in_thread(again)
    wait_for(lambda: again.stats.status == "daily cap reached", 60, lambda: f"status {again.stats.status}")
    again.stop.set()
    thread.join(timeout=30)
    assert len(coordinator.stored) == 5 and len(coordinator.queue) == 7


def test_outside_the_schedule_nothing_is_leased(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(3))
    now = time.localtime()
    start = (now.tm_hour + 2) % 24  # a one-hour window that does not include now
    worker = make_worker(coordinator, tmp_path, EchoEngine(), schedule=f"{start:02d}:00-{start:02d}:59")
    thread = run_in_thread(worker)
    wait_for(
        lambda: (read_status(tmp_path) or {}).get("status") == "outside schedule",
        60,
        lambda: f"status file {read_status(tmp_path)}",
    )
    status = read_status(tmp_path) or {}
    assert status["schedule"] == f"{start:02d}:00-{start:02d}:59" and status["next_change"]
    worker.stop.set()
    thread.join(timeout=30)
    assert coordinator.count(LEASE) == 0 and len(coordinator.queue) == 3


def test_jobs_the_engine_cannot_run_are_given_back(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    coordinator.queue.extend([make_job(MODEL, seed=1), make_job(MODEL, seed=2, prompt="refuse me")])
    engine = EchoEngine()
    engine.refuse = lambda job: "refused by the test" if job.messages[0].content == "refuse me" else None
    worker = make_worker(coordinator, tmp_path, engine, once=True)
    worker.run()
    assert [len(b) for b in engine.batches] == [1] and len(coordinator.stored) == 1
    assert len(coordinator.released) == 1 and worker.stats.released == 1


def test_traces_carry_the_verifiable_flag_of_their_generation(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(MODEL, seed=i) for i in range(2))
    make_worker(coordinator, tmp_path, EchoEngine(verifiable=False), once=True).run()
    assert [r.verifiable for r in coordinator.stored.values()] == [False, False]
