"""A campaign that names its compute dtypes refuses a trace claiming another one (docs/protocol.md,
"Acks"; docs/trust.md): the ack is `rejected` with the documented reason, nothing is stored, and
the job goes straight back to the pool for a worker the campaign accepts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from coordinator.db import transaction
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, trace_for


def _campaign(api: Api, dtypes: list[str] | None) -> str:
    r = api.client.post(
        "/v1/problem-sets", json={"name": uuid.uuid4().hex[:8], "source": "arithmetic", "limit": 1},
        headers=api.operator,
    )  # fmt: skip
    body: dict[str, Any] = {"name": uuid.uuid4().hex[:8], "problem_set_id": r.json()["id"],
                            "model": {"name": "flywheel/tiny-arith"}, "samples_per_problem": 1}  # fmt: skip
    if dtypes is not None:
        body["worker_dtypes"] = dtypes
    created = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _lease(api: Api, worker: dict[str, str], dtype: str) -> list[dict[str, Any]]:
    r = api.client.post("/v1/leases", json={"max_jobs": 4, "dtype": dtype}, headers=worker)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


def _submit_claiming(
    api: Api, worker: dict[str, str], job: dict[str, Any], dtype: str | None
) -> dict[str, Any]:
    trace = trace_for(job, text=answer_of(api, job))
    if dtype is not None:
        trace["engine"] = {"name": "transformers", "dtype": dtype}
    r = api.client.post("/v1/results", json={"results": [trace]}, headers=worker)
    assert r.status_code == 200, r.text
    ack: dict[str, Any] = r.json()["acks"][0]
    return ack


def _traces(api: Api) -> int:
    with transaction(api.runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Trace)) or 0)


@pytest.mark.parametrize(
    ("claimed", "shown"),
    [("float16", "float16"), ("float64", "float64"), (None, "an unnamed dtype"), ("", "an unnamed dtype")],
)
def test_a_trace_in_a_refused_dtype_is_rejected_and_its_job_leased_again_at_once(
    api: Api, claimed: str | None, shown: str
) -> None:
    """The worker leased as float32 but its engine computed in another dtype (or named none)."""
    _campaign(api, ["float32", "bfloat16"])
    liar = api.volunteer("liar")
    [job] = _lease(api, liar, "float32")

    ack = _submit_claiming(api, liar, job, claimed)
    assert ack["status"] == "rejected", ack
    assert ack["reason"] == f"this campaign takes work computed in bfloat16 or float32, not {shown}"
    assert _traces(api) == 0
    # Back in the pool now, not after the lease expires: an honest float32 worker gets the same job.
    [again] = _lease(api, api.volunteer("honest"), "float32")
    assert again["spec"]["job_id"] == job["spec"]["job_id"]


def test_a_trace_in_an_accepted_dtype_is_stored(api: Api) -> None:
    _campaign(api, ["float32", "bfloat16"])
    worker = api.volunteer()
    [job] = _lease(api, worker, "bfloat16")
    ack = _submit_claiming(api, worker, job, "bfloat16")
    assert ack["status"] == "accepted", ack
    assert _traces(api) == 1


def test_a_campaign_naming_no_dtype_takes_a_trace_in_any(api: Api) -> None:
    _campaign(api, None)
    worker = api.volunteer()
    [job] = _lease(api, worker, "float16")
    assert _submit_claiming(api, worker, job, "float16")["status"] == "accepted"
    assert _traces(api) == 1


def test_the_refusal_is_per_campaign_within_one_batch(api: Api) -> None:
    """One batch holding jobs of a float32-only campaign and of a free one: only the first is refused."""
    strict, free = _campaign(api, ["float32"]), _campaign(api, None)
    worker = api.volunteer()
    jobs = _lease(api, worker, "float32")
    assert {j["spec"]["campaign_id"] for j in jobs} == {strict, free}
    traces = [trace_for(j, text=answer_of(api, j)) | {"engine": {"name": "transformers", "dtype": "float16"}}
              for j in jobs]  # fmt: skip
    acks = api.client.post("/v1/results", json={"results": traces}, headers=worker).json()["acks"]
    by_campaign = {j["spec"]["campaign_id"]: a["status"] for j, a in zip(jobs, acks, strict=True)}
    assert by_campaign == {strict: "rejected", free: "accepted"}
    assert _traces(api) == 1
