"""Concurrent duplicate submissions on PostgreSQL: a worker's retries racing each other (the same
attempt, or a resend under a new attempt id) store exactly one trace; every other copy is acked
`duplicate`, none fails. SQLite serialises writers, so the race needs PostgreSQL's row locks."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from coordinator.db import transaction
from coordinator.results.models import Trace
from tests.conftest import PG_URL
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, trace_for

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="needs PostgreSQL (FLYWHEEL_TEST_DATABASE_URL): SQLite has one writer at a time"
)
COPIES = 8


def _race(api: Api, worker: dict[str, str], bodies: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Post each body from its own thread, all released at once; (HTTP status, ack status) each."""
    start = threading.Barrier(len(bodies))
    out: list[tuple[int, str]] = []
    lock = threading.Lock()

    def post(body: dict[str, Any]) -> None:
        start.wait()
        r = api.client.post("/v1/results", json={"results": [body]}, headers=worker)
        ack = r.json()["acks"][0]["status"] if r.status_code == 200 else r.text
        with lock:
            out.append((r.status_code, ack))

    threads = [threading.Thread(target=post, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return out


def _traces(api: Api) -> int:
    with transaction(api.runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Trace)) or 0)


def _leased_job(api: Api) -> tuple[dict[str, str], dict[str, Any]]:
    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    jobs = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).json()["jobs"]
    assert len(jobs) == 1
    return worker, jobs[0]


def test_the_same_attempt_posted_at_once_is_stored_once(api: Api) -> None:
    worker, job = _leased_job(api)
    body = trace_for(job, text=answer_of(api, job))
    acks = _race(api, worker, [body] * COPIES)
    assert sorted(acks) == sorted([(200, "accepted")] + [(200, "duplicate")] * (COPIES - 1)), acks
    assert _traces(api) == 1


def test_resends_under_new_attempt_ids_at_once_store_one_trace(api: Api) -> None:
    worker, job = _leased_job(api)
    text = answer_of(api, job)
    bodies = [{**trace_for(job, text=text), "attempt_id": str(uuid.uuid4())} for _ in range(COPIES)]
    acks = _race(api, worker, bodies)
    assert sorted(acks) == sorted([(200, "accepted")] + [(200, "duplicate")] * (COPIES - 1)), acks
    assert _traces(api) == 1
    api.drain()
    campaign = api.client.get("/v1/campaigns", headers=api.operator).json()[0]
    assert campaign["progress"]["accepted"] == 1
