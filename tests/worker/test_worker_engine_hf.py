"""The transformers engine on a tiny Qwen2: seeded decode loop, batching, re-scoring by prefill."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import make_job

from shared.protocol import FinishReason, JobSpec
from shared.sampling import filtered_logprobs, gumbel_noise
from worker.engines.base import Engine, Generation
from worker.engines.hf import TransformersEngine
from worker.engines.prompt import prompt_token_ids


@pytest.fixture(scope="module")
def engine(tiny_model: str) -> Iterator[TransformersEngine]:
    loaded = TransformersEngine.load(tiny_model, device="cpu")
    yield loaded
    loaded.close()


def rescore(engine: TransformersEngine, job: JobSpec, generation: Generation) -> tuple[float, list[float]]:
    """What a validator does: one prefill of prompt + completion, then check each claimed token.

    Returns the worst margin by which a claimed token fell short of the perturbed argmax (0 when
    every token is the argmax) and the recomputed logprobs.
    """
    prompt = prompt_token_ids(engine.tokenizer, job.messages)
    ids = torch.tensor([prompt + generation.completion_token_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    n = len(generation.completion_token_ids)
    sampling = [job.sampling] * n
    logprobs = filtered_logprobs(torch, logits, sampling)
    noise = gumbel_noise(
        torch, [job.sampling.seed] * n, [job.sample_index] * n, list(range(n)), torch.arange(logits.shape[-1])
    )
    scores = logprobs + (noise if job.sampling.temperature > 0 else 0)
    claimed = torch.tensor(generation.completion_token_ids)
    margin = (scores.max(dim=-1).values - scores[torch.arange(n), claimed]).max().item()
    return margin, logprobs[torch.arange(n), claimed].tolist()


def test_engine_satisfies_the_protocol(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    assert (
        engine.info.name == "transformers" and engine.info.dtype == "float32" and engine.info.device == "cpu"
    )


def test_generation_passes_prefill_rescoring(engine: TransformersEngine) -> None:
    jobs = [
        make_job(engine.model_name, seed=11, temperature=1.0),
        make_job(engine.model_name, seed=12, temperature=0.7, top_k=20, prompt="Compute 7 * 8."),
        make_job(engine.model_name, seed=13, temperature=1.3, top_p=0.9, sample_index=3, max_tokens=7),
        make_job(engine.model_name, seed=14, temperature=0.0, max_tokens=5),
    ]
    generations = engine.generate(jobs)
    assert len(generations) == len(jobs)
    for job, gen in zip(jobs, generations, strict=True):
        assert 1 <= len(gen.completion_token_ids) <= job.sampling.max_tokens
        assert len(gen.logprobs) == len(gen.completion_token_ids)
        assert gen.prompt_tokens == len(prompt_token_ids(engine.tokenizer, job.messages))
        assert gen.finish_reason in (FinishReason.stop, FinishReason.length)
        if gen.finish_reason is FinishReason.length:
            assert len(gen.completion_token_ids) == job.sampling.max_tokens
        margin, logprobs = rescore(engine, job, gen)
        assert margin < 1e-4  # batched decode vs one prefill: float noise only
        assert logprobs == pytest.approx(gen.logprobs, abs=1e-4)


# An out-of-distribution prompt at a high temperature keeps even a trained model uncertain.
ODD_PROMPT = "zq xv ## ?? 7 ~"


def test_same_seed_same_tokens_other_seed_other_tokens(engine: TransformersEngine) -> None:
    name = engine.model_name
    first = engine.generate([make_job(name, seed=5, prompt=ODD_PROMPT, temperature=1.5)])[0]
    again = engine.generate([make_job(name, seed=5, prompt=ODD_PROMPT, temperature=1.5)])[0]
    others = engine.generate(
        [make_job(name, seed=s, prompt=ODD_PROMPT, temperature=1.5) for s in range(6, 14)]
    )
    assert first.completion_token_ids == again.completion_token_ids
    assert first.logprobs == pytest.approx(again.logprobs, abs=1e-6)
    assert any(o.completion_token_ids != first.completion_token_ids for o in others)


def test_batching_does_not_change_the_tokens(engine: TransformersEngine) -> None:
    name = engine.model_name
    jobs = [
        make_job(name, seed=s, prompt=p) for s, p in [(1, "hi"), (2, "What is 12 + 30? Think."), (3, "1+1")]
    ]
    together = engine.generate(jobs)
    alone = [engine.generate([job])[0] for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert a.completion_token_ids == b.completion_token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_should_stop_abandons_the_batch(engine: TransformersEngine) -> None:
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    assert engine.generate([make_job(engine.model_name, max_tokens=50)], should_stop=stop_after_three) == []
    assert len(calls) == 4


def test_stop_token_ends_the_completion_and_stays_out_of_the_text(engine: TransformersEngine) -> None:
    job = make_job(engine.model_name, seed=21, max_tokens=12, prompt=ODD_PROMPT, temperature=1.5)
    free = engine.generate([job])[0]
    stop = free.completion_token_ids[len(free.completion_token_ids) // 2]
    stopping = TransformersEngine(engine.model, engine.tokenizer, engine.model_name, "cpu")
    stopping.stops = {stop}
    gen = stopping.generate([job])[0]
    cut = free.completion_token_ids.index(stop) + 1
    assert gen.finish_reason is FinishReason.stop
    assert gen.completion_token_ids == free.completion_token_ids[:cut]
    assert gen.text == engine.tokenizer.decode(free.completion_token_ids[: cut - 1], skip_special_tokens=True)


@pytest.mark.gpu
def test_cuda_bf16_generation_is_seeded_and_rescorable(tiny_model: str) -> None:
    gpu = TransformersEngine.load(tiny_model, device="cuda")
    assert gpu.info.dtype == "bfloat16" and gpu.info.device == "cuda"
    jobs = [
        make_job(tiny_model, seed=s, top_k=50, max_tokens=10, prompt=ODD_PROMPT, temperature=1.5)
        for s in (1, 1, *range(2, 10))
    ]
    first, again, *others = gpu.generate(jobs)
    assert first.completion_token_ids == again.completion_token_ids
    assert any(o.completion_token_ids != first.completion_token_ids for o in others)
    prompt = prompt_token_ids(gpu.tokenizer, jobs[0].messages)
    ids = torch.tensor([prompt + first.completion_token_ids], device="cuda")
    with torch.inference_mode():
        logits = gpu.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    n = len(first.completion_token_ids)
    scores = filtered_logprobs(torch, logits, [jobs[0].sampling] * n) + gumbel_noise(
        torch, [1] * n, [0] * n, list(range(n)), torch.arange(logits.shape[-1], device="cuda")
    )
    claimed = torch.tensor(first.completion_token_ids, device="cuda")
    margin = scores.max(dim=-1).values - scores[torch.arange(n, device="cuda"), claimed]
    assert margin.max().item() < 0.1  # bf16: batched decode and one prefill differ a little more
