"""The vLLM engine on vLLM's own sampler, with vLLM absent: which releases take that path, the
requests it builds, and how it reads vLLM's output back."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import make_job

from coordinator.trust.policy import tolerance
from ml.rescore import Claim, JobRules, rescore
from ml.scorer import scorer
from shared import vllm_gumbel
from shared.assets import resolve_model
from shared.protocol import NOISE_VLLM_GUMBEL, BudgetForcing, EngineInfo
from worker.engines import vllm as vllm_engine
from worker.engines.vllm import (
    VllmEngine,
    check_runner,
    native_logprobs,
    native_noise,
    native_request,
    runner_args,
    runner_env,
)
from worker.errors import EngineError


@pytest.mark.parametrize(
    ("version", "scheme"),
    [
        ("0.26.0", NOISE_VLLM_GUMBEL),
        ("0.26.3", NOISE_VLLM_GUMBEL),
        ("0.25.1", None),
        ("0.27.0", None),
        ("1.26.0", None),
        ("", None),
        ("dev", None),
    ],
)
def test_only_checked_releases_sample_natively(version: str, scheme: str | None) -> None:
    assert native_noise(version) == scheme


def test_the_native_path_runs_model_runner_v2_without_processors() -> None:
    assert runner_env(NOISE_VLLM_GUMBEL)["VLLM_USE_V2_MODEL_RUNNER"] == "1"
    assert runner_env(None)["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    # vLLM's own sampler needs nothing of this process: vLLM keeps its usual engine-core process
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in runner_env(NOISE_VLLM_GUMBEL)
    assert runner_env(None)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    args = runner_args(NOISE_VLLM_GUMBEL)
    assert args == {"logprobs_mode": "processed_logprobs", "use_fp64_gumbel": False}


def test_an_engine_off_model_runner_v2_is_refused_on_the_native_path() -> None:
    def llm(v2: bool) -> SimpleNamespace:
        return SimpleNamespace(
            llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(use_v2_model_runner=v2))
        )

    check_runner(llm(True), NOISE_VLLM_GUMBEL)
    check_runner(llm(False), None)
    with pytest.raises(EngineError):
        check_runner(llm(False), NOISE_VLLM_GUMBEL)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_processor_path_needs_vllm() -> None:
    with pytest.raises(EngineError):
        runner_args(None)


def test_native_requests_carry_the_jobs_sampling_and_its_samples_seed() -> None:
    stops = frozenset({2, 7})
    job = make_job("m", seed=99, sample_index=3, temperature=0.7, top_p=0.9, top_k=40, max_tokens=20)
    request = native_request(job, stops)
    assert request == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "seed": vllm_gumbel.request_seed(99, 3),
        "max_tokens": 20,
        "stop_token_ids": [2, 7],
        "skip_special_tokens": True,
        "logprobs": 0,
    }
    other = native_request(make_job("m", seed=99, sample_index=4), stops)
    assert other["seed"] != request["seed"]  # samples of one problem draw different noise


def test_greedy_native_requests_drop_the_filters() -> None:
    request = native_request(make_job("m", temperature=0.0, top_p=0.5, top_k=3), frozenset({2}))
    assert (request["temperature"], request["top_p"], request["top_k"]) == (0.0, 1.0, 0)


def completion(tokens: list[int], logprobs: list[float] | None) -> SimpleNamespace:
    entries = None
    if logprobs is not None:
        entries = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logprobs, strict=True)]
    return SimpleNamespace(token_ids=tokens, logprobs=entries, text="x", finish_reason="stop")


def test_logprobs_are_read_from_vllms_sampler() -> None:
    assert native_logprobs(completion([5, 2], [-0.5, -1.25]), [5, 2]) == [-0.5, -1.25]
    with pytest.raises(EngineError):
        native_logprobs(completion([5, 2], None), [5, 2])


class StandInLLM:
    """What VllmEngine reads from a `vllm.LLM` at construction: its tokenizer and model config."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(dtype="torch.bfloat16"))

    def get_tokenizer(self) -> Any:
        return self.tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(tiny_model))


def test_a_native_engine_names_its_scheme_and_gives_back_budget_jobs(tokenizer: Any) -> None:
    native = VllmEngine(StandInLLM(tokenizer), "m", NOISE_VLLM_GUMBEL)
    assert native.info.noise == NOISE_VLLM_GUMBEL
    assert EngineInfo.model_validate_json(native.info.model_dump_json()) == native.info
    budget = make_job("m").model_copy(update={"budget": BudgetForcing(min_thinking_tokens=4)})
    assert native.unsupported(budget) is not None
    assert native.unsupported(make_job("m")) is None
    job = make_job("m", seed=5, sample_index=1)
    assert native._request(job, "key") == native_request(job, native.stops)
    output = SimpleNamespace(outputs=[completion([9, 2], [-0.1, -0.2])], prompt_token_ids=[1, 2, 3])
    generation = native._generation(output, "key", 1.0)
    assert (generation.completion_token_ids, generation.logprobs) == ([9, 2], [-0.1, -0.2])


def test_a_processor_engine_keeps_todays_scheme(tokenizer: Any) -> None:
    plain = VllmEngine(StandInLLM(tokenizer), "m")
    assert plain.info.noise is None
    budget = make_job("m").model_copy(update={"budget": BudgetForcing(min_thinking_tokens=4)})
    assert plain.unsupported(budget) is None
    request = plain._request(make_job("m"), "key")
    assert request["temperature"] == 0.0 and vllm_engine.EXTRA_KEY in request["extra_args"]


def test_the_first_token_is_sampled_at_the_prompts_last_position() -> None:
    # vLLM samples from the logits of the last input token: the prompt's last, then each output
    assert [vllm_gumbel.noise_position(5, k) for k in range(3)] == [4, 5, 6]


needs_vllm_gpu = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a GPU"
)


@needs_vllm_gpu
@pytest.mark.gpu
def test_traces_of_vllms_own_sampler_validate(tiny_model: str) -> None:
    engine = VllmEngine.load(tiny_model, gpu_memory_utilization=0.3)
    try:
        if engine.noise is None:
            pytest.skip(f"vLLM {engine.info.version} samples through the logits processor")
        settings: list[dict[str, float]] = [
            {"temperature": 1.0},
            {"temperature": 0.7, "top_p": 0.9},
            {"temperature": 1.0, "top_k": 5},
            {"temperature": 0.0},
        ]
        jobs = [
            make_job(tiny_model, seed=s, sample_index=s % 3, max_tokens=16, **settings[s % len(settings)])
            for s in range(12)
        ]
        generations = engine.generate(jobs)
        dtype = engine.info.dtype
    finally:
        engine.close()
    validator = scorer(tiny_model, None, "cuda", "float32")
    for job, generation in zip(jobs, generations, strict=True):
        prompt = validator.prompt_ids(job.messages)
        tokens = list(generation.completion_token_ids)
        logits = validator.completion_logits([prompt], [tokens])[0]
        rules = JobRules(
            sampling=job.sampling,
            sample_index=job.sample_index,
            limit=job.sampling.max_tokens,
            stops=validator.stops,
            noise=NOISE_VLLM_GUMBEL,
            prompt_tokens=len(prompt),
        )
        claimed = Claim(tokens, generation.logprobs, generation.finish_reason.value)
        outcome = rescore(logits, rules, claimed, tolerance(dtype, "float32"))
        assert outcome.passed, (job.sampling, outcome)
