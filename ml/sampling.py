"""The seeded sampler on torch tensors: shared/sampling.py's rule applied to a batch of logits,
and the raw log-softmax that forced tokens are reported (and re-scored) with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.protocol import SamplingParams
from shared.sampling import sample_step


def sample_rows(
    logits: Any,
    rows: Sequence[int],
    suppress: Sequence[frozenset[int]],
    seeds: Sequence[int],
    sample_indices: Sequence[int],
    positions: Sequence[int],
    sampling: Sequence[SamplingParams],
) -> tuple[list[int], list[float]]:
    """One token and its logprob for each of `rows` of `logits` ([batch, vocab], any device), by
    the seeded Gumbel-max of shared/sampling.py, with each row's `suppress` ids left out (budget
    forcing's end-of-thinking ban); the other arguments are per row too."""
    import torch

    picked = logits[torch.tensor(list(rows), device=logits.device)]  # a copy: masking it is safe
    for k, ids in enumerate(suppress):
        if ids:
            picked[k, sorted(ids)] = float("-inf")
    tokens, logprobs = sample_step(
        torch, picked, seeds=seeds, sample_indices=sample_indices, positions=positions, sampling=sampling
    )
    return [int(t) for t in tokens.tolist()], [float(x) for x in logprobs.tolist()]


def raw_logprobs(logits: Any, rows: Sequence[int], tokens: Sequence[int]) -> list[float]:
    """The model's own log-softmax (raw logits, float64: no temperature, no filtering) of
    `tokens[i]` at row `rows[i]`: the logprob of a token the budget rule forced."""
    import torch

    index = torch.tensor(list(rows), device=logits.device)
    ids = torch.tensor(list(tokens), device=logits.device)
    logprobs = torch.log_softmax(logits[index].to(torch.float64), dim=-1)
    return [float(x) for x in logprobs.gather(-1, ids[:, None])[:, 0].tolist()]
