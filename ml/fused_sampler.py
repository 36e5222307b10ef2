"""shared/sampling.py's seeded Gumbel-max as one Triton kernel per decode step, bit-identical to it.

For rows the sampler leaves unfiltered (no top-k, no top-p; any temperature, 0 included) a token is

    argmax over the vocabulary of  logits/T + G(level(row keys, token id))      (float64)

and the whole rule fits one pass over a row's logits: each program reads one row in blocks, hashes
(row keys, token id) to the noise level, evaluates G from that level with the same IEEE-exact
operations as `shared.sampling._gumbel_of_level` (frexp by bit manipulation, the 12-term atanh
series; no FMA contraction: `enable_fp_fusion=False`), and keeps a running argmax (first index on
ties, as torch's) and a running log-sum-exp for the logprob. The row keys are `row_keys` of (seed,
sample index, position), computed in the kernel from the position held in device memory, so a
captured CUDA graph replays the step with no host work.

Filtered rows (top-k/top-p) and budget-forced ones stay on `ml.sampling.sample_rows`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from shared.sampling import _ATANH_COEFFS, _LN2, _SQRT_HALF, _UNIFORM_BITS

BLOCK = 2048
assert _UNIFORM_BITS == 24  # the kernel's level shift (8) and scale (2**-24) are written for it


def available() -> bool:
    """Whether Triton imports (a GPU needs it; `TRITON_INTERPRET=1` runs the kernel on the CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def row_words(seeds: list[int], sample_indices: list[int]) -> list[list[int]]:
    """Per row, the four 32-bit words `row_keys` hashes before the position: seed and sample index,
    low half then high half (the kernel holds them as uint32)."""
    mask = 0xFFFFFFFF
    return [
        [s & mask, (s >> 32) & mask, i & mask, (i >> 32) & mask]
        for s, i in zip(seeds, sample_indices, strict=True)
    ]


class RowParams:
    """Device tensors of a batch's per-row sampling constants, made once per batch."""

    def __init__(
        self, device: Any, seeds: list[int], sample_indices: list[int], temperatures: list[float]
    ) -> None:
        import torch

        # int32 holds each uint32 word's bits (the kernel bitcasts them back)
        words = [
            [w - (1 << 32) if w >= 1 << 31 else w for w in row] for row in row_words(seeds, sample_indices)
        ]
        self.words = torch.tensor(words, dtype=torch.int32, device=device)
        greedy = [t == 0.0 for t in temperatures]
        temps = [1.0 if g else t for g, t in zip(greedy, temperatures, strict=True)]
        self.temps = torch.tensor(temps, dtype=torch.float64, device=device)
        self.stochastic = torch.tensor(
            [0.0 if g else 1.0 for g in greedy], dtype=torch.float64, device=device
        )
        consts = [*_ATANH_COEFFS, _LN2, _SQRT_HALF]
        self.consts = torch.tensor(consts, dtype=torch.float64, device=device)


def sample_into(logits: Any, params: RowParams, position: Any, tokens: Any, logprobs: Any) -> None:
    """Write each row's token (int64) and logprob (float64) for `logits` [rows, vocab] at the
    completion position held in the one-element int64 tensor `position` (all on one device)."""
    from ml.fused_sampler_kernel import sample_kernel

    rows, vocab = logits.shape
    # The noise must round exactly as the CPU path does: no fused multiply-adds.
    options: dict[str, Any] = {} if interpreted() else {"enable_fp_fusion": False}
    block = min(BLOCK, _pow2(vocab))
    sample_kernel[(rows,)](logits, logits.stride(0), vocab, params.words, params.temps, params.stochastic,
                           position, params.consts, tokens, logprobs, BLOCK=block, **options)  # fmt: skip


def _pow2(n: int) -> int:
    return 1 << max(4, math.ceil(math.log2(max(1, n))))
