"""A trace sampled with stock vLLM's noise (Model Runner V2's seeded Gumbel-max) and named so in its
engine info validates through the coordinator's own validation task; the same tokens claimed under
Flywheel's noise fail it."""

from __future__ import annotations

from typing import Any

from ml.scorer import Scorer
from shared.protocol import NOISE_VLLM_GUMBEL, JobSpec
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign
from tests.trust.helpers import lease, settle, submit, trust_record, worker_id
from tests.trust.test_trust_vllm_noise import sample_vllm_style


def _claim(validator: Scorer, leased: dict[str, Any], noise: str | None) -> dict[str, Any]:
    spec = JobSpec.model_validate(leased["spec"])
    prompt = validator.prompt_ids(spec.messages)
    claim = sample_vllm_style(validator, prompt, spec.sampling, spec.sample_index)
    engine: dict[str, Any] = {"name": "vllm", "dtype": "float32", "device": "cpu"}
    if noise is not None:
        engine["noise"] = noise
    return {
        "lease_id": leased["lease_id"],
        "attempt_id": leased["lease_id"],
        "job_id": spec.job_id.hex,
        "text": validator.tokenizer.decode(list(claim.tokens)),
        "completion_token_ids": list(claim.tokens),
        "logprobs": list(claim.logprobs),
        "finish_reason": claim.finish_reason,
        "engine": engine,
    }


def _state_after(api: Api, validator: Scorer, noise: str | None) -> str:
    make_campaign(api, problems=1, samples=1, max_tokens=24)
    worker = api.volunteer()
    [leased] = lease(api, worker, 1)
    assert submit(api, worker, [_claim(validator, leased, noise)]) == ["accepted"]
    settle(api)
    return str(trust_record(api, worker_id(api, worker))["state"])


def test_a_trace_under_vllms_noise_validates(trust_api: Api, validator: Scorer) -> None:
    assert _state_after(trust_api, validator, NOISE_VLLM_GUMBEL) == "active"
    record = trust_api.client.get("/v1/trust/validations?status=passed", headers=trust_api.operator)
    assert len(record.json()) == 1


def test_the_same_tokens_claimed_under_flywheels_noise_fail(trust_api: Api, validator: Scorer) -> None:
    assert _state_after(trust_api, validator, None) == "quarantined"
