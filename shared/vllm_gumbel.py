"""The noise scheme of stock vLLM's Model Runner V2 sampler, recomputed so a validator can replay it.

vLLM (Model Runner V2, `vllm/v1/worker/gpu/sample/gumbel.py`, checked against 0.26.0) samples a
request that carries a seed by Gumbel-max with counter-based noise:

    z       = float32(logits) / float32(T)             (float32; T = 0: raw logits, no noise)
    z       = top-k, then top-p of z, others at -inf   (before the noise)
    key     = Philox4x32-10(counter=(lo32(pos), hi32(pos), 0, 0), key=(lo32(seed), hi32(seed))), first word
    r       = Philox4x32-10(counter=(token_id, 0, 0, 0), key=(key, 0)), first word
    m       = r as int32; m < 0 -> -m - 1                 (so m in [0, 2**31))
    u       = max(float32(m) * float32(4.6566127342e-10), that same constant)
    G       = -log(-log1p(-u))                            (large noise near u -> 0)
    token   = argmax of z + G

These are Triton's `tl.randint(seed, pos)` (an int64 offset is split into the counter's first two
words; the int64 seed into the key's) and `tl.rand(key, token_id)` (a uint32 seed: key (key, 0)).
`pos` is the position of the *input* token whose logits are sampled: prompt_tokens - 1 + k for
completion token k (`noise_position`). `seed` is the request's seed; Flywheel derives it from the
job seed and sample index (`request_seed`), so samples of one problem draw different noise.

Everything up to `u` is integer arithmetic and two correctly rounded float32 operations, so it is
exact here. vLLM then evaluates G and z + G in float32 with fast approximate functions; this module
evaluates G in float64 from the same `u` with IEEE-exact operations only (shared/sampling.py's
logarithm), bit-identical on numpy, torch CPU and torch CUDA. The float32 difference to vLLM's own
value is bounded by `float32_allowance`, which the validator adds to its tolerance.

The functions are array-module agnostic (`xp` is numpy or torch); this module imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from shared.protocol import NOISE_VLLM_GUMBEL, SamplingParams
from shared.sampling import MASK32, _exact_log, _Ops, allowed_floor

SCHEME = NOISE_VLLM_GUMBEL
MASK64 = (1 << 64) - 1
# Philox constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
_M4X32 = (0xD2511F53, 0xCD9E8D57)
_W4X32 = (0x9E3779B9, 0xBB67AE85)
_M4X64 = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
_W4X64 = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)
ROUNDS = 10
# Triton's int32 -> uniform scale, "the largest value with (2**31 - 1) * scale < 1" in float32.
UNIFORM_SCALE = 4.6566127342e-10
# 16 terms of the atanh series for |s| <= 1/3 leave a truncation error below 1e-17.
_ATANH_COEFFS = tuple(1.0 / (2 * k + 1) for k in range(18))
_SEED_KEY = 0x464C595748454C  # separates request seeds from any other use of the job seed


def philox(width: int, counter: Sequence[int], key: Sequence[int], rounds: int = ROUNDS) -> tuple[int, ...]:
    """Philox4x`width`-`rounds` on Python ints (width 32 or 64): four counter words, two key words."""
    mask = (1 << width) - 1
    (ma, mb), (wa, wb) = (_M4X32, _W4X32) if width == 32 else (_M4X64, _W4X64)
    c0, c1, c2, c3 = (c & mask for c in counter)
    k0, k1 = (k & mask for k in key)
    for _ in range(rounds):
        pa, pb = ma * c0, mb * c2
        c0, c1, c2, c3 = (pb >> width) ^ c1 ^ k0, pb & mask, (pa >> width) ^ c3 ^ k1, pa & mask
        k0, k1 = (k0 + wa) & mask, (k1 + wb) & mask
    return c0, c1, c2, c3


def request_seed(seed: int, sample_index: int) -> int:
    """The vLLM request seed of one sample of a job, in [0, 2**63) (vLLM keeps seeds as int64)."""
    return philox(64, (sample_index, 0, 0, 0), (seed, _SEED_KEY))[0] >> 1


def noise_position(prompt_tokens: int, index: int) -> int:
    """vLLM's counter for completion token `index`: the position of the token fed in to sample it."""
    return prompt_tokens - 1 + index


