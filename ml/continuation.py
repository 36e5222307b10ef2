"""Continuing a text from a prefix with the seeded sampler: what the pipeline's refinement ops use
to re-sample a span of a trace or to write a condensed one.

Every token comes from shared/sampling.py's seeded Gumbel-max (through ml.sampling.sample_rows),
so a refinement is a function of (model, prompt, prefix, seed, sample index): run again, a job
re-creates the same rewrites. Rows are left-padded and decoded together with a KV cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ml.sampling import sample_rows
from shared.protocol import SamplingParams


@dataclass(frozen=True)
class Continuation:
    token_ids: list[int]  # the new tokens, without the stop token that ended them
    stopped: bool  # True: a stop token ended it; False: it ran into its token limit


def seed_of(*parts: object) -> int:
    """A 62-bit seed from any labels (a step's seed, a trace id, a span): stable across processes."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def _left_padded(rows: Sequence[list[int]], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def continue_rows(
    model: Any,
    contexts: Sequence[list[int]],
    offsets: Sequence[int],
    seeds: Sequence[int],
    sampling: SamplingParams,
    stops: frozenset[int],
    pad_id: int,
) -> list[Continuation]:
    """Sample up to `sampling.max_tokens` new tokens after each of `contexts` (prompt + prefix ids).
    `offsets[i]` is how many completion tokens row i's prefix already holds: the sampler's
    position counter starts there, as it would have in the worker that wrote the trace."""
    import torch

    device = next(model.parameters()).device
    ids, mask, positions = _left_padded(contexts, pad_id)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    out: list[list[int]] = [[] for _ in contexts]
    live = list(range(len(contexts)))
    cache = None
    with torch.inference_mode():
        for step in range(sampling.max_tokens):
            result = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = result.past_key_values
            tokens, _ = sample_rows(
                result.logits[:, -1],
                live,
                [frozenset()] * len(live),
                [seeds[i] for i in live],
                [0] * len(live),
                [offsets[i] + step for i in live],
                [sampling] * len(live),
            )
            for i, token in zip(live, tokens, strict=True):
                out[i].append(token)
            live = [i for i in live if out[i][-1] not in stops]
            if not live:
                break
            ids = torch.tensor([[row[-1]] for row in out], dtype=torch.long, device=device)
            mask = torch.cat([mask, torch.ones((len(out), 1), dtype=torch.long, device=device)], dim=1)
            positions = positions[:, -1:] + 1
    return [_finished(row, stops) for row in out]


def _finished(row: list[int], stops: frozenset[int]) -> Continuation:
    if row and row[-1] in stops:
        return Continuation(row[:-1], True)
    return Continuation(row, False)
