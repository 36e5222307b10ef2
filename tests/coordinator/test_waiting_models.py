"""`GET /v1/models/waiting`: the models with jobs a lease could take now, for workers that pick their
own work."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from coordinator.db import transaction, utcnow
from coordinator.jobs.models import Job
from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign

WAITING = "/v1/models/waiting"


def waiting(api: Api, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    response = api.client.get(WAITING, headers=headers, params=query)
    assert response.status_code == 200, response.text
    models: list[dict[str, Any]] = response.json()["models"]
    return models


def test_lists_models_with_leasable_jobs_most_first_with_the_tiny_models_size(api: Api) -> None:
    volunteer = api.volunteer()
    assert waiting(api, volunteer) == []
    make_campaign(api, problems=2, samples=2)
    make_campaign(api, problems=1, samples=2)
    make_campaign(api, problems=3, samples=2, model="acme/unknown-model")
    listed = waiting(api, volunteer)
    assert [(m["name"], m["queued_jobs"]) for m in listed] == [
        ("acme/unknown-model", 6),
        (TINY_MODEL_NAME, 6),
    ]
    unknown, tiny = listed
    # a model whose config the coordinator does not hold has no size; the bundled one has its own
    assert unknown["parameters"] is None and unknown["size_bytes"] is None
    assert tiny["size_bytes"] == (tiny_model_dir() / "model.safetensors").stat().st_size
    # float32 weights: four bytes a parameter; the estimate leaves out only norms and biases
    assert 0.97 < tiny["parameters"] * 4 / tiny["size_bytes"] <= 1.0
    assert tiny["base_model"] is None and tiny["revision"] is None


def test_leased_and_finished_jobs_and_paused_campaigns_are_not_waiting(api: Api) -> None:
    volunteer = api.volunteer()
    campaign = make_campaign(api, problems=2, samples=2)
    jobs = api.client.post("/v1/leases", json={"max_jobs": 3}, headers=volunteer).json()["jobs"]
    assert len(jobs) == 3
    assert [m["queued_jobs"] for m in waiting(api, volunteer)] == [1]
    api.client.post("/v1/leases", json={"max_jobs": 1}, headers=volunteer)
    assert waiting(api, volunteer) == []  # the campaign drained: all its jobs are leased
    with transaction(api.runtime.sessions) as session:  # expired leases count again: a lease takes them
        session.execute(update(Job).values(lease_deadline=utcnow() - timedelta(seconds=1)))
    assert [m["queued_jobs"] for m in waiting(api, volunteer)] == [4]
    paused = api.client.post(f"/v1/campaigns/{campaign['id']}/pause", headers=api.operator)
    assert paused.status_code == 200, paused.text
    assert waiting(api, volunteer) == []


def test_dtype_keeps_only_campaigns_that_take_its_work(api: Api) -> None:
    r = api.client.post(
        "/v1/problem-sets", json={"name": "f32", "source": "arithmetic", "limit": 2}, headers=api.operator
    )
    body = {"name": "f32-only", "problem_set_id": r.json()["id"], "model": {"name": TINY_MODEL_NAME},
            "worker_dtypes": ["float32"]}  # fmt: skip
    assert api.client.post("/v1/campaigns", json=body, headers=api.operator).status_code == 201
    volunteer = api.volunteer()
    assert [m["queued_jobs"] for m in waiting(api, volunteer, dtype="float32")] == [2]
    assert waiting(api, volunteer, dtype="bfloat16") == []
    assert [m["queued_jobs"] for m in waiting(api, volunteer)] == [2]


def test_needs_a_token(api: Api) -> None:
    assert api.client.get(WAITING).status_code == 401
    assert api.client.get(WAITING, headers={"Authorization": "Bearer nope"}).status_code == 401
