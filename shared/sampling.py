"""Verifiable sampling: seeded Gumbel-max over the top-k/top-p allowed set.

A generated token is a deterministic function of (logits, job seed, sample index, position):

    z       = logits / T                       (float64)
    allowed = top-k then top-p filter of z     (ties at a threshold are kept)
    token   = argmax over allowed of z + G(seed, sample_index, position, token_id)
    logprob = z[token] - logsumexp(z[allowed])

`G` is Gumbel noise from a counter-based hash, so any party holding the logits can recompute
it: the worker's engines sample with `sample_step` (through ml/sampling.py); the validator
(ml/rescore.py) re-scores a claimed trace from the allowed set's floor (`allowed_floor`) and the
noise at the few tokens a verdict needs (`noise_keys`, `gumbel_at`); the GRPO trainer reads the
sampler's distribution with `filtered_logprobs`; `gumbel_noise` is the dense form the tests check
all of them against. The hash picks one of 2**24 uniform levels and G is a fixed
function of the level, so large draws read G from a table of all levels, built once per device,
instead of evaluating two logarithms per token. Temperature 0 is plain greedy argmax of the raw logits,
and its logprob is the unfiltered log-softmax of the raw logits.

The functions are array-module agnostic: `xp` is `numpy` or `torch` (any device). Only integer
ops, IEEE-exact float ops (+, -, *, /) and `frexp` feed the noise, and the logarithm inside it is
computed here from those, so numpy, torch CPU and torch CUDA produce bit-identical noise.
This module imports neither library: it stays within the `shared` rule (pydantic + stdlib).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from shared.protocol import SamplingParams

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # odd, so token_id -> token_id * _GOLDEN is a bijection mod 2**32
_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
# log(m) = 2 * atanh(s) = 2 * (s + s^3/3 + s^5/5 + ...), s = (m-1)/(m+1), |s| < 0.1716;
# 12 terms put the truncation error below 1e-19, under float64 rounding.
_ATANH_COEFFS = tuple(1.0 / (2 * k + 1) for k in range(12))
_UNIFORM_BITS = 24
# Draws of at least this many values read G from the per-device table of all 2**24 levels
# (128 MiB of float64, built once); smaller ones, like a tiny model's, compute it directly.
TABLE_MIN_ELEMENTS = 1 << 21
_TABLE_CHUNK = 1 << 20
# Below this many rows the Python chain is cheaper than a dozen array passes (kernel launches).
_ARRAY_KEYS_MIN_ROWS = 64
# An upper bound on every G: the value at the top level, plus far more than float64 rounding.
GUMBEL_MAX = -math.log(-math.log1p(-0.5 / (1 << _UNIFORM_BITS))) + 1e-9
_tables: dict[tuple[bool, str], Any] = {}
_tables_lock = threading.Lock()


def lowbias32(x: Any) -> Any:
    """A 32-bit integer hash (Wellons' lowbias32) on Python ints or int64 arrays.

    Inputs must lie in [0, 2**32). Products of two 32-bit values overflow int64; the wrap-around
    only touches bits above 32, which the mask throws away, and it keeps shifts on non-negative
    values.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def row_keys(seed: int, sample_index: int, position: int) -> tuple[int, int]:
    """Two 32-bit keys for one (job seed, sample index, position): the counter of the RNG."""
    h = lowbias32((seed & MASK32) ^ 0x243F6A88)
    h = lowbias32(h ^ ((seed >> 32) & MASK32))
    h = lowbias32(h ^ (sample_index & MASK32))
    h = lowbias32(h ^ ((sample_index >> 32) & MASK32))
    k1 = lowbias32(h ^ (position & MASK32))
    k2 = lowbias32(k1 ^ 0x85A308D3)
    return k1, k2


class _Ops:
    """The few operations whose spelling differs between numpy and torch."""

    def __init__(self, xp: Any, like: Any) -> None:
        self.xp = xp
        self.torch = getattr(xp, "__name__", "") == "torch"
        self.device = like.device if self.torch else None

    def i64(self, values: Any) -> Any:
        if self.torch:
            return self.xp.as_tensor(values, dtype=self.xp.int64, device=self.device)
        return self.xp.asarray(values, dtype=self.xp.int64)

    def f64(self, values: Any) -> Any:
        if self.torch:
            return self.xp.as_tensor(values, dtype=self.xp.float64, device=self.device)
        return self.xp.asarray(values, dtype=self.xp.float64)

    def to_f64(self, array: Any) -> Any:
        return array.to(self.xp.float64) if self.torch else array.astype(self.xp.float64)

    def arange(self, n: int) -> Any:
        if self.torch:
            return self.xp.arange(n, dtype=self.xp.int64, device=self.device)
        return self.xp.arange(n, dtype=self.xp.int64)

    def max(self, a: Any) -> Any:
        return a.max(dim=-1, keepdim=True).values if self.torch else a.max(axis=-1, keepdims=True)

    def sum(self, a: Any) -> Any:
        return a.sum(dim=-1, keepdim=True) if self.torch else a.sum(axis=-1, keepdims=True)

    def cumsum(self, a: Any) -> Any:
        return a.cumsum(dim=-1) if self.torch else a.cumsum(axis=-1)

    def sort_desc(self, a: Any) -> Any:
        return self.xp.sort(a, dim=-1, descending=True).values if self.torch else -self.xp.sort(-a, axis=-1)

    def take(self, a: Any, index: Any) -> Any:
        if self.torch:
            return self.xp.gather(a, -1, index)
        return self.xp.take_along_axis(a, index, axis=-1)

    def argmax(self, a: Any) -> Any:
        return a.argmax(dim=-1) if self.torch else a.argmax(axis=-1)

    def frexp(self, a: Any) -> tuple[Any, Any]:
        mantissa, exponent = self.xp.frexp(a)
        return mantissa, self.to_f64(exponent)


def _exact_log(ops: _Ops, x: Any) -> Any:
    """Natural log of positive float64 values from IEEE-exact operations only.

    Library `log` implementations differ in the last bit between numpy, torch CPU and CUDA; this
    one is the same sequence of correctly rounded operations everywhere.
    """
    mantissa, exponent = ops.frexp(x)  # x = mantissa * 2**exponent, mantissa in [0.5, 1)
    low = mantissa < _SQRT_HALF
    mantissa = ops.xp.where(low, mantissa * 2.0, mantissa)
    exponent = exponent - ops.to_f64(low)
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    series = s2 * _ATANH_COEFFS[-1] + _ATANH_COEFFS[-2]
    for coeff in reversed(_ATANH_COEFFS[:-2]):
        series = series * s2 + coeff
    return exponent * _LN2 + 2.0 * s * series


def _python_keys(ops: _Ops, seeds: Sequence[int], indices: Sequence[int], positions: Sequence[int]) -> Any:
    keys = [row_keys(int(s), int(i), int(p)) for s, i, p in zip(seeds, indices, positions, strict=True)]
    return ops.i64([[k[0] for k in keys], [k[1] for k in keys]])


def _keys_array(ops: _Ops, seeds: Sequence[int], indices: Sequence[int], positions: Sequence[int]) -> Any:
    """`row_keys` of every row at once, [2, rows] int64: the same hash chain on arrays, so that a
    validator's thousands of positions cost a few array passes instead of Python calls each."""
    if len(seeds) < _ARRAY_KEYS_MIN_ROWS:
        return _python_keys(ops, seeds, indices, positions)
    if max(max(seeds), max(indices), max(positions)) >= 1 << 63:  # beyond int64: the Python chain
        return _python_keys(ops, seeds, indices, positions)
    # Non-negative int64 values, so `>> 32` is the logical shift the Python chain does.
    seed, index, position = ops.i64(list(seeds)), ops.i64(list(indices)), ops.i64(list(positions))
    h = lowbias32((seed & MASK32) ^ 0x243F6A88)
    h = lowbias32(h ^ ((seed >> 32) & MASK32))
    h = lowbias32(h ^ (index & MASK32))
    h = lowbias32(h ^ ((index >> 32) & MASK32))
    k1 = lowbias32(h ^ (position & MASK32))
    k2 = lowbias32(k1 ^ 0x85A308D3)
    return ops.xp.stack([k1, k2])


def gumbel_noise(
    xp: Any,
    seeds: Sequence[int],
    sample_indices: Sequence[int],
    positions: Sequence[int],
    token_ids: Any,
) -> Any:
    """Gumbel(0, 1) noise, float64, shape [rows, len(token_ids)], bit-identical across backends.

    `token_ids` is an int64 array (numpy or torch; its device is used) of the vocabulary ids to
    draw noise for, usually `arange(vocab_size)`.
    """
    keys = noise_keys(xp, token_ids, seeds, sample_indices, positions)
    return gumbel_at(xp, keys[0][:, None], keys[1][:, None], token_ids[None, :])


def noise_keys(
    xp: Any, like: Any, seeds: Sequence[int], sample_indices: Sequence[int], positions: Sequence[int]
) -> Any:
    """`row_keys` of every row, [2, rows] int64 on the device of `like` (an array of that module)."""
    return _keys_array(_Ops(xp, like), seeds, sample_indices, positions)


def gumbel_at(xp: Any, k1: Any, k2: Any, token_ids: Any) -> Any:
    """Gumbel noise for token ids under row keys, all int64 arrays broadcast together: keys [rows, 1]
    with ids [1, vocab] give a dense block; keys and ids of equal shape give one draw per pair (the
    validator draws noise only for the tokens that could matter)."""
    ops = _Ops(xp, token_ids)
    x = (token_ids * _GOLDEN) & MASK32
    level = lowbias32(lowbias32(x ^ k1) ^ k2) >> (32 - _UNIFORM_BITS)
    if math.prod(level.shape) >= TABLE_MIN_ELEMENTS:
        return _gumbel_table(ops)[level]
    return _gumbel_of_level(ops, level)


def _gumbel_of_level(ops: _Ops, level: Any) -> Any:
    """G for integer levels in [0, 2**24): u = (level + 1/2) / 2**24 lies strictly inside (0, 1),
    so both logarithms are finite."""
    u = (ops.to_f64(level) + 0.5) * (1.0 / (1 << _UNIFORM_BITS))
    return -_exact_log(ops, -_exact_log(ops, u))


def _gumbel_table(ops: _Ops) -> Any:
    """G for every level, on the device of `ops`: the same exact operations, evaluated once."""
    key = (ops.torch, str(ops.device))
    table = _tables.get(key)
    if table is not None:
        return table
    with _tables_lock:
        table = _tables.get(key)
        if table is None:
            # In chunks, so building it never holds more than a few MiB of temporaries.
            chunks = [
                _gumbel_of_level(ops, ops.arange(_TABLE_CHUNK) + start)
                for start in range(0, 1 << _UNIFORM_BITS, _TABLE_CHUNK)
            ]
            table = _tables[key] = ops.xp.cat(chunks) if ops.torch else ops.xp.concatenate(chunks)
    return table


def _row_params(ops: _Ops, sampling: Sequence[SamplingParams]) -> tuple[Any, Any, Any, Any]:
    greedy = [s.temperature == 0.0 for s in sampling]
    temps = ops.f64([1.0 if g else s.temperature for g, s in zip(greedy, sampling, strict=True)])
    top_k = ops.i64([0 if g else s.top_k for g, s in zip(greedy, sampling, strict=True)])
    top_p = ops.f64([1.0 if g else s.top_p for g, s in zip(greedy, sampling, strict=True)])
    return temps[:, None], top_k[:, None], top_p[:, None], greedy


def _threshold(ops: _Ops, z: Any, top_k: Any, top_p: Any) -> Any:
    """Per-row lowest allowed value of z: tokens with z >= threshold form the allowed set."""
    return _sorted_threshold(ops, ops.sort_desc(z), z.shape[-1], top_k, top_p)[0]


def _sorted_threshold(
    ops: _Ops, ordered: Any, vocab: int, top_k: Any, top_p: Any, total: Any = None
) -> tuple[Any, Any, Any]:
    """`_threshold` from the row's values sorted in descending order, or from the largest of them
    (then `total` is the sum of exp(z - max) over the whole row, needed by rows without top-k).
    Also returns how many values the top-p cut kept and the top-k threshold (see allowed_floor)."""
    xp = ops.xp
    neg_inf = ops.f64(-math.inf)
    use_k = (top_k > 0) & (top_k < vocab)
    last = ordered.shape[-1] - 1
    kth = ops.take(ordered, xp.where(use_k, xp.clip(top_k - 1, 0, last), 0 * top_k))
    thr_k = xp.where(use_k, kth, neg_inf)
    # top-p runs on the distribution already cut by top-k, as the sampler sees it
    kept = xp.where(ordered >= thr_k, ordered, neg_inf)
    probs = xp.exp(kept - ordered[:, :1])
    mass = ops.sum(probs) if total is None else xp.where(use_k, ops.sum(probs), total)
    probs = probs / mass
    before = ops.cumsum(probs) - probs
    count = ops.sum((before < top_p) & (kept > neg_inf))
    # count >= 1: the top token always has zero mass before it
    thr_p = xp.where(top_p < 1.0, ops.take(ordered, count - 1), neg_inf)
    return xp.where(thr_p > thr_k, thr_p, thr_k), count, thr_k


def allowed_floor(
    xp: Any, ordered: Any, sampling: Sequence[SamplingParams], vocab: int, total: Any = None
) -> tuple[Any, Any]:
    """Per row, the lowest value of z = logits/T the filter allows ([rows, 1] float64), from
    `ordered`: the row's values of z sorted in descending order, all `vocab` of them or the largest
    ones. With a prefix, `total` is the row's sum of exp(z - max z) (for top-p without top-k).
    Also returns whether the values settled the cut ([rows, 1] bool; if not, more are needed):
    the top-k kept set ended inside them and the top-p cut fell before the last of them."""
    ops = _Ops(xp, ordered)
    _, top_k, top_p, _ = _row_params(ops, sampling)
    floor, count, thr_k = _sorted_threshold(ops, ordered, vocab, top_k, top_p, total)
    last = ordered.shape[-1] - 1
    if last + 1 >= vocab:
        return floor, count > 0  # every value is there: settled (count is at least 1)
    use_k = (top_k > 0) & (top_k < vocab)
    settled = ((count <= last) | (top_p >= 1.0)) & xp.where(use_k, ordered[:, -1:] < thr_k, True)
    return floor, settled


def _allowed_z(ops: _Ops, logits: Any, sampling: Sequence[SamplingParams]) -> Any:
    """logits/T in float64 with every token outside the allowed set at -inf."""
    temps, top_k, top_p, greedy = _row_params(ops, sampling)
    z = ops.to_f64(logits) / temps
    filtered = [(s.top_k > 0 or s.top_p < 1.0) and not g for s, g in zip(sampling, greedy, strict=True)]
    if not any(filtered):
        return z
    return ops.xp.where(z >= _threshold(ops, z, top_k, top_p), z, ops.f64(-math.inf))


def _logsumexp(ops: _Ops, z: Any) -> Any:
    peak = ops.max(z)
    return peak + ops.xp.log(ops.sum(ops.xp.exp(z - peak)))


def _log_softmax(ops: _Ops, z: Any) -> Any:
    return z - _logsumexp(ops, z)


def filtered_logprobs(xp: Any, logits: Any, sampling: Sequence[SamplingParams]) -> Any:
    """Log-probabilities of logits/T renormalised over the allowed set; -inf outside it.

    `logits` is [rows, vocab] (any float dtype); `sampling` has one entry per row. Greedy rows
    (T = 0) get the plain log-softmax of the raw logits, with no filtering.
    """
    ops = _Ops(xp, logits)
    return _log_softmax(ops, _allowed_z(ops, logits, sampling))


def sample_step(
    xp: Any,
    logits: Any,
    seeds: Sequence[int],
    sample_indices: Sequence[int],
    positions: Sequence[int],
    sampling: Sequence[SamplingParams],
) -> tuple[Any, Any]:
    """Choose one token per row by seeded Gumbel-max; returns (token_ids int64, logprobs float64).

    `positions[i]` is the number of completion tokens row i has produced before this one.
    """
    ops = _Ops(xp, logits)
    z = _allowed_z(ops, logits, sampling)
    noise = gumbel_noise(xp, seeds, sample_indices, positions, ops.arange(logits.shape[-1]))
    if any(s.temperature == 0.0 for s in sampling):
        stochastic = ops.f64([0.0 if s.temperature == 0.0 else 1.0 for s in sampling])[:, None]
        noise = noise * stochastic
    # The argmax reads z + G, not logprob + G: z is exact on every backend, the logsumexp is not.
    tokens = ops.argmax(z + noise)
    chosen = ops.take(z, tokens[:, None])[:, 0] - _logsumexp(ops, z)[:, 0]
    return tokens, chosen
