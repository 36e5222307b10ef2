"""shared.sampling: bit-identical noise across array modules, filters, logprobs, distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import shared.sampling
from shared.protocol import SamplingParams
from shared.sampling import (
    _exact_log,
    _Ops,
    filtered_logprobs,
    gumbel_noise,
    lowbias32,
    row_keys,
    sample_step,
)

SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**62 + 7, 2**63 - 1]


def params(**kw: float) -> SamplingParams:
    return SamplingParams.model_validate({"temperature": 1.0, **kw})


def test_lowbias32_agrees_on_ints_numpy_and_torch() -> None:
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789]
    expected = [lowbias32(v) for v in values]
    assert all(0 <= e <= 0xFFFFFFFF for e in expected)
    assert len(set(expected)) == len(values)
    assert lowbias32(np.asarray(values, dtype=np.int64)).tolist() == expected
    assert lowbias32(torch.tensor(values, dtype=torch.int64)).tolist() == expected


def test_row_keys_depend_on_every_counter_field() -> None:
    base = row_keys(7, 3, 11)
    assert row_keys(7, 3, 11) == base
    for other in (row_keys(8, 3, 11), row_keys(7, 4, 11), row_keys(7, 3, 12), row_keys(7 + 2**32, 3, 11)):
        assert other != base


@pytest.mark.parametrize("xp", [np, torch])
def test_row_keys_on_arrays_equal_the_python_chain(xp: object) -> None:
    rows = 200  # above the size where keys are derived with array operations
    seeds = [SEEDS[k % len(SEEDS)] + k for k in range(rows)]
    indices, positions = [k * 2**33 + 5 for k in range(rows)], [k * 7 for k in range(rows)]
    like = np.zeros(1) if xp is np else torch.zeros(1)
    keys = shared.sampling._keys_array(_Ops(xp, like), seeds, indices, positions)
    pairs = list(zip(keys[0].tolist(), keys[1].tolist(), strict=True))
    assert pairs == [row_keys(s, i, p) for s, i, p in zip(seeds, indices, positions, strict=True)]


def test_noise_is_bit_identical_numpy_vs_torch() -> None:
    vocab = 151_936  # a real (Qwen2) vocabulary size
    rows = len(SEEDS)
    args = (SEEDS, list(range(rows)), [0, 1, 5, 100, 4095, 32767, 7])
    from_numpy = gumbel_noise(np, *args, np.arange(vocab, dtype=np.int64))
    from_torch = gumbel_noise(torch, *args, torch.arange(vocab, dtype=torch.int64))
    assert from_numpy.dtype == np.float64 and from_torch.dtype == torch.float64
    assert from_numpy.shape == (rows, vocab)
    assert np.array_equal(from_numpy.view(np.int64), from_torch.numpy().view(np.int64))


@pytest.mark.gpu
def test_noise_is_bit_identical_on_cuda() -> None:
    vocab = 151_936
    args = (SEEDS, list(range(len(SEEDS))), [0, 1, 5, 100, 4095, 32767, 7])
    cpu = gumbel_noise(np, *args, np.arange(vocab, dtype=np.int64))
    cuda = gumbel_noise(torch, *args, torch.arange(vocab, dtype=torch.int64, device="cuda"))
    assert np.array_equal(cpu.view(np.int64), cuda.cpu().numpy().view(np.int64))


def test_table_noise_is_bit_identical_to_direct_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large draws read G from the per-device table; it must be the very same function."""
    vocab = 151_936
    args = (SEEDS, list(range(len(SEEDS))), [0, 1, 5, 100, 4095, 32767, 7])
    monkeypatch.setattr(shared.sampling, "TABLE_MIN_ELEMENTS", 1 << 62)
    direct = gumbel_noise(np, *args, np.arange(vocab, dtype=np.int64))
    monkeypatch.setattr(shared.sampling, "TABLE_MIN_ELEMENTS", 1)
    from_table = gumbel_noise(torch, *args, torch.arange(vocab, dtype=torch.int64))
    assert np.array_equal(direct.view(np.int64), from_table.numpy().view(np.int64))
    # the table's extremes: the first and last of the 2**24 levels
    table = shared.sampling._gumbel_table(_Ops(torch, from_table))
    ends = shared.sampling._gumbel_of_level(_Ops(np, direct), np.asarray([0, (1 << 24) - 1]))
    assert np.array_equal(table[[0, -1]].numpy(), ends)


def test_exact_log_matches_libm_to_a_few_ulp() -> None:
    x = np.concatenate([np.geomspace(1e-12, 1e3, 20_000), np.linspace(0.5, 2.0, 20_000)])
    ours = _exact_log(_Ops(np, x), x)
    reference = np.log(x)
    scale = np.maximum(np.abs(reference), 1.0)
    assert np.max(np.abs(ours - reference) / scale) < 4e-16


