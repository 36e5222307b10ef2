"""The verification sweeper (coordinator/app.py `_sweeper`, results/tasks.py `requeue_pending`):
a trace committed but never enqueued (a crash between commit and enqueue, a lost task) is found
again, by the app's first pass at start-up and by its passes every FLYWHEEL_REQUEUE_PENDING_AFTER_S."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.results import service as results
from coordinator.results.models import Trace
from coordinator.results.tasks import requeue_pending
from coordinator.workers import service as workers
from coordinator.workers.models import Worker
from shared.protocol import Scope, SubmitRequest
from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import answer_of, make_campaign, trace_for
from tests.waiting import wait_for


def _commit_without_enqueueing(api: Api) -> uuid.UUID:
    """Lease a job over HTTP and store its (correct) trace the way the endpoint does, minus the
    enqueue that follows the commit: what a process killed between the two leaves behind."""
    make_campaign(api, problems=1, samples=1)
    headers = api.volunteer("late")
    with transaction(api.runtime.sessions) as session:
        worker = session.scalars(select(Worker).where(Worker.name == "late")).one()
        principal = workers.Principal(worker.id, Scope.volunteer, worker.name)
    leased = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=headers)
    job: dict[str, Any] = leased.json()["jobs"][0]
    request = SubmitRequest.model_validate({"results": [trace_for(job, text=answer_of(api, job))]})
    with transaction(api.runtime.sessions) as session:
        response, ids = results.submit(session, principal, request, lock=not api.runtime.settings.is_sqlite)
    assert response.acks[0].status == "accepted" and len(ids) == 1
    return ids[0]


def _status(api: Api, trace_id: uuid.UUID) -> str:
    with transaction(api.runtime.sessions) as session:
        return str(session.scalars(select(Trace.status).where(Trace.id == trace_id)).one())


def _wait_decided(api: Api, trace_id: uuid.UUID, timeout_s: float) -> str:
    def decided() -> str | None:
        status = _status(api, trace_id)
        return None if status == "pending" else status

    return wait_for(decided, timeout_s, lambda: f"trace {trace_id} is {_status(api, trace_id)}")


def test_the_start_up_pass_verifies_what_a_crash_left_pending(database_url: str) -> None:
    settings: Settings = make_settings(database_url, requeue_pending_after_s=3600)
    with serve(settings) as api:
        trace_id = _commit_without_enqueueing(api)
        api.drain()
        assert _status(api, trace_id) == "pending"  # nothing was enqueued, and no pass is due
        assert requeue_pending(api.runtime, older_than_s=3600) == 0  # too young for a late pass
    with serve(settings) as restarted:  # the coordinator starts again: its first pass finds it
        assert _wait_decided(restarted, trace_id, timeout_s=60) == "accepted"


def test_the_sweeper_passes_again_every_interval(database_url: str) -> None:
    settings = make_settings(database_url, requeue_pending_after_s=1)
    with serve(settings) as api:
        trace_id = _commit_without_enqueueing(api)  # after the start-up pass: a later one finds it
        assert _wait_decided(api, trace_id, timeout_s=60) == "accepted"
