"""The validator's scoring agrees with the dense definition (tests/trust/reference_scoring.py) on
every row, whichever of its shortcuts a row takes: noise drawn only for candidate tokens (peaked
rows) or for all (flat rows), top-k/top-p cuts found in a sorted prefix or in whole sorted rows."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from ml.rescore import MARGIN_WINDOW, JobRules, _Rows, _score_rows
from shared.protocol import SamplingParams
from shared.sampling import sample_step
from tests.trust.reference_scoring import dense_scores

SETTINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 0.0},
    {"temperature": 1.3, "top_p": 0.95, "top_k": 20},
    {"temperature": 1.0, "top_p": 0.999},
    {"temperature": 0.5, "top_k": 700},
    {"temperature": 0.05, "top_k": 50},
    {"temperature": 2.0, "top_p": 0.5},
]


def _logits(rows: int, vocab: int, peaked: bool, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float32)
    if not peaked:
        return logits * 0.5
    # a trained model's shape: a handful of plausible tokens far above a long tail
    logits = logits * 2 - 12
    for r in range(rows):
        hot = torch.randint(0, vocab, (1 + r % 6,), generator=generator)
        logits[r, hot] = torch.rand(len(hot), generator=generator) * 4 + 8
    return logits


def _claims(logits: Any, sampling: list[SamplingParams], positions: list[int], seed: int) -> list[int]:
    """Per row: the sampler's pick, its runner-up, or a random token, in turn."""
    generator = torch.Generator().manual_seed(seed)
    picks, _ = sample_step(
        torch, logits, [s.seed for s in sampling], [0] * len(sampling), positions, sampling
    )
    tokens = []
    for r, pick in enumerate(picks.tolist()):
        if r % 3 == 0:
            tokens.append(int(pick))
        elif r % 3 == 1:
            tokens.append(int(logits[r].topk(2).indices[1]))
        else:
            tokens.append(int(torch.randint(0, logits.shape[-1], (1,), generator=generator)))
    return tokens


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("peaked", [True, False], ids=["peaked", "flat"])
@pytest.mark.parametrize("eps", [0.00025, 0.3])
def test_scoring_matches_the_dense_definition(peaked: bool, eps: float, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    n, vocab = 84, 6000
    logits = _logits(n, vocab, peaked, seed=int(eps * 1e5) + peaked)
    sampling = [SamplingParams(seed=1000 + r, max_tokens=64, **SETTINGS[r % len(SETTINGS)]) for r in range(n)]
    positions = [r % 17 for r in range(n)]
    tokens = _claims(logits, sampling, positions, seed=3)
    suppress = [
        frozenset({tokens[r], (tokens[r] + 1) % vocab}) if r % 29 == 5 else frozenset() for r in range(n)
    ]
    rows = _Rows()
    for r in range(n):
        rows.add(JobRules(sampling[r], 0, 64, frozenset()), positions[r], tokens[r], suppress[r], eps)
    masked = logits.clone()
    for r, ids in enumerate(suppress):
        masked[r, sorted(ids)] = -math.inf
    margin, low, high = dense_scores(masked, sampling, [0] * n, positions, tokens, [eps] * n)
    got = _score_rows(logits.to(device), rows)
    window = max(MARGIN_WINDOW, 4 * eps)
    for r in range(n):
        want = min(margin[r], window)
        assert got.margin[r] == pytest.approx(want, abs=1e-9), (r, sampling[r])
        # logprob ranges: a float32 log-sum-exp over the vocabulary, off by about 1e-6 at most
        assert got.low[r] == pytest.approx(low[r], abs=2e-6), (r, sampling[r])
        assert got.high[r] == pytest.approx(high[r], abs=2e-6), (r, sampling[r])
    # the rows really cover both outcomes: claims that pass and claims that fail
    assert any(m >= -2 * eps for m in got.margin) and any(m < -2 * eps for m in got.margin)
