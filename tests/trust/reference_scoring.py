"""The re-scoring rule written out densely: every token of every row, no prefixes, no candidates.

This is the definition the validator's scoring (ml/rescore.py) must agree with; it
draws noise for the whole vocabulary and builds both allowed sets from full sorts, so it is slow
and obviously right. Returns per row (margin, lowest honest logprob, highest honest logprob)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from shared.protocol import SamplingParams
from shared.sampling import filtered_logprobs, gumbel_noise


def dense_scores(
    logits: Any,
    sampling: Sequence[SamplingParams],
    sample_indices: Sequence[int],
    positions: Sequence[int],
    tokens: Sequence[int],
    eps: Sequence[float],
) -> tuple[list[float], list[float], list[float]]:
    raw = logits.to(torch.float64)
    greedy = torch.tensor([s.temperature == 0.0 for s in sampling])[:, None]
    temps = torch.tensor([s.temperature or 1.0 for s in sampling], dtype=torch.float64)[:, None]
    z = raw / temps
    strict, loose = _allowed_sets(raw, z, sampling, eps, temps)
    vocab = torch.arange(z.shape[-1], dtype=torch.int64)
    noise = gumbel_noise(torch, [s.seed for s in sampling], sample_indices, positions, vocab)
    scores = z + torch.where(greedy, 0.0, noise)
    claimed = torch.tensor(list(tokens), dtype=torch.int64)[:, None]
    mine = torch.zeros_like(loose).scatter_(-1, claimed, True)
    own = scores.gather(-1, claimed)[:, 0]
    rival = torch.where(strict & ~mine, scores, -math.inf).max(dim=-1).values
    margin = torch.where(rival == -math.inf, math.inf, (own - rival) * temps[:, 0])
    margin = torch.where(loose.gather(-1, claimed)[:, 0], margin, -math.inf)
    high = _logprob_within(z, strict | mine, claimed)
    low = _logprob_within(z, loose | mine, claimed)
    return margin.tolist(), low, high


def _allowed_sets(
    raw: Any, z: Any, sampling: Sequence[SamplingParams], eps: Sequence[float], temps: Any
) -> Any:
    finite = torch.isfinite(z)
    strict, loose = finite.clone(), finite.clone()
    for k, s in enumerate(sampling):
        if s.temperature == 0 or (s.top_k == 0 and s.top_p >= 1.0):
            continue
        shift = 2 * eps[k] / float(temps[k, 0])
        delta = math.expm1(shift) if s.top_p < 1.0 else 0.0
        wide = s.model_copy(update={"top_p": min(1.0, s.top_p + delta)})
        narrow = s.model_copy(update={"top_p": max(s.top_p - delta, 1e-12)})
        row = raw[k : k + 1]
        floor_wide = z[k][torch.isfinite(filtered_logprobs(torch, row, [wide]))[0]].min()
        floor_narrow = z[k][torch.isfinite(filtered_logprobs(torch, row, [narrow]))[0]].min()
        loose[k] = finite[k] & (z[k] >= floor_wide - shift)
        strict[k] = finite[k] & ((z[k] >= floor_narrow) | (z[k] == z[k].max()))
    return strict, loose


def _logprob_within(z: Any, allowed: Any, claimed: Any) -> list[float]:
    kept = torch.where(allowed, z, -math.inf)
    return (kept - torch.logsumexp(kept, dim=-1, keepdim=True)).gather(-1, claimed)[:, 0].tolist()
