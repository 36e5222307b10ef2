"""The static-cache decoder (ml/decode.py) and the fused sampler kernel (ml/fused_sampler.py) on the
CPU: the decoder draws exactly the tokens of the transformers engine's plain loop, and the kernel,
run by Triton's interpreter, exactly the tokens of shared/sampling.py. (On CUDA, with graphs and the
compiled kernel: tests/worker/test_worker_gpu.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import make_job

from ml.decode import Batch, StaticDecoder, supports
from shared.assets import TINY_MODEL_NAME
from shared.protocol import BudgetForcing, JobSpec
from worker.engines.hf import TransformersEngine, plain

PROMPTS = ["What is 9081 + 4456?", "What is 347 * 28?", "What is 7 * 6?"]


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return TransformersEngine.load(TINY_MODEL_NAME, device="cpu")


def jobs(n: int) -> list[JobSpec]:
    """Mixed temperatures (greedy too), prompts of different lengths shared by several rows, and
    limits from 1 up, so stops, limits and padding all occur."""
    return [
        make_job(TINY_MODEL_NAME, seed=100 + i, sample_index=i % 4, prompt=PROMPTS[i % 3],
                 temperature=[1.0, 0.7, 0.0, 1.6][i % 4], max_tokens=[1, 2, 30, 48][i % 4])
        for i in range(n)
    ]  # fmt: skip


def batch_of(engine: TransformersEngine, specs: list[JobSpec]) -> Batch:
    rows = [engine._row(job) for job in specs]
    return Batch(
        prompts=[row.prompt for row in rows],
        seeds=[job.sampling.seed for job in specs],
        sample_indices=[job.sample_index for job in specs],
        temperatures=[job.sampling.temperature for job in specs],
        limits=[row.limit for row in rows],
        stops=frozenset(engine.stops),
    )


def test_the_bundled_model_qualifies(engine: TransformersEngine) -> None:
    assert supports(engine.model) is None
    assert engine.decoder is None  # on the CPU the engine keeps its plain loop


def test_static_decoder_draws_the_plain_loops_tokens(engine: TransformersEngine) -> None:
    specs = jobs(11)
    reference = engine.generate(specs)
    decoded = StaticDecoder(engine.model, graphs=False).decode(batch_of(engine, specs))
    assert decoded is not None
    assert [len(t) for t in decoded.tokens][:4] == [1, 2, len(reference[2].completion_token_ids), 48]
    for ref, tokens, logprobs in zip(reference, decoded.tokens, decoded.logprobs, strict=True):
        assert tokens == ref.completion_token_ids
        assert logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert any(ref.finish_reason == "stop" for ref in reference)  # a stop token cut some rows short


def test_the_engine_routes_plain_jobs_to_the_static_decoder(engine: TransformersEngine) -> None:
    specs = jobs(6)
    reference = engine.generate(specs)
    engine.decoder = StaticDecoder(engine.model, graphs=False)
    try:
        static = engine.generate(specs)
        filtered = engine.generate([make_job(TINY_MODEL_NAME, top_p=0.9)])  # the plain loop's
    finally:
        engine.decoder = None
    assert [g.completion_token_ids for g in static] == [g.completion_token_ids for g in reference]
    assert [g.text for g in static] == [g.text for g in reference]
    assert [g.finish_reason for g in static] == [g.finish_reason for g in reference]
    assert len(filtered) == 1


def test_only_unfiltered_unforced_jobs_are_plain() -> None:
    assert plain(make_job(TINY_MODEL_NAME, temperature=0.0))
    assert not plain(make_job(TINY_MODEL_NAME, top_p=0.95))
    assert not plain(make_job(TINY_MODEL_NAME, top_k=5))
    forced = make_job(TINY_MODEL_NAME).model_copy(update={"budget": BudgetForcing(min_thinking_tokens=4)})
    assert not plain(forced)


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from ml.fused_sampler import RowParams, sample_into
    from shared.protocol import SamplingParams
    from shared.sampling import sample_step

    torch.manual_seed(0)
    rows, vocab = 12, 3001  # not a power of two: the last block is partial
    seeds = [1, 2**40 + 7, 3_000_000_000, 5, 9, 2**63 - 1, 0, 11, 12, 13, 14, 15]
    indices = [0, 1, 2**33 + 1, 3, 7, 0, 2**32 - 1, 1, 2, 3, 4, 5]
    temps = [1.0, 0.7, 1.3, 0.0, 2.0, 1.0, 0.05, 1.0, 1.0, 0.3, 0.0, 4.0]
    params = RowParams("cpu", seeds, indices, temps)
    sampling = [SamplingParams(temperature=t) for t in temps]
    for dtype in (torch.bfloat16, torch.float32):
        logits = (torch.randn(rows, vocab) * 4).to(dtype)
        for position in (0, 17, 2**32 + 5):
            tokens = torch.empty(rows, dtype=torch.int64)
            logprobs = torch.empty(rows, dtype=torch.float64)
            sample_into(logits, params, torch.tensor([position]), tokens, logprobs)
            want, want_lp = sample_step(torch, logits, seeds, indices, [position] * rows, sampling)
            assert tokens.tolist() == want.tolist(), (dtype, position, tokens.tolist(), want.tolist())
            assert (logprobs - want_lp).abs().max().item() < 1e-12
    print("kernel matches")
    """
)


def test_the_fused_kernel_draws_the_reference_samplers_tokens() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # read when the kernel module is imported
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kernel matches" in done.stdout
