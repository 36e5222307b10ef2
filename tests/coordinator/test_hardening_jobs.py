"""Hostile and unlucky submissions: a trace that cannot be stored is refused per trace, never a 500."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from coordinator.db import transaction
from coordinator.jobs.models import Job
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import make_campaign, progress, trace_for


def _trace_count(api: Api) -> int:
    with transaction(api.runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Trace)) or 0)


def _lease(api: Api, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
    r = api.client.post("/v1/leases", json={"max_jobs": n}, headers=headers)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


def test_a_nul_character_is_refused_per_trace_and_its_job_returns(api: Api) -> None:
    campaign = make_campaign(api, problems=4, samples=1)
    worker = api.volunteer()
    jobs = _lease(api, worker, 4)
    in_text = trace_for(jobs[0], text="byte-level \x00 output \\boxed{0}")
    in_engine = {**trace_for(jobs[1]), "engine": {"name": "transformers", "version": "1\x00"}}
    in_hardware = {**trace_for(jobs[2]), "hardware": {"gpus": ["gpu\x00"]}}
    fine = trace_for(jobs[3])
    r = api.client.post(
        "/v1/results", json={"results": [in_text, in_engine, in_hardware, fine]}, headers=worker
    )
    assert r.status_code == 200, r.text
    acks = r.json()["acks"]
    assert [a["status"] for a in acks] == ["rejected", "rejected", "rejected", "accepted"]
    for ack, field in zip(acks, ["text", "engine", "hardware"], strict=False):
        assert f"the {field} holds a NUL character" in ack["reason"]
    assert _trace_count(api) == 1
    # The refused jobs are back in the pool at once, for another worker.
    assert progress(api, campaign["id"])["progress"]["queued"] == 3
    again = _lease(api, api.volunteer("other"), 4)
    assert {j["spec"]["job_id"] for j in again} == {j["spec"]["job_id"] for j in jobs[:3]}


def test_the_dtype_filter_matches_the_dtype_literally(api: Api) -> None:
    r = api.client.post(
        "/v1/problem-sets", json={"name": "f32", "source": "arithmetic", "limit": 2}, headers=api.operator
    )
    body = {"name": "f32-only", "problem_set_id": r.json()["id"], "model": {"name": "flywheel/tiny-arith"},
            "worker_dtypes": ["float32"]}  # fmt: skip
    assert api.client.post("/v1/campaigns", json=body, headers=api.operator).status_code == 201
    worker = api.volunteer()
    # LIKE wildcards said as a dtype match no campaign that takes float32 work only
    for dtype in ("%", "float__", "%32"):
        r = api.client.post("/v1/leases", json={"max_jobs": 2, "dtype": dtype}, headers=worker)
        assert r.status_code == 200 and r.json()["jobs"] == [], dtype
    r = api.client.post("/v1/leases", json={"max_jobs": 2, "dtype": "float32"}, headers=worker)
    assert len(r.json()["jobs"]) == 2


def _heartbeat(api: Api, headers: dict[str, str], lease_ids: list[str]) -> dict[str, Any]:
    r = api.client.post("/v1/leases/heartbeat", json={"lease_ids": lease_ids}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_heartbeats_never_extend_a_lease_past_its_maximum_lifetime(database_url: str) -> None:
    settings = make_settings(database_url, lease_ttl_s=30, lease_max_lifetime_s=60)
    with serve(settings) as api:
        make_campaign(api, problems=1, samples=1)
        worker = api.volunteer()
        (job,) = _lease(api, worker, 1)
        with transaction(api.runtime.sessions) as session:
            granted = session.scalar(select(Job.leased_at).where(Job.lease_id == uuid.UUID(job["lease_id"])))
        assert granted is not None
        cap = granted + timedelta(seconds=60)
        extended = _heartbeat(api, worker, [job["lease_id"]])["extended"]
        assert datetime.fromisoformat(extended[job["lease_id"]]) <= cap
        # The lease was granted 55 s ago: one more heartbeat reaches the cap and no further.
        _backdate(api, job["lease_id"], granted - timedelta(seconds=55))
        extended = _heartbeat(api, worker, [job["lease_id"]])["extended"]
        assert datetime.fromisoformat(extended[job["lease_id"]]) == granted + timedelta(seconds=5)
        # Past its lifetime, the lease is lost however often it is heartbeated, and leasable again.
        _backdate(
            api, job["lease_id"], granted - timedelta(seconds=61), deadline=granted - timedelta(seconds=1)
        )
        assert _heartbeat(api, worker, [job["lease_id"]]) == {"extended": {}, "lost": [job["lease_id"]]}
        (again,) = _lease(api, api.volunteer("other"), 1)
        assert again["spec"]["job_id"] == job["spec"]["job_id"]


def _backdate(api: Api, lease_id: str, leased_at: datetime, deadline: datetime | None = None) -> None:
    values: dict[str, Any] = {"leased_at": leased_at}
    if deadline is not None:
        values["lease_deadline"] = deadline
    with transaction(api.runtime.sessions) as session:
        session.execute(update(Job).where(Job.lease_id == uuid.UUID(lease_id)).values(**values))


def test_unverifiable_traces_beyond_the_cap_are_refused_and_their_jobs_return(database_url: str) -> None:
    settings = make_settings(database_url, max_unverifiable_per_worker=2)
    with serve(settings) as api:
        campaign = make_campaign(api, problems=4, samples=1)
        worker = api.volunteer()
        jobs = _lease(api, worker, 4)
        junk = [{**trace_for(job), "verifiable": False} for job in jobs[:3]]
        acks = api.client.post("/v1/results", json={"results": junk}, headers=worker).json()["acks"]
        assert [a["status"] for a in acks] == ["accepted", "accepted", "rejected"]
        assert "unverifiable traces reached the cap" in acks[2]["reason"]
        # the cap counts what is stored, across batches; verifiable work is still taken
        more = [{**trace_for(jobs[3]), "verifiable": False}]
        assert (
            api.client.post("/v1/results", json={"results": more}, headers=worker).json()["acks"][0]["status"]
            == "rejected"
        )
        assert progress(api, campaign["id"])["progress"]["queued"] == 2
        (again, _) = _lease(api, worker, 2)
        ack = api.client.post("/v1/results", json={"results": [trace_for(again)]}, headers=worker).json()
        assert ack["acks"][0]["status"] == "accepted"
