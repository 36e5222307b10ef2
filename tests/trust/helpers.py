"""Jobs and claims for the trust tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from coordinator.db import transaction
from coordinator.trust.tasks import requeue_stale
from coordinator.trust.validator import Submitted, validate
from coordinator.workers.models import Worker
from coordinator.workers.service import hash_token
from ml.scorer import Scorer
from shared.assets import TINY_MODEL_NAME
from shared.protocol import BudgetForcing, ChatMessage, JobSpec, ModelRef, SamplingParams
from shared.trust_types import Outcome
from tests.coordinator.conftest import Api
from worker.engines.base import Generation
from worker.engines.hf import TransformersEngine

PROBLEMS = ["What is 9081 + 4456?", "What is 347 * 28?", "What is 77 * 64?", "What is 6024 - 3517?"]


def make_job(
    seed: int,
    prompt: str = PROBLEMS[0],
    sample_index: int = 0,
    budget: BudgetForcing | None = None,
    **sampling: float,
) -> JobSpec:
    params = {"temperature": 1.0, "max_tokens": 96, "seed": seed, **sampling}
    return JobSpec(
        job_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        problem_id="p",
        messages=[ChatMessage(role="user", content=prompt)],
        model=ModelRef(name=TINY_MODEL_NAME),
        sampling=SamplingParams.model_validate(params),
        sample_index=sample_index,
        samples_per_problem=8,
        budget=budget,
    )


def claim(job: JobSpec, gen: Generation, dtype: str = "float32", **changes: Any) -> Submitted:
    fields: dict[str, Any] = {
        "spec": job,
        "tokens": list(gen.completion_token_ids),
        "logprobs": list(gen.logprobs),
        "finish_reason": gen.finish_reason.value,
        "text": gen.text,
        "worker_dtype": dtype,
    }
    return Submitted(**{**fields, **changes})


def outcomes(validator: Scorer, claims: Sequence[Submitted], eps: float | None = None) -> list[Outcome]:
    return [checked.outcome for checked in validate(validator, claims, eps)]


# --------------------------------------------------------------------------- through the coordinator


def lease(api: Api, worker: dict[str, str], n: int) -> list[dict[str, Any]]:
    response = api.client.post("/v1/leases", json={"max_jobs": n}, headers=worker)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def submission(
    leased: dict[str, Any], gen: Generation, dtype: str = "float32", **changes: Any
) -> dict[str, Any]:
    body = {
        "lease_id": leased["lease_id"],
        "attempt_id": str(uuid.uuid4()),
        "job_id": leased["spec"]["job_id"],
        "text": gen.text,
        "completion_token_ids": gen.completion_token_ids,
        "logprobs": gen.logprobs,
        "finish_reason": gen.finish_reason.value,
        "engine": {"name": "transformers", "dtype": dtype, "device": "cpu"},
    }
    return {**body, **changes}


def generate(engine: TransformersEngine, leased: Sequence[dict[str, Any]]) -> list[Generation]:
    return engine.generate([JobSpec.model_validate(j["spec"]) for j in leased])


def submit(api: Api, worker: dict[str, str], results: list[dict[str, Any]]) -> list[str]:
    response = api.client.post("/v1/results", json={"results": results}, headers=worker)
    assert response.status_code == 200, response.text
    return [ack["status"] for ack in response.json()["acks"]]


def settle(api: Api) -> None:
    """Run every verification and validation to the end, with the sweeper's pass in between (it
    also finds decisions no hook made)."""
    for _ in range(6):
        api.drain()
        if requeue_stale(api.runtime, older_than_s=0) == 0:
            api.drain()
            return
    raise AssertionError("validation did not settle")


def worker_id(api: Api, worker: dict[str, str]) -> str:
    token = worker["Authorization"].removeprefix("Bearer ")
    with transaction(api.runtime.sessions) as session:
        found = session.scalar(select(Worker.id).where(Worker.token_hash == hash_token(token)))
    assert found is not None
    return str(found)


def trust_record(api: Api, wid: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/workers/{wid}/trust", headers=api.operator)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def job_key(leased: dict[str, Any]) -> tuple[str, int]:
    return leased["spec"]["problem_id"], int(leased["spec"]["sample_index"])


def exported(api: Api, campaign_id: str) -> set[tuple[str, int]]:
    """(problem, sample index) of the campaign's traces in a dump, whatever their verdict."""
    url = f"/v1/datasets/{campaign_id}/export?format=jsonl&status=accepted&status=rejected"
    response = api.client.get(url, headers=api.researcher)
    assert response.status_code == 200, response.text
    rows = [json.loads(line) for line in response.text.splitlines()]
    return {(row["problem_id"], int(row["sample_index"])) for row in rows}


def set_floor(api: Api, floor: float) -> None:
    """Change the spot-check floor of a running coordinator (tasks read it from the runtime)."""
    api.runtime.settings = api.runtime.settings.model_copy(update={"validation_floor": floor})
