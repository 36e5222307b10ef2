"""vLLM's Model Runner V2 noise (shared/vllm_gumbel.py): Philox against its published vectors, the
uniform and G against a slow reference written from the algorithm, numpy against torch, and the
validator replaying traces sampled under it on the bundled model."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from ml.rescore import Claim, JobRules, rescore
from ml.scorer import Scorer
from shared import vllm_gumbel
from shared.budget import BudgetState
from shared.protocol import NOISE_VLLM_GUMBEL, BudgetForcing, SamplingParams
from tests.trust.helpers import PROBLEMS

# Random123's known-answer vectors (kat_vectors, 10 rounds): (counter, key, output).
PHILOX_4X32 = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
PHILOX_4X64 = [
    ((0, 0, 0, 0), (0, 0), (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B)),
    (
        ((1 << 64) - 1,) * 4,
        ((1 << 64) - 1,) * 2,
        (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0),
    ),
    (
        (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
        (0x452821E638D01377, 0xBE5466CF34E90C6C),
        (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6),
    ),
]
ROWS = [(0, 0), (1, 7), (2**63 - 1, 2**40), (123456789, 4095)]  # (request seed, position)


def f32(x: float) -> float:
    """Round a double to the nearest float32 (struct's packing rounds to nearest)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def reference_uniform(seed: int, position: int, token: int) -> float:
    """The uniform, step by step from the algorithm, in Python integers and doubles."""
    # tl.randint(seed, position): an int64 offset and seed split into 32-bit counter and key words
    mask = 0xFFFFFFFF
    key = vllm_gumbel.philox(32, (position & mask, position >> 32, 0, 0), (seed & mask, seed >> 32))[0]
    # tl.rand(key, token): a uint32 seed, so the key's high word is 0
    word = vllm_gumbel.philox(32, (token, 0, 0, 0), (key, 0))[0]
    signed = word - (1 << 32) if word >= 1 << 31 else word
    magnitude = -signed - 1 if signed < 0 else signed
    scale = f32(vllm_gumbel.UNIFORM_SCALE)
    # a product of two float32 values is exact in a double, so rounding it once is float32's product
    return max(f32(f32(float(magnitude)) * scale), scale)


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_4X32)
def test_philox_4x32_matches_the_published_vectors(counter: Any, key: Any, expected: Any) -> None:
    assert vllm_gumbel.philox(32, counter, key) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_4X64)
def test_philox_4x64_matches_the_published_vectors(counter: Any, key: Any, expected: Any) -> None:
    assert vllm_gumbel.philox(64, counter, key) == expected


def test_array_philox_matches_the_integer_one_bit_for_bit() -> None:
    tokens = [0, 1, 2, 1000, 65535, 65536, 151935, 2**31 - 1, 2**32 - 1]
    for seed, position in ROWS:
        k0, k1 = vllm_gumbel.row_key(seed, position)
        words = vllm_gumbel.philox4x32_words(np.int64(k0), np.int64(k1), np.array(tokens, dtype=np.int64))
        assert words.tolist() == [vllm_gumbel.philox(32, (t, 0, 0, 0), (k0, k1))[0] for t in tokens]


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_uniform_and_noise_match_the_reference(xp: Any) -> None:
    tokens = list(range(0, 200_000, 997))
    ids = xp.asarray(tokens) if xp is np else torch.tensor(tokens)
    seeds, positions = [s for s, _ in ROWS], [p for _, p in ROWS]
    keys = vllm_gumbel.noise_keys(xp, ids, seeds, positions)
    u = vllm_gumbel.uniform_at(xp, keys[0][:, None], keys[1][:, None], ids[None, :])
    noise = vllm_gumbel.gumbel_noise(xp, seeds, positions, ids)
    for r, (seed, position) in enumerate(ROWS):
        expected = [reference_uniform(seed, position, t) for t in tokens]
        assert [float(x) for x in u[r].tolist()] == expected  # bit for bit
        for got, want in zip(noise[r].tolist(), expected, strict=True):
            assert got == pytest.approx(-math.log(-math.log1p(-want)), rel=1e-14, abs=1e-14)


def test_numpy_and_torch_noise_are_bit_identical() -> None:
    seeds = [vllm_gumbel.request_seed(s, i) for s, i in [(0, 0), (5, 1), (2**63 - 1, 7)]]
    positions = [0, 31, 4096]
    dense_np = vllm_gumbel.gumbel_noise(np, seeds, positions, np.arange(50_000))
    dense_torch = vllm_gumbel.gumbel_noise(torch, seeds, positions, torch.arange(50_000))
    assert np.array_equal(dense_np, dense_torch.numpy())
    assert dense_np.max() < vllm_gumbel.GUMBEL_MAX


def test_samples_of_one_job_draw_different_request_seeds() -> None:
    seeds = {vllm_gumbel.request_seed(42, i) for i in range(64)}
    assert len(seeds) == 64
    assert all(0 <= s < 2**63 for s in seeds)


