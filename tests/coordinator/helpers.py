from __future__ import annotations

import uuid
from typing import Any

from tests.coordinator.conftest import Api


def make_campaign(
    api: Api, problems: int = 4, samples: int = 2, max_tokens: int = 64, model: str = "flywheel/tiny-arith"
) -> dict[str, Any]:
    name = uuid.uuid4().hex[:8]
    r = api.client.post(
        "/v1/problem-sets",
        json={"name": f"set-{name}", "source": "arithmetic", "limit": problems},
        headers=api.operator,
    )
    assert r.status_code == 201, r.text
    r = api.client.post(
        "/v1/campaigns",
        json={
            "name": f"campaign-{name}",
            "problem_set_id": r.json()["id"],
            "model": {"name": model},
            "samples_per_problem": samples,
            "sampling": {"max_tokens": max_tokens, "temperature": 1.0},
        },
        headers=api.operator,
    )
    assert r.status_code == 201, r.text
    campaign: dict[str, Any] = r.json()
    return campaign


def trace_for(job: dict[str, Any], text: str = "so \\boxed{0}", tokens: int = 3) -> dict[str, Any]:
    return {
        "lease_id": job["lease_id"],
        "attempt_id": str(uuid.uuid4()),
        "job_id": job["spec"]["job_id"],
        "text": text,
        "completion_token_ids": list(range(1, tokens + 1)),
        "logprobs": [-0.5] * tokens,
        "finish_reason": "stop",
        "engine": {"name": "transformers"},
    }


def answer_of(api: Api, job: dict[str, Any]) -> str:
    """The correct answer for an arithmetic job, computed from its prompt (tests only)."""
    prompt = job["spec"]["messages"][-1]["content"]
    a, op, b = prompt.removeprefix("What is ").removesuffix("?").split()
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    return f"The result is \\boxed{{{value}}}"


def progress(api: Api, campaign_id: str) -> dict[str, Any]:
    r = api.client.get(f"/v1/campaigns/{campaign_id}", headers=api.operator)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