def row_key(seed: int, position: int) -> tuple[int, int]:
    """The two 32-bit Philox4x32 key words of one (request seed, position) for the per-token draw:
    Triton's `tl.randint(seed, position)`, whose uint32 result seeds `tl.rand` (high key word 0)."""
    seed, position = seed & MASK64, position & MASK64
    word = philox(32, (position & MASK32, position >> 32, 0, 0), (seed & MASK32, seed >> 32))[0]
    return word, 0


def noise_keys(xp: Any, like: Any, seeds: Sequence[int], positions: Sequence[int]) -> Any:
    """`row_key` of every row, [2, rows] int64 on the device of `like`. One Philox per row
    in Python: rows are few next to the tokens each one draws noise for."""
    keys = [row_key(int(s), int(p)) for s, p in zip(seeds, positions, strict=True)]
    return _Ops(xp, like).i64([[k[0] for k in keys], [k[1] for k in keys]])


def _mulhilo32(a: int, c: Any) -> tuple[Any, Any]:
    """High and low 32 bits of a * c (a a 32-bit constant, c int64 values in [0, 2**32)) without
    int64 overflow: c in 16-bit halves, each product below 2**48."""
    low, high = a * (c & 0xFFFF), a * (c >> 16)
    return (high + (low >> 16)) >> 16, (((high & 0xFFFF) << 16) + low) & MASK32


