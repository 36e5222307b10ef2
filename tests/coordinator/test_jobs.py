"""Leasing: batches, deadlines, heartbeats, expiry, in-flight limits, concurrency."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import update

from coordinator.db import transaction, utcnow
from coordinator.jobs import service
from coordinator.jobs.models import Job
from coordinator.workers import service as workers
from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, LeaseRequest, Scope
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, progress, trace_for


def test_lease_returns_a_batch_with_a_deadline_and_a_seed_per_job(api: Api) -> None:
    campaign = make_campaign(api, problems=3, samples=2)
    worker = api.volunteer()
    r = api.client.post("/v1/leases", json={"max_jobs": 4}, headers=worker)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert len(grant["jobs"]) == 4
    seeds = {job["spec"]["sampling"]["seed"] for job in grant["jobs"]}
    assert len(seeds) == 4
    assert all(job["spec"]["campaign_id"] == campaign["id"] for job in grant["jobs"])
    assert progress(api, campaign["id"])["progress"]["leased"] == 4


def test_a_job_is_leased_to_one_worker_at_a_time(api: Api) -> None:
    make_campaign(api, problems=3, samples=2)
    a, b = api.volunteer("a"), api.volunteer("b")
    first = api.client.post("/v1/leases", json={"max_jobs": 4}, headers=a).json()["jobs"]
    second = api.client.post("/v1/leases", json={"max_jobs": 4}, headers=b).json()["jobs"]
    assert len(first) == 4 and len(second) == 2
    assert not {j["spec"]["job_id"] for j in first} & {j["spec"]["job_id"] for j in second}


def test_expired_lease_returns_the_job_to_the_pool(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    a, b = api.volunteer("a"), api.volunteer("b")
    job = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=a).json()["jobs"][0]
    assert api.client.post("/v1/leases", json={"max_jobs": 1}, headers=b).json()["jobs"] == []
    with transaction(api.runtime.sessions) as session:
        session.execute(update(Job).values(lease_deadline=utcnow() - timedelta(seconds=1)))
    again = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=b).json()["jobs"]
    assert [j["spec"]["job_id"] for j in again] == [job["spec"]["job_id"]]
    assert again[0]["lease_id"] != job["lease_id"]
    lost = api.client.post("/v1/leases/heartbeat", json={"lease_ids": [job["lease_id"]]}, headers=a).json()
    assert lost["lost"] == [job["lease_id"]]


def test_heartbeat_extends_only_the_callers_leases(api: Api) -> None:
    make_campaign(api, problems=2, samples=1)
    a, b = api.volunteer("a"), api.volunteer("b")
    jobs = api.client.post("/v1/leases", json={"max_jobs": 2}, headers=a).json()["jobs"]
    ids = [j["lease_id"] for j in jobs]
    time.sleep(0.01)
    mine = api.client.post("/v1/leases/heartbeat", json={"lease_ids": ids}, headers=a).json()
    assert set(mine["extended"]) == set(ids) and mine["lost"] == []
    assert all(mine["extended"][j["lease_id"]] > j["deadline"] for j in jobs)
    theirs = api.client.post("/v1/leases/heartbeat", json={"lease_ids": ids}, headers=b).json()
    assert theirs["extended"] == {} and set(theirs["lost"]) == set(ids)


def test_in_flight_limit_per_worker(api: Api) -> None:
    make_campaign(api, problems=20, samples=1)
    worker = api.volunteer()
    limit = api.runtime.settings.max_in_flight_per_worker
    got = [
        len(api.client.post("/v1/leases", json={"max_jobs": 10}, headers=worker).json()["jobs"])
        for _ in range(3)
    ]
    assert sum(got) == limit
    assert got[-1] == 0


def test_paused_campaign_hands_out_nothing(api: Api) -> None:
    campaign = make_campaign(api, problems=2, samples=1)
    api.client.post(f"/v1/campaigns/{campaign['id']}/pause", headers=api.operator)
    worker = api.volunteer()
    assert api.client.post("/v1/leases", json={"max_jobs": 2}, headers=worker).json()["jobs"] == []
    api.client.post(f"/v1/campaigns/{campaign['id']}/resume", headers=api.operator)
    assert len(api.client.post("/v1/leases", json={"max_jobs": 2}, headers=worker).json()["jobs"]) == 2


def test_concurrent_leases_never_share_a_job(api: Api) -> None:
    """Threads with their own connections lease at once (row locks on PostgreSQL)."""
    make_campaign(api, problems=30, samples=2)
    principals = []
    for i in range(6):
        with transaction(api.runtime.sessions) as session:
            worker, _ = workers.create(session, f"w{i}", Scope.volunteer)
            principals.append(workers.Principal(worker.id, Scope.volunteer, worker.name))
    leased: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def grab(who: workers.Principal) -> None:
        try:
            for _ in range(4):
                with transaction(api.runtime.sessions) as session:
                    grant = service.lease(session, who, LeaseRequest(max_jobs=5), api.runtime.settings)
                with lock:
                    leased.extend(str(j.spec.job_id) for j in grant.jobs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=grab, args=(p,)) for p in principals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(leased) == len(set(leased)) == 60


def test_release_returns_only_the_callers_leases(api: Api) -> None:
    campaign = make_campaign(api, problems=3, samples=1)
    a, b = api.volunteer("a"), api.volunteer("b")
    jobs = api.client.post("/v1/leases", json={"max_jobs": 3}, headers=a).json()["jobs"]
    ids = [j["lease_id"] for j in jobs]
    stolen = api.client.post("/v1/leases/release", json={"lease_ids": ids}, headers=b).json()
    assert stolen["released"] == []
    mine = api.client.post("/v1/leases/release", json={"lease_ids": ids[:2]}, headers=a).json()
    assert sorted(mine["released"]) == sorted(ids[:2])
    assert progress(api, campaign["id"])["progress"]["queued"] == 2
    again = api.client.post("/v1/leases", json={"max_jobs": 3}, headers=b).json()["jobs"]
    assert len(again) == 2 and not {j["lease_id"] for j in again} & set(ids)


def test_budget_forcing_travels_in_the_job_spec(api: Api) -> None:
    name = "budget-set"
    r = api.client.post(
        "/v1/problem-sets", json={"name": name, "source": "arithmetic", "limit": 1}, headers=api.operator
    )
    budget = {"min_thinking_tokens": 4, "max_thinking_tokens": 40, "max_waits": 2, "think_end": "\\boxed{"}
    body = {
        "name": "budget",
        "problem_set_id": r.json()["id"],
        "model": {"name": "flywheel/tiny-arith"},
        "budget": budget,
    }
    created = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert created.status_code == 201
    shown = api.client.get(f"/v1/campaigns/{created.json()['id']}", headers=api.operator).json()
    assert shown["budget"]["max_thinking_tokens"] == 40 and shown["budget"]["max_waits"] == 2
    job = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=api.volunteer()).json()["jobs"][0]
    assert job["spec"]["budget"]["max_thinking_tokens"] == 40
    assert job["spec"]["budget"]["think_end"] == "\\boxed{"


def _registered(api: Api, dtype: str) -> dict[str, str]:
    body = {"name": f"w-{dtype}", "engine": {"name": "transformers", "dtype": dtype}}
    response = api.client.post("/v1/workers/register", json=body)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}


def test_a_campaign_that_takes_float32_work_only(api: Api) -> None:
    r = api.client.post(
        "/v1/problem-sets", json={"name": "f32", "source": "arithmetic", "limit": 2}, headers=api.operator
    )
    body = {"name": "f32-only", "problem_set_id": r.json()["id"], "model": {"name": "flywheel/tiny-arith"},
            "worker_dtypes": ["float32"]}  # fmt: skip
    created = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert created.status_code == 201, created.text
    assert created.json()["worker_dtypes"] == ["float32"]
    # a bfloat16 engine (registered or said in the lease request) gets none of its jobs
    half = _registered(api, "bfloat16")
    assert api.client.post("/v1/leases", json={"max_jobs": 4}, headers=half).json()["jobs"] == []
    full = _registered(api, "float32")
    said = {"max_jobs": 4, "dtype": "bfloat16"}
    assert api.client.post("/v1/leases", json=said, headers=full).json()["jobs"] == []
    jobs = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=full).json()["jobs"]
    assert len(jobs) == 1
    # a trace that says it was computed in bfloat16 is refused, and its job goes back to the pool
    trace = {**trace_for(jobs[0]), "engine": {"name": "transformers", "dtype": "bfloat16"}}
    acks = api.client.post("/v1/results", json={"results": [trace]}, headers=full).json()["acks"]
    assert acks[0]["status"] == "rejected" and "float32" in acks[0]["reason"]
    again = api.client.post("/v1/leases", json={"max_jobs": 2, "dtype": "float32"}, headers=full).json()[
        "jobs"
    ]
    assert jobs[0]["spec"]["job_id"] in {j["spec"]["job_id"] for j in again}
    trace = {**trace_for(again[0]), "engine": {"name": "transformers", "dtype": "float32"}}
    acks = api.client.post("/v1/results", json={"results": [trace]}, headers=full).json()["acks"]
    assert acks[0]["status"] == "accepted"


def test_worker_dtypes_must_be_known_compute_dtypes(api: Api) -> None:
    r = api.client.post(
        "/v1/problem-sets", json={"name": "dt", "source": "arithmetic", "limit": 1}, headers=api.operator
    )
    for bad in (["int8"], [], ["float32"] * 4):
        body = {"name": "bad", "problem_set_id": r.json()["id"], "model": {"name": "m"}, "worker_dtypes": bad}
        assert api.client.post("/v1/campaigns", json=body, headers=api.operator).status_code == 422