def test_noise_has_gumbel_moments() -> None:
    noise = gumbel_noise(np, [3, 4, 5, 6], [0, 0, 1, 1], [0, 9, 0, 9], np.arange(250_000, dtype=np.int64))
    euler_gamma = 0.5772156649
    assert abs(noise.mean() - euler_gamma) < 0.01
    assert abs(noise.std() - math.pi / math.sqrt(6)) < 0.01


def test_temperature_zero_is_plain_argmax_with_unfiltered_logprob() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    greedy = [params(temperature=0.0, top_k=3, top_p=0.5)] * 4
    tokens, logprobs = sample_step(np, logits, [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 0, 0], greedy)
    assert tokens.tolist() == logits.argmax(axis=-1).tolist()
    z = logits.astype(np.float64)
    expected = z[np.arange(4), tokens] - np.log(np.exp(z).sum(axis=-1))
    assert np.allclose(logprobs, expected, rtol=0, atol=1e-12)


def test_seed_reproduces_and_other_seeds_differ() -> None:
    logits = torch.zeros((1, 1000))
    first = [sample_step(torch, logits, [42], [0], [p], [params()])[0].item() for p in range(20)]
    again = [sample_step(torch, logits, [42], [0], [p], [params()])[0].item() for p in range(20)]
    other = [sample_step(torch, logits, [43], [0], [p], [params()])[0].item() for p in range(20)]
    other_index = [sample_step(torch, logits, [42], [1], [p], [params()])[0].item() for p in range(20)]
    assert first == again
    assert first != other
    assert first != other_index


def test_top_k_is_respected_and_logprob_renormalised() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 200))
    allowed = set(np.argsort(-logits[0])[:5].tolist())
    sp = params(temperature=0.8, top_k=5)
    seen = set()
    for seed in range(300):
        token, logprob = sample_step(np, logits, [seed], [0], [0], [sp])
        seen.add(int(token[0]))
        z = logits[0] / 0.8
        kept = np.array(sorted(allowed))
        expected = z[token[0]] - np.log(np.exp(z[kept]).sum())
        assert logprob[0] == pytest.approx(expected, abs=1e-12)
    assert seen == allowed


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = np.array([0.5, 0.25, 0.15, 0.06, 0.04])
    logits = np.log(probs)[None, :]
    sp = params(top_p=0.8)  # 0.5 + 0.25 < 0.8 <= 0.5 + 0.25 + 0.15: keeps the first three
    lp = filtered_logprobs(np, logits, [sp])[0]
    assert np.isneginf(lp[3:]).all()
    assert np.allclose(np.exp(lp[:3]), probs[:3] / probs[:3].sum())
    seen = {int(sample_step(np, logits, [s], [0], [0], [sp])[0][0]) for s in range(200)}
    assert seen == {0, 1, 2}


def test_top_k_and_top_p_combine_and_torch_agrees() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 64)) * 3
    sp = [params(top_k=10, top_p=0.7), params(temperature=0.5, top_p=0.3), params(temperature=2.0, top_k=1)]
    np_lp = filtered_logprobs(np, logits, sp)
    torch_lp = filtered_logprobs(torch, torch.from_numpy(logits), sp).numpy()
    assert np.array_equal(np.isfinite(np_lp), np.isfinite(torch_lp))
    assert np.allclose(np_lp[np.isfinite(np_lp)], torch_lp[np.isfinite(torch_lp)], atol=1e-12)
    assert np.isfinite(np_lp[0]).sum() <= 10
    assert np.isfinite(np_lp[2]).sum() == 1 and np.isfinite(np_lp[2, logits[2].argmax()])
    np_tok, _ = sample_step(np, logits, [9, 9, 9], [0, 1, 2], [3, 3, 3], sp)
    torch_tok, _ = sample_step(torch, torch.from_numpy(logits), [9, 9, 9], [0, 1, 2], [3, 3, 3], sp)
    assert np_tok.tolist() == torch_tok.tolist()


def test_sampling_frequencies_follow_the_tempered_softmax() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -1.0]])
    temperature = 1.5
    expected = np.exp(logits[0] / temperature) / np.exp(logits[0] / temperature).sum()
    draws = 6000
    counts = np.zeros(4)
    for position in range(draws):
        token, _ = sample_step(np, logits, [5], [0], [position], [params(temperature=temperature)])
        counts[token[0]] += 1
    # Multinomial standard error at n=6000 is below 0.0065 for these probabilities: 4 sigma slack.
    assert np.max(np.abs(counts / draws - expected)) < 0.026
