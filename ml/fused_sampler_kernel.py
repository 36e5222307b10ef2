# mypy: disable-error-code="no-untyped-def"
"""The Triton kernel behind ml/fused_sampler.py (imported only where Triton is installed).

Every float64 constant the noise needs (the atanh series, ln 2, sqrt 1/2) comes in through
`consts_ptr`, loaded exactly: a Python float written in a kernel may be typed float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

# consts_ptr layout: the 12 atanh series coefficients, then ln 2, then sqrt(1/2)
LN2_AT, SQRT_HALF_AT = 12, 13


@triton.jit
def _lowbias32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _exact_log(x, consts_ptr):
    """shared.sampling._exact_log, operation for operation (frexp from the bits)."""
    bits = x.to(tl.int64, bitcast=True)
    exponent = (((bits >> 52) & 0x7FF) - 1022).to(tl.float64)
    mantissa = ((bits & -0x7FF0000000000001) | 0x3FE0000000000000).to(tl.float64, bitcast=True)
    low = mantissa < tl.load(consts_ptr + 13)
    mantissa = tl.where(low, mantissa * 2.0, mantissa)
    exponent = exponent - low.to(tl.float64)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    series = s2 * tl.load(consts_ptr + 11) + tl.load(consts_ptr + 10)
    for k in tl.static_range(9, -1, -1):
        series = series * s2 + tl.load(consts_ptr + k)
    return exponent * tl.load(consts_ptr + 12) + 2.0 * s * series


@triton.jit
def _row_keys(words_ptr, position):
    """shared.sampling.row_keys from the row's four uint32 words and the position."""
    seed_lo = tl.load(words_ptr).to(tl.uint32, bitcast=True)
    seed_hi = tl.load(words_ptr + 1).to(tl.uint32, bitcast=True)
    index_lo = tl.load(words_ptr + 2).to(tl.uint32, bitcast=True)
    index_hi = tl.load(words_ptr + 3).to(tl.uint32, bitcast=True)
    h = _lowbias32(seed_lo ^ 0x243F6A88)
    h = _lowbias32(h ^ seed_hi)
    h = _lowbias32(h ^ index_lo)
    h = _lowbias32(h ^ index_hi)
    k1 = _lowbias32(h ^ position)
    return k1, _lowbias32(k1 ^ 0x85A308D3)


@triton.jit
def sample_kernel(logits_ptr, stride, vocab, words_ptr, temps_ptr, stochastic_ptr, position_ptr, consts_ptr,
                  tokens_ptr, logprobs_ptr, BLOCK: tl.constexpr):  # fmt: skip
    """One program per row: the seeded Gumbel-max token and its logprob (shared/sampling.py)."""
    row = tl.program_id(0)
    position = (tl.load(position_ptr) & 0xFFFFFFFF).to(tl.uint32)
    k1, k2 = _row_keys(words_ptr + 4 * row, position)
    temp = tl.load(temps_ptr + row)
    stochastic = tl.load(stochastic_ptr + row)
    best = tl.full([], -float("inf"), tl.float64)
    best_at = tl.full([], 0, tl.int32)
    peak = tl.full([], -float("inf"), tl.float64)
    total = tl.full([], 0.0, tl.float64)
    for start in range(0, vocab, BLOCK):
        ids = start + tl.arange(0, BLOCK)
        inside = ids < vocab
        raw = tl.load(logits_ptr + row * stride + ids, mask=inside, other=-float("inf"))
        z = raw.to(tl.float64) / temp
        x = ids.to(tl.uint32) * 0x9E3779B1
        level = _lowbias32(_lowbias32(x ^ k1) ^ k2) >> 8
        u = (level.to(tl.float64) + 0.5) * 0.000000059604644775390625  # 2**-24
        gumbel = -_exact_log(-_exact_log(u, consts_ptr), consts_ptr)
        score = tl.where(inside, z + gumbel * stochastic, -float("inf"))
        block_best, block_at = tl.max(score, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = block_best > best
        best_at = tl.where(better, start + block_at, best_at)
        best = tl.where(better, block_best, best)
        new_peak = tl.maximum(peak, tl.max(z, axis=0))
        total = total * tl.exp(peak - new_peak) + tl.sum(tl.exp(z - new_peak), axis=0)
        peak = new_peak
    chosen = tl.load(logits_ptr + row * stride + best_at).to(tl.float64) / temp
    tl.store(tokens_ptr + row, best_at.to(tl.int64))
    tl.store(logprobs_ptr + row, chosen - (peak + tl.log(total)))