def test_float32_evaluation_stays_within_the_allowance() -> None:
    """vLLM's own arithmetic: G and z + G in float32 (torch's CPU functions standing in for the
    GPU's), against the float64 here."""
    seeds, positions = [vllm_gumbel.request_seed(3, 1), 17], [12, 99]
    ids = torch.arange(100_000)
    keys = vllm_gumbel.noise_keys(torch, ids, seeds, positions)
    u = vllm_gumbel.uniform_at(torch, keys[0][:, None], keys[1][:, None], ids[None, :])
    g32 = -torch.log(-torch.log1p(-u))
    z32 = torch.randn(2, 100_000, generator=torch.Generator().manual_seed(0)) * 20 / torch.tensor([[0.7]])
    s32 = (z32 + g32).to(torch.float64)
    s64 = z32.to(torch.float64) + vllm_gumbel.gumbel_noise(torch, seeds, positions, ids)
    allowance = vllm_gumbel.float32_allowance(s64.abs())
    assert bool(((s32 - s64).abs() <= allowance / 4).all())


def test_numpy_and_torch_pick_the_same_tokens() -> None:
    logits = np.random.default_rng(0).standard_normal((5, 3000)).astype(np.float32) * 4
    sampling = [SamplingParams(seed=0, **params) for params in SAMPLINGS]
    seeds = [vllm_gumbel.request_seed(7, i) for i in range(5)]
    positions = [10, 11, 12, 13, 14]
    tokens_np, lp_np = vllm_gumbel.sample_step(np, logits, seeds, positions, sampling)
    tokens_t, lp_t = vllm_gumbel.sample_step(torch, torch.from_numpy(logits), seeds, positions, sampling)
    assert tokens_np.tolist() == tokens_t.tolist()
    assert np.allclose(lp_np, lp_t.numpy(), rtol=0, atol=1e-12)
    assert tokens_np[3] == int(logits[3].argmax())  # temperature 0: the raw argmax


# --------------------------------------------------------------------------- replay on the bundled model

SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 0.0},
    {"temperature": 1.3, "top_p": 0.95, "top_k": 20},
]
MAX_TOKENS = 24


def sample_vllm_style(validator: Scorer, prompt: list[int], sampling: SamplingParams, index: int) -> Claim:
    """A small reference sampler loop: one full forward per token (no cache), vLLM's scheme."""
    seed = vllm_gumbel.request_seed(sampling.seed, index)
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < sampling.max_tokens:
        with torch.inference_mode():
            ids = torch.tensor([prompt + tokens])
            logits = validator.model(input_ids=ids).logits[0, -1:]
        position = vllm_gumbel.noise_position(len(prompt), len(tokens))
        token, logprob = vllm_gumbel.sample_step(torch, logits, [seed], [position], [sampling])
        tokens.append(int(token[0]))
        logprobs.append(float(logprob[0]))
        if tokens[-1] in validator.stops:
            return Claim(tokens, logprobs, "stop")
    return Claim(tokens, logprobs, "length")


def rules(validator: Scorer, sampling: SamplingParams, index: int, prompt: Sequence[int]) -> JobRules:
    return JobRules(
        sampling=sampling,
        sample_index=index,
        limit=sampling.max_tokens,
        stops=validator.stops,
        noise=NOISE_VLLM_GUMBEL,
        prompt_tokens=len(prompt),
    )


def traces(validator: Scorer) -> list[tuple[JobRules, Claim, Any]]:
    out = []
    for i, params in enumerate(SAMPLINGS):
        sampling = SamplingParams(max_tokens=MAX_TOKENS, seed=1000 + i, **params)
        prompt = validator.prompt_ids([_message(PROBLEMS[i % len(PROBLEMS)])])
        claimed = sample_vllm_style(validator, prompt, sampling, index=i % 3)
        logits = validator.completion_logits([prompt], [list(claimed.tokens)])[0]
        out.append((rules(validator, sampling, i % 3, prompt), claimed, logits))
    return out


def _message(text: str) -> Any:
    from shared.protocol import ChatMessage

    return ChatMessage(role="user", content=text)


EPS = 1e-3


def test_traces_sampled_under_vllms_noise_validate(validator: Scorer) -> None:
    for job, claimed, logits in traces(validator):
        outcome = rescore(logits, job, claimed, EPS)
        assert outcome.passed, (job.sampling, outcome)


def test_a_tampered_token_under_vllms_noise_fails(validator: Scorer) -> None:
    for job, claimed, logits in traces(validator):
        if job.sampling.temperature == 0.0:
            continue
        tokens = list(claimed.tokens)
        p = len(tokens) // 2
        z = logits[p].to(torch.float32) / job.sampling.temperature
        rivals = [int(t) for t in z.topk(3).indices.tolist() if int(t) != tokens[p]]
        tokens[p] = rivals[0]
        forged = Claim(tokens[: p + 1], list(claimed.logprobs[: p + 1]), "length")
        short = JobRules(**{**job.__dict__, "limit": p + 1})
        outcome = rescore(logits[: p + 1], short, forged, EPS)
        assert not outcome.passed and outcome.position == p, outcome


