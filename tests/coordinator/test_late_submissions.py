"""Late submissions (docs/architecture.md): a lease past its deadline still counts until someone else
takes the job; once the job is leased again, only the new holder's trace is stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from coordinator.db import transaction, utcnow
from coordinator.jobs.models import Job
from coordinator.results.models import Trace
from coordinator.workers.models import Worker
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, trace_for


def _lease_one(api: Api, worker: dict[str, str]) -> dict[str, Any]:
    jobs = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).json()["jobs"]
    assert len(jobs) == 1, jobs
    job: dict[str, Any] = jobs[0]
    return job


def _expire_all_leases(api: Api) -> None:
    with transaction(api.runtime.sessions) as session:
        session.execute(update(Job).values(lease_deadline=utcnow() - timedelta(seconds=1)))


def _submit(api: Api, worker: dict[str, str], trace: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/v1/results", json={"results": [trace]}, headers=worker)
    assert r.status_code == 200, r.text
    ack: dict[str, Any] = r.json()["acks"][0]
    return ack


def _stored(api: Api) -> list[tuple[str, str]]:
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(select(Trace.lease_id, Trace.worker_id)).all()
    return [(str(lease), str(worker)) for lease, worker in rows]


def _worker_id(api: Api, name: str) -> str:
    with transaction(api.runtime.sessions) as session:
        return str(session.scalars(select(Worker.id).where(Worker.name == name)).one())


def test_the_old_holder_is_refused_once_the_job_is_leased_again(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    old, new = api.volunteer("old"), api.volunteer("new")
    first = _lease_one(api, old)
    _expire_all_leases(api)
    second = _lease_one(api, new)
    assert second["spec"]["job_id"] == first["spec"]["job_id"]

    late = _submit(api, old, trace_for(first, text=answer_of(api, first)))
    assert late["status"] == "rejected", late
    assert _stored(api) == []

    fresh = _submit(api, new, trace_for(second, text=answer_of(api, second)))
    assert fresh["status"] == "accepted", fresh
    # The old holder trying again after the new one finished is still refused, and nothing of it
    # is stored: one trace per job, the new holder's.
    again = _submit(api, old, trace_for(first, text=answer_of(api, first)))
    assert again["status"] == "rejected", again
    assert _stored(api) == [(second["lease_id"], _worker_id(api, "new"))]


def test_a_submission_to_an_expired_untaken_lease_is_accepted(api: Api) -> None:
    campaign = make_campaign(api, problems=1, samples=1)
    slow = api.volunteer("slow")
    job = _lease_one(api, slow)
    _expire_all_leases(api)  # past its deadline, but no one has leased the job since

    ack = _submit(api, slow, trace_for(job, text=answer_of(api, job)))
    assert ack["status"] == "accepted", ack
    assert _stored(api) == [(job["lease_id"], _worker_id(api, "slow"))]
    api.drain()
    # Once stored, the job is no longer leasable: a second worker gets nothing.
    other = api.volunteer("other")
    assert api.client.post("/v1/leases", json={"max_jobs": 1}, headers=other).json()["jobs"] == []
    body = api.client.get(f"/v1/campaigns/{campaign['id']}", headers=api.operator).json()
    assert body["progress"]["accepted"] == 1 and body["status"] == "done"
    with transaction(api.runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Trace)) == 1