def philox4x32_words(k0: Any, k1: Any, token_ids: Any) -> Any:
    """First output word of Philox4x32-10 at counter (token_id, 0, 0, 0) under keys (k0, k1): int64
    arrays broadcast together, as `shared.sampling.gumbel_at` takes them."""
    c0, c1, c2, c3 = token_ids & MASK32, token_ids * 0, token_ids * 0, token_ids * 0
    for r in range(ROUNDS):
        key0, key1 = (k0 + r * _W4X32[0]) & MASK32, (k1 + r * _W4X32[1]) & MASK32
        hi_a, lo_a = _mulhilo32(_M4X32[0], c0)
        hi_b, lo_b = _mulhilo32(_M4X32[1], c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ key0, lo_b, hi_a ^ c3 ^ key1, lo_a
    return c0


def uniform_at(xp: Any, k0: Any, k1: Any, token_ids: Any) -> Any:
    """vLLM's float32 uniform for each (row key, token id), in (0, 1)."""
    word = philox4x32_words(k0, k1, token_ids)
    magnitude = xp.where(word >= 1 << 31, MASK32 - word, word)  # int32 m; m < 0 -> -m - 1
    if getattr(xp, "__name__", "") == "torch":
        scale = xp.tensor(UNIFORM_SCALE, dtype=xp.float32, device=token_ids.device)
        return xp.maximum(magnitude.to(xp.float32) * scale, scale)
    scale = xp.float32(UNIFORM_SCALE)
    return xp.maximum(magnitude.astype(xp.float32) * scale, scale)


def _exact_log1p_neg(ops: _Ops, u: Any) -> Any:
    """log(1 - u) for float64 u in (0, 1) from IEEE-exact operations: for u >= 1/2, 1 - u is exact
    (u holds float32 bits only); below, 2 atanh(s) with s = -u / (2 - u), |s| <= 1/3."""
    xp = ops.xp
    high = _exact_log(ops, xp.where(u >= 0.5, 1.0 - u, 0.5 + 0.0 * u))
    s = -u / (2.0 - u)
    s2 = s * s
    series = s2 * _ATANH_COEFFS[-1] + _ATANH_COEFFS[-2]
    for coeff in reversed(_ATANH_COEFFS[:-2]):
        series = series * s2 + coeff
    return xp.where(u >= 0.5, high, 2.0 * s * series)


def gumbel_at(xp: Any, k0: Any, k1: Any, token_ids: Any) -> Any:
    """G (float64) for token ids under row keys; the shapes broadcast as in `philox4x32_words`."""
    ops = _Ops(xp, token_ids)
    u = ops.to_f64(uniform_at(xp, k0, k1, token_ids))
    return -_exact_log(ops, -_exact_log1p_neg(ops, u))


def gumbel_noise(xp: Any, seeds: Sequence[int], positions: Sequence[int], token_ids: Any) -> Any:
    """Dense G, [rows, len(token_ids)] float64, for request seeds and vLLM positions."""
    keys = noise_keys(xp, token_ids, seeds, positions)
    return gumbel_at(xp, keys[0][:, None], keys[1][:, None], token_ids[None, :])


# The largest G: at the smallest u; plus far more than float64 rounding.
GUMBEL_MAX = -math.log(-math.log1p(-float.fromhex("0x1.fffffep-32"))) + 1e-6


def float32_allowance(magnitude: Any) -> Any:
    """How far vLLM's float32 score z + G can sit from the float64 one here, for scores of this
    magnitude (|z| + |G|): the division, log1p, log and sum each cost a few float32 ulps
    (fast-math functions included), far below 2**-18 of the magnitude plus 2**-18."""
    return (magnitude + 1.0) * 2.0**-18


def scaled_logits(xp: Any, logits: Any, temperatures: Sequence[float]) -> Any:
    """z = float32(logits) / float32(T) per row (T = 0 rows: the raw float32 logits), as float64."""
    ops = _Ops(xp, logits)
    temps = [t if t > 0.0 else 1.0 for t in temperatures]
    if ops.torch:
        t32 = xp.tensor(temps, dtype=xp.float32, device=logits.device)[:, None]
        return ops.to_f64(logits.to(xp.float32) / t32)
    t32 = xp.asarray(temps, dtype=xp.float32)[:, None]
    return ops.to_f64(logits.astype(xp.float32) / t32)


def sample_step(
    xp: Any, logits: Any, seeds: Sequence[int], positions: Sequence[int], sampling: Sequence[SamplingParams]
) -> tuple[Any, Any]:
    """The reference of vLLM's pick for each row: (token ids int64, logprobs float64).

    `seeds` are request seeds (`request_seed`), `positions` vLLM positions (`noise_position`). The
    logprob is vLLM's `processed_logprobs`: z[token] - logsumexp(z over the allowed set); greedy
    rows (T = 0) take the raw argmax and the raw log-softmax, unfiltered, as vLLM does."""
    ops = _Ops(xp, logits)
    z = scaled_logits(xp, logits, [s.temperature for s in sampling])
    vocab = int(logits.shape[-1])
    filtered = [s.temperature > 0.0 and (s.top_k > 0 or s.top_p < 1.0) for s in sampling]
    if any(filtered):
        plain = SamplingParams(temperature=1.0)
        rules = [s if f else plain for s, f in zip(sampling, filtered, strict=True)]
        floor, _ = allowed_floor(xp, ops.sort_desc(z), rules, vocab)
        z = xp.where(z >= floor, z, ops.f64(-math.inf))
    noise = gumbel_noise(xp, seeds, positions, ops.arange(vocab))
    stochastic = ops.f64([1.0 if s.temperature > 0.0 else 0.0 for s in sampling])[:, None]
    tokens = ops.argmax(z + noise * stochastic)
    peak = ops.max(z)
    lse = peak + xp.log(ops.sum(xp.exp(z - peak)))
    return tokens, ops.take(z, tokens[:, None])[:, 0] - lse[:, 0]
