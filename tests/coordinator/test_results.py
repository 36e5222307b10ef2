"""Submissions: idempotent, lease-holder only, bounded, verified in the background."""

from __future__ import annotations

from sqlalchemy import func, select

from coordinator.db import transaction
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, progress, trace_for


def _trace_count(api: Api) -> int:
    with transaction(api.runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Trace)) or 0)


def _lease(api: Api, headers: dict[str, str], n: int = 1) -> list[dict]:
    jobs: list[dict] = api.client.post("/v1/leases", json={"max_jobs": n}, headers=headers).json()["jobs"]
    return jobs


def test_same_submission_twice_stores_one_trace_and_acks_both(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    body = {"results": [trace_for(_lease(api, worker)[0])]}
    first = api.client.post("/v1/results", json=body, headers=worker)
    second = api.client.post("/v1/results", json=body, headers=worker)
    assert first.status_code == second.status_code == 200
    assert first.json()["acks"][0]["status"] == "accepted"
    assert second.json()["acks"][0]["status"] == "duplicate"
    assert _trace_count(api) == 1


def test_resend_with_a_new_attempt_id_is_a_duplicate(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    job = _lease(api, worker)[0]
    api.client.post("/v1/results", json={"results": [trace_for(job)]}, headers=worker)
    again = api.client.post("/v1/results", json={"results": [trace_for(job)]}, headers=worker)
    assert again.json()["acks"][0]["status"] == "duplicate"
    assert _trace_count(api) == 1


def test_only_the_lease_holder_may_submit(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    owner, thief = api.volunteer("owner"), api.volunteer("thief")
    job = _lease(api, owner)[0]
    r = api.client.post("/v1/results", json={"results": [trace_for(job)]}, headers=thief)
    assert r.json()["acks"][0]["status"] == "rejected"
    assert _trace_count(api) == 0


def test_a_lease_cannot_carry_another_jobs_trace(api: Api) -> None:
    make_campaign(api, problems=2, samples=1)
    worker = api.volunteer()
    a, b = _lease(api, worker, 2)
    swapped = {**trace_for(a), "job_id": b["spec"]["job_id"]}
    r = api.client.post("/v1/results", json={"results": [swapped]}, headers=worker)
    assert r.json()["acks"][0]["status"] == "rejected"
    assert _trace_count(api) == 0


def test_malformed_traces_are_rejected_without_storing(api: Api) -> None:
    make_campaign(api, problems=3, samples=1, max_tokens=8)
    worker = api.volunteer()
    jobs = _lease(api, worker, 3)
    too_long = trace_for(jobs[0], tokens=9)
    mismatched = {**trace_for(jobs[1]), "logprobs": [-0.1]}
    positive = {**trace_for(jobs[2]), "logprobs": [0.5, -0.1, -0.1]}
    r = api.client.post("/v1/results", json={"results": [too_long, mismatched, positive]}, headers=worker)
    acks = r.json()["acks"]
    assert [a["status"] for a in acks] == ["rejected"] * 3
    assert "max_tokens" in acks[0]["reason"]
    assert _trace_count(api) == 0


def test_reported_generation_error_returns_the_job_at_once(api: Api) -> None:
    campaign = make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    job = _lease(api, worker)[0]
    failed = {**trace_for(job), "finish_reason": "error"}
    assert (
        api.client.post("/v1/results", json={"results": [failed]}, headers=worker).json()["acks"][0]["status"]
        == "rejected"
    )
    assert progress(api, campaign["id"])["progress"]["queued"] == 1


def test_verification_accepts_right_and_rejects_wrong_answers(api: Api) -> None:
    campaign = make_campaign(api, problems=4, samples=1)
    worker = api.volunteer()
    jobs = _lease(api, worker, 4)
    results = [trace_for(j, text=answer_of(api, j)) for j in jobs[:2]]
    results += [trace_for(j, text="I think \\boxed{123456789}") for j in jobs[2:]]
    acks = api.client.post("/v1/results", json={"results": results}, headers=worker).json()["acks"]
    assert [a["status"] for a in acks] == ["accepted"] * 4
    api.drain()
    body = progress(api, campaign["id"])
    assert body["progress"]["accepted"] == 2 and body["progress"]["rejected"] == 2
    assert body["status"] == "done"
    with transaction(api.runtime.sessions) as session:
        verdicts = session.scalars(select(Trace.verdict)).all()
    assert all(v is not None and "passed" in v for v in verdicts)


def test_verification_task_is_idempotent(api: Api) -> None:
    from coordinator.results.tasks import verify_trace

    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    job = _lease(api, worker)[0]
    api.client.post(
        "/v1/results", json={"results": [trace_for(job, text=answer_of(api, job))]}, headers=worker
    )
    api.drain()
    with transaction(api.runtime.sessions) as session:
        trace = session.scalars(select(Trace)).one()
        first = (trace.status, trace.verified_at)
    verify_trace(str(trace.id))
    with transaction(api.runtime.sessions) as session:
        trace = session.scalars(select(Trace)).one()
        assert (trace.status, trace.verified_at) == first == ("accepted", first[1])
    workers = api.client.get("/v1/workers", headers=api.operator).json()
    assert [w["jobs_accepted"] for w in workers if w["scope"] == "volunteer"] == [1]
