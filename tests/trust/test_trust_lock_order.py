"""A verdict and a failing validation of one worker, run at the same moment, both go through.

The verification task locks its trace and, deciding the spot-check, the worker's trust record; a
failed validation locks the validated trace and the trust record, then withdraws the worker's
other traces, the one being verified among them. Taken in opposite orders these locks deadlock on
PostgreSQL, and the database aborts one side (the verdict or the failure is lost until a retry).
Two failed validations of one worker, each withdrawing the other's trace, do the same.
coordinator/trust/service.py's docstring gives the one order every path takes; these tests race
the paths many times with a barrier and require each round to end with both sides stored.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select

from coordinator.db import transaction
from coordinator.jobs.models import QUEUED as JOB_QUEUED
from coordinator.jobs.models import Job
from coordinator.results import tasks as results_tasks
from coordinator.results.models import ACCEPTED, Trace
from coordinator.trust import service
from coordinator.trust import tasks as trust_tasks
from coordinator.trust.models import FAILED, RECHECK, Validation, WorkerTrust
from coordinator.workers.models import Worker
from shared.assets import TINY_MODEL_NAME
from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import answer_of, make_campaign, trace_for
from tests.trust.helpers import lease, submit

ROUNDS = 40  # races per test: the old lock order deadlocked in most of them, and one fails it


class Held:
    """A task queue that runs nothing: each round runs its tasks itself, at the moment it races them."""

    def enqueue(self, task: Callable[..., None], *args: Any, queue: str = "default") -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks and their order are PostgreSQL's (SQLite has one writer at a time)")
    settings = make_settings(
        database_url, validation_enabled=True, validation_device="cpu", registration_per_hour=0
    )
    with serve(settings) as served:
        served.runtime.queue.close()
        served.runtime.queue = Held()
        yield served


def _trace_id(api: Api, attempt_id: str) -> uuid.UUID:
    with transaction(api.runtime.sessions) as session:
        found = session.scalar(select(Trace.id).where(Trace.attempt_id == uuid.UUID(attempt_id)))
    assert found is not None
    return found


def _two_traces(api: Api, name: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A new worker's two stored traces with right answers but token ids the model never sampled:
    the verifier accepts both, a validation fails them."""
    worker = api.volunteer(name)
    jobs = lease(api, worker, 2)
    assert len(jobs) == 2
    bodies = [trace_for(job, text=answer_of(api, job)) for job in jobs]
    assert submit(api, worker, bodies) == ["accepted", "accepted"]
    return _trace_id(api, bodies[0]["attempt_id"]), _trace_id(api, bodies[1]["attempt_id"])


def _failing_validation(api: Api, trace_id: uuid.UUID) -> tuple[list[service.Pending], list[service.Result]]:
    """The trace verified and queued for its spot-check (a new worker's always is), and the real
    validator's outcome for it, not yet stored."""
    results_tasks.verify_trace(str(trace_id))
    with transaction(api.runtime.sessions) as session:
        items = service.pending(session, [trace_id])
    assert len(items) == 1
    results = trust_tasks.score(api.runtime, TINY_MODEL_NAME, None, items)
    assert results[0].outcome is not None and not results[0].outcome.passed
    return items, results


def _race(*runs: Callable[[], None]) -> list[BaseException]:
    """Run each callable in its own thread, all released at once; the errors they raised."""
    start = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def run(task: Callable[[], None]) -> None:
        start.wait()
        try:
            task()
        except BaseException as exc:  # whatever reached the caller is the finding
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(task,)) for task in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _check_round(api: Api, verified: uuid.UUID, failed: uuid.UUID) -> None:
    """Both sides stored: the verdict with its spot-check decision (a re-check: the worker is
    quarantined, whichever committed first), and the failure with everything it does."""
    with transaction(api.runtime.sessions) as session:
        trace = session.get_one(Trace, verified)
        assert (trace.status, trace.validation, trace.withdrawn) == (ACCEPTED, RECHECK, True)
        bad = session.get_one(Trace, failed)
        assert (bad.validation, bad.returned, bad.withdrawn) == (FAILED, True, True)
        rows = session.scalars(select(Validation.status).where(Validation.trace_id == failed)).all()
        assert list(rows) == [FAILED]
        record = session.get_one(WorkerTrust, bad.worker_id)
        assert (record.failed, record.quarantined, record.trust) == (1, True, 0)
        assert session.get_one(Worker, bad.worker_id).banned
        assert session.get_one(Job, bad.job_id).status == JOB_QUEUED
        count = select(func.count()).select_from(Validation).where(Validation.trace_id == verified)
        assert session.scalar(count) == 0  # its re-check is enqueued, not yet run


def _check_failures(api: Api, traces: tuple[uuid.UUID, uuid.UUID]) -> None:
    """Both failures stored, whichever came first (the second as a re-check the first asked for)."""
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(
            select(Validation.trace_id, Validation.status).where(Validation.trace_id.in_(traces))
        )
        assert sorted(rows) == sorted((trace_id, FAILED) for trace_id in traces)
        worker = session.get_one(Trace, traces[0]).worker_id
        assert session.get_one(WorkerTrust, worker).failed == 2


def test_a_verdict_and_a_failing_validation_of_one_worker_never_deadlock(api: Api) -> None:
    make_campaign(api, problems=ROUNDS, samples=2, max_tokens=16)
    for n in range(ROUNDS):
        verified, failed = _two_traces(api, f"w{n}")
        items, results = _failing_validation(api, failed)
        errors = _race(
            partial(results_tasks.verify_trace, str(verified)),
            partial(trust_tasks.store, api.runtime, items, results),
        )
        assert errors == [], f"round {n}: {errors!r}"
        _check_round(api, verified, failed)


def test_two_failing_validations_of_one_worker_never_deadlock(api: Api) -> None:
    """Each failure withdraws the other's trace: validation tasks of one worker, run by two
    validator processes at once, take the worker's trust record before their trace."""
    make_campaign(api, problems=ROUNDS, samples=2, max_tokens=16)
    for n in range(ROUNDS):
        traces = _two_traces(api, f"w{n}")
        first, second = (_failing_validation(api, trace_id) for trace_id in traces)
        errors = _race(
            partial(trust_tasks.store, api.runtime, *first), partial(trust_tasks.store, api.runtime, *second)
        )
        assert errors == [], f"round {n}: {errors!r}"
        _check_failures(api, traces)
