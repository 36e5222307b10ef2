"""On a CUDA GPU (run through the device tool, never in CI): batches sized from free memory
within --gpu-memory-fraction, and budget forcing that a validator re-derives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_random_tiny_model, make_job
from test_worker_budget import PROBLEMS, rederive

from ml.devices import cap_gpu_memory
from shared.protocol import MAX_BATCH, BudgetForcing
from worker.engines.hf import TransformersEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GIB = 1024**3


def wide_model(tmp_path: Path) -> TransformersEngine:
    """A random Qwen2 whose KV cache is large per token, so memory, not the ceiling, bounds batches."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = build_random_tiny_model(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2048, num_hidden_layers=16,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
    )  # fmt: skip
    # transformers wraps `.to` in a decorator whose type mypy reads as unbound
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()  # type: ignore[arg-type]
    engine = TransformersEngine(model, tokenizer, "wide", "cuda")
    engine.stops = set()  # random weights: no row may end early, every row uses its full budget
    return engine


def test_batches_fit_the_memory_cap(tmp_path: Path) -> None:
    engine = wide_model(tmp_path)
    total = torch.cuda.get_device_properties(0).total_memory
    jobs = [make_job("wide", seed=s, max_tokens=1024, prompt="1+1") for s in range(MAX_BATCH)]
    fraction = (torch.cuda.memory_allocated() + 2 * GIB) / total
    engine.memory_fraction = fraction
    cap_gpu_memory(fraction)
    try:
        rows = engine.max_batch(jobs)
        engine.memory_fraction = (torch.cuda.memory_allocated() + 1 * GIB) / total
        fewer = engine.max_batch(jobs)
        engine.memory_fraction = fraction
        assert 1 < fewer < rows < MAX_BATCH
        torch.cuda.reset_peak_memory_stats()
        generations = engine.generate(jobs[:rows])  # would raise CUDA out-of-memory past the cap
        assert all(len(g.completion_token_ids) == 1024 for g in generations)
        assert torch.cuda.max_memory_allocated() <= fraction * total
    finally:
        cap_gpu_memory(1.0)


def test_budget_forcing_on_cuda_rederives_from_one_prefill(tiny_model: str) -> None:
    engine = TransformersEngine.load(tiny_model, device="cuda", dtype="float32")
    budgets = [
        BudgetForcing(think_end="\\", min_thinking_tokens=60, max_waits=2),
        BudgetForcing(think_end="\\boxed{", max_thinking_tokens=9),
    ]
    jobs = [
        make_job(tiny_model, seed=70 + i, prompt=p, max_tokens=90, top_k=40).model_copy(update={"budget": b})
        for b in budgets
        for i, p in enumerate(PROBLEMS)
    ]
    for job, generation in zip(jobs, engine.generate(jobs), strict=True):
        rederive(engine, job, generation)


def test_the_fused_sampler_kernel_matches_the_cpu_reference_bit_for_bit() -> None:
    """The compiled kernel (no FMA contraction) against shared/sampling.py on the CPU, on a real
    vocabulary's width in bfloat16: the same token in every row at every position."""
    from ml.fused_sampler import RowParams, sample_into
    from shared.protocol import SamplingParams
    from shared.sampling import sample_step

    rows, vocab = 64, 151_936
    torch.manual_seed(0)
    logits = (torch.randn(rows, vocab, device="cuda") * 4).to(torch.bfloat16)
    seeds = [7_000 + 13 * i + (i % 3) * 2**40 for i in range(rows)]
    indices = [i % 8 for i in range(rows)]
    temps = [[1.0, 0.7, 0.0, 1.3][i % 4] for i in range(rows)]
    params = RowParams("cuda", seeds, indices, temps)
    sampling = [SamplingParams(temperature=t) for t in temps]
    for position in (0, 255, 2**32 + 3):
        tokens = torch.empty(rows, dtype=torch.int64, device="cuda")
        logprobs = torch.empty(rows, dtype=torch.float64, device="cuda")
        sample_into(logits, params, torch.tensor([position], device="cuda"), tokens, logprobs)
        want, want_lp = sample_step(torch, logits.cpu(), seeds, indices, [position] * rows, sampling)
        assert tokens.cpu().tolist() == want.tolist()
        assert (logprobs.cpu() - want_lp).abs().max().item() < 1e-9


def test_graph_captured_static_decoding_draws_the_plain_loops_tokens(tiny_model: str) -> None:
    engine = TransformersEngine.load(tiny_model, device="cuda", dtype="float32")
    assert engine.decoder is not None and engine.decoder.graphs
    specs = [
        make_job(tiny_model, seed=50 + i, sample_index=i % 4, prompt=PROBLEMS[i % len(PROBLEMS)],
                 temperature=[1.0, 0.0, 0.7][i % 3], max_tokens=[8, 40, 64][i % 3])
        for i in range(40)
    ]  # fmt: skip
    static = engine.generate(specs)
    again = engine.generate(specs)  # a replay of the captured graph, on fresh prompts' state
    engine.decoder = None
    reference = engine.generate(specs)
    for got, second, want in zip(static, again, reference, strict=True):
        assert got.completion_token_ids == want.completion_token_ids == second.completion_token_ids
        assert got.finish_reason == want.finish_reason
