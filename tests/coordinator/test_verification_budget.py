"""Per-worker verification budgets: a volunteer whose traces cost more verification time in an hour
than FLYWHEEL_VERIFY_BUDGET_S_PER_HOUR gets no new jobs (429 with Retry-After) until its hour is
over; what it already holds is still taken, and other workers are unaffected."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from coordinator.db import transaction, utcnow
from coordinator.workers.models import Worker
from coordinator.workers.service import hash_token
from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import make_campaign, trace_for

BUDGET_S = 1e-6  # any verification at all costs more than this


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with serve(make_settings(database_url, verify_budget_s_per_hour=BUDGET_S)) as served:
        yield served


def _lease(api: Api, worker: dict[str, str], n: int) -> Any:
    return api.client.post("/v1/leases", json={"max_jobs": n}, headers=worker)


def _worker(api: Api, headers: dict[str, str]) -> uuid.UUID:
    token = headers["Authorization"].removeprefix("Bearer ")
    with transaction(api.runtime.sessions) as session:
        found = session.scalar(select(Worker.id).where(Worker.token_hash == hash_token(token)))
    assert found is not None
    return found


def _spent(api: Api, worker_id: uuid.UUID) -> float:
    with transaction(api.runtime.sessions) as session:
        return float(session.scalar(select(Worker.verify_spent_s).where(Worker.id == worker_id)) or 0.0)


def test_a_worker_over_its_verification_budget_gets_no_new_jobs_until_its_hour_is_over(api: Api) -> None:
    make_campaign(api, problems=6, samples=1)
    worker = api.volunteer()
    first, held = _lease(api, worker, 2).json()["jobs"]
    r = api.client.post("/v1/results", json={"results": [trace_for(first)]}, headers=worker)
    assert r.json()["acks"][0]["status"] == "accepted"
    api.drain()  # the verification runs and its time is charged to the worker
    wid = _worker(api, worker)
    assert _spent(api, wid) > BUDGET_S

    refused = _lease(api, worker, 2)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "verification" in refused.json()["error"]["message"]
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    # What it holds is still taken; other workers and operators lease as before.
    r = api.client.post("/v1/results", json={"results": [trace_for(held)]}, headers=worker)
    assert r.json()["acks"][0]["status"] == "accepted"
    assert len(_lease(api, api.volunteer("other"), 1).json()["jobs"]) == 1
    assert len(_lease(api, api.operator, 1).json()["jobs"]) == 1

    with transaction(api.runtime.sessions) as session:  # its hour is over
        session.execute(
            update(Worker).where(Worker.id == wid).values(verify_window_at=utcnow() - timedelta(hours=1))
        )
    assert len(_lease(api, worker, 1).json()["jobs"]) == 1


def test_no_budget_when_it_is_zero(database_url: str) -> None:
    with serve(make_settings(database_url, verify_budget_s_per_hour=0)) as api:
        make_campaign(api, problems=3, samples=1)
        worker = api.volunteer()
        [job] = _lease(api, worker, 1).json()["jobs"]
        api.client.post("/v1/results", json={"results": [trace_for(job)]}, headers=worker)
        api.drain()
        assert _spent(api, _worker(api, worker)) > 0  # still measured, for operators
        assert _lease(api, worker, 1).status_code == 200