def test_the_same_trace_fails_under_the_other_scheme(validator: Scorer) -> None:
    failed = 0
    for job, claimed, logits in traces(validator):
        if job.sampling.temperature > 0.0:
            flywheel = JobRules(**{**job.__dict__, "noise": None})
            failed += not rescore(logits, flywheel, claimed, EPS).passed
    assert failed >= 2  # the tiny model is peaked: some traces are the argmax under any noise


def sample_with_budget(validator: Scorer, prompt: list[int], sampling: SamplingParams, budget: Any) -> Claim:
    """The reference loop with budget forcing replayed on top of vLLM's noise (forced tokens take
    the raw log-softmax, suppressed ids are at -inf before temperature and filters)."""
    state = BudgetState(budget, validator.budget_tokens(budget))
    seed = vllm_gumbel.request_seed(sampling.seed, 0)
    tokens: list[int] = []
    logprobs: list[float] = []
    while len(tokens) < sampling.max_tokens:
        with torch.inference_mode():
            logits = validator.model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1:]
        step, sampled = state.step(), False
        if step.forced is not None:
            token = step.forced
        else:
            masked = logits.clone()
            masked[0, sorted(step.suppress)] = -math.inf
            position = vllm_gumbel.noise_position(len(prompt), len(tokens))
            picked, lp = vllm_gumbel.sample_step(torch, masked, [seed], [position], [sampling])
            token, logprob, sampled = int(picked[0]), float(lp[0]), True
            if token in step.watch:  # an early end: the wait text instead
                token, sampled = state.start_wait(), False
        if not sampled:
            logprob = float(torch.log_softmax(logits[0].to(torch.float64), dim=-1)[token])
        state.advance(token)
        tokens.append(token)
        logprobs.append(logprob)
        if sampled and token in validator.stops:
            return Claim(tokens, logprobs, "stop")
    return Claim(tokens, logprobs, "length")


def test_budget_forcing_replays_under_vllms_noise(validator: Scorer) -> None:
    budgets = [
        BudgetForcing(max_thinking_tokens=6, think_end="\\boxed{"),
        BudgetForcing(min_thinking_tokens=12, max_waits=1, think_end="\\"),
        BudgetForcing(min_thinking_tokens=12, max_waits=0, think_end="\\"),
    ]
    texts = []
    for i, budget in enumerate(budgets):
        sampling = SamplingParams(temperature=1.0, max_tokens=48, seed=77 + i)
        prompt = validator.prompt_ids([_message("What is 2 + 3?")])
        claimed = sample_with_budget(validator, prompt, sampling, budget)
        logits = validator.completion_logits([prompt], [list(claimed.tokens)])[0]
        job = JobRules(
            sampling=sampling,
            sample_index=0,
            limit=48,
            stops=validator.stops,
            budget=budget,
            budget_tokens=validator.budget_tokens(budget),
            noise=NOISE_VLLM_GUMBEL,
            prompt_tokens=len(prompt),
        )
        outcome = rescore(logits, job, claimed, EPS)
        assert outcome.passed, (budget, outcome)
        texts.append(validator.decode(claimed.tokens))
    assert texts[0].index("\\boxed{") <= 6  # the maximum forced the end of thinking
    assert "Wait" in texts[1]  # the minimum forced the wait text


TRITON_DRAW = textwrap.dedent(
    """
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    from shared import vllm_gumbel

    @triton.jit
    def draw(seeds_ptr, pos_ptr, out_ptr, vocab, BLOCK: tl.constexpr):
        # as vLLM 0.26's gumbel_block_argmax loads and draws them (int64 seed and position)
        row = tl.program_id(0)
        seed = tl.load(seeds_ptr + row)
        pos = tl.load(pos_ptr + row)
        gumbel_seed = tl.randint(seed, pos)
        block = tl.arange(0, BLOCK)
        u = tl.maximum(tl.rand(gumbel_seed, block), 4.6566127342e-10)
        tl.store(out_ptr + row * vocab + block, u, mask=block < vocab)

    seeds = [0, 1, 2**63 - 1, 123456789, vllm_gumbel.request_seed(7, 3)]
    positions = [0, 7, 2**40 + 3, 4095, 2**32 - 1]
    vocab = 1000
    out = torch.zeros((len(seeds), vocab), dtype=torch.float32)
    draw[(len(seeds),)](torch.tensor(seeds), torch.tensor(positions), out, vocab, BLOCK=1024)
    keys = vllm_gumbel.noise_keys(np, np.zeros(1), seeds, positions)
    ours = vllm_gumbel.uniform_at(np, keys[0][:, None], keys[1][:, None], np.arange(vocab)[None, :])
    assert (ours == out.numpy()).all(), int((ours != out.numpy()).sum())
    print("triton's draws match")
    """
)


def test_the_uniforms_are_tritons_own_philox_draws() -> None:
    """Against Triton's own `tl.randint`/`tl.rand` (the code vLLM's sampler calls), run by its
    interpreter: the same float32 uniform for every (request seed, position, token id)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", TRITON_DRAW], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triton's draws match" in done.stdout
