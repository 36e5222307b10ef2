"""Per-worker sequential evidence (docs/trust.md, "Evidence over a worker's lifetime").

One validation decides one trace within a tolerance; what it cannot decide, a worker's validated
positions decide together. Every validated position falls in one of `BINS` cells: its margin
(forced; the claimed token trailing the validator's perturbed argmax by a share of 2 eps; or
leading it by one) crossed with its logprob residual (how far the claimed logprob lies outside
the honest range, as a share of eps). Honest workers fill the cells as a calibration measured
(`honest_distribution`); a cheater's positions come, some share `w` of the time, from elsewhere.

For each alternative in `ALTERNATIVES` (a group of suspicious cells, and a share w), a CUSUM over
validations of the log-likelihood ratio "a share w of positions falls, evenly, in the group's
cells" against "every position is honest". A CUSUM alarms as soon as the ratio summed from some
validation j onwards reaches the threshold h. Under the honest distribution the ratio's product
from any fixed j is a nonnegative martingale of mean 1, so by Ville's inequality it ever reaches
e^h with probability at most e^-h; a union over the K alternatives and the V validations a worker
makes in its lifetime bounds the false alarm per lifetime by K * V * e^-h (`false_alarm`), and
`threshold` inverts that. The bound holds as far as positions are independent draws from the
calibrated distribution: calibrate on honest traces of the model, dtypes and settings used.

Pure arithmetic, no torch: the model code (ml/rescore.py) fills the cells, the coordinator weighs
them, the benchmark simulates workers with the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Margin classes: forced; trailing by a share of 2 eps in (0.5, 1] (or failed), (0.2, 0.5],
# (0.05, 0.2], (0, 0.05]; leading by a share of 2 eps in [0, 0.05), [0.05, 0.2), [0.2, 1), >= 1.
TRAILING = (0.05, 0.2, 0.5)
LEADING = (0.05, 0.2, 1.0)
MARGIN_CLASSES = 1 + len(TRAILING) + 1 + len(LEADING) + 1
# Residual classes: logprob outside its honest range by a share of eps in [0, .01), [.01, .05),
# [.05, .2), [.2, .5), >= .5.
RESIDUAL = (0.01, 0.05, 0.2, 0.5)
RESIDUAL_CLASSES = len(RESIDUAL) + 1
BINS = MARGIN_CLASSES * RESIDUAL_CLASSES

# What a cheater does differently, some share w of the time: its claimed token trails the
# validator's pick (another model, precision or temperature picks other tokens at near-ties), or
# its logprob lies off the honest range by 5% of eps or more (edited or recomputed logprobs).
GROUPS = ("trailing", "residual")
SHARES = (0.01, 0.05, 0.25)
ALTERNATIVES = tuple((group, w) for group in GROUPS for w in SHARES)
PSEUDO_COUNT = 0.5  # per cell, so a cell the calibration never saw is rare, not impossible

# Without a calibration: a deliberately wide honest distribution (margin class x residual class),
# which gives near-ties and logprob residuals far more mass than any honest pairing measured in
# bench/RESULTS.md, so only workers far outside it accumulate evidence (docs/trust.md).
DEFAULT_MARGIN = (0.05, 0.01, 0.02, 0.03, 0.04, 0.05, 0.05, 0.15, 0.60)
DEFAULT_RESIDUAL = (0.40, 0.20, 0.20, 0.12, 0.08)


def _class(value: float, edges: Sequence[float]) -> int:
    """Index of the first edge above `value` (len(edges) when none is)."""
    for i, edge in enumerate(edges):
        if value < edge:
            return i
    return len(edges)


def margin_class(margin: float, eps: float, forced: bool) -> int:
    if forced:
        return 0
    if math.isnan(margin):  # not scored (a failure before scoring): the most trailing class
        return 1
    share = margin / (2 * eps) if eps > 0 else math.copysign(math.inf, margin)
    if share < 0:  # trailing: the most trailing class first
        return 1 + len(TRAILING) - _class(-share, TRAILING)
    return 2 + len(TRAILING) + _class(share, LEADING)


def cell(margin: float, residual: float, eps: float, forced: bool) -> int:
    """The cell of one position: margin in logit units, residual (the logprob's distance outside its
    honest range over the allowance's factor) in logit units too."""
    share = residual / eps if eps > 0 else (0.0 if residual <= 0 else math.inf)
    return margin_class(margin, eps, forced) * RESIDUAL_CLASSES + _class(share, RESIDUAL)


def histogram(cells: Sequence[int]) -> list[int]:
    counts = [0] * BINS
    for c in cells:
        counts[c] += 1
    return counts


def in_group(group: str, index: int) -> bool:
    margin, residual = divmod(index, RESIDUAL_CLASSES)
    if group == "trailing":
        return 1 <= margin <= len(TRAILING) + 1
    return residual >= 2


def default_distribution() -> list[float]:
    return [m * r for m in DEFAULT_MARGIN for r in DEFAULT_RESIDUAL]


def honest_distribution(counts: Sequence[int] | None) -> list[float]:
    """Cell probabilities from a calibration's counts (plus PSEUDO_COUNT each), or the wide default
    without one."""
    if not counts or len(counts) != BINS:
        return default_distribution()
    total = sum(counts) + PSEUDO_COUNT * BINS
    return [(c + PSEUDO_COUNT) / total for c in counts]


def cell_ratios(honest: Sequence[float]) -> list[list[float]]:
    """Per alternative (group, w), per cell: log of (1 - w) + w * q / honest, with q uniform over
    the group's cells: a share w of positions falls in the group's cells, evenly."""
    rows = []
    for group, w in ALTERNATIVES:
        cells = [i for i in range(BINS) if in_group(group, i)]
        q = 1.0 / len(cells)
        rows.append([math.log(1 - w + (w * q / p if i in cells else 0.0)) for i, p in enumerate(honest)])
    return rows


def log_ratios(counts: Sequence[int], ratios: Sequence[Sequence[float]]) -> list[float]:
    """Per alternative, the log-likelihood ratio of one validation's cells."""
    return [sum(n * r for n, r in zip(counts, row, strict=True) if n) for row in ratios]


def advance(statistics: Sequence[float], ratios: Sequence[float]) -> list[float]:
    """One CUSUM step per alternative: the largest sum over validations ending here, or 0."""
    if len(statistics) != len(ratios):
        statistics = [0.0] * len(ratios)
    return [max(0.0, s + r) for s, r in zip(statistics, ratios, strict=True)]


def threshold(false_alarm: float, lifetime: int) -> float:
    """h with K * lifetime * e^-h = false_alarm: the bound per worker lifetime of `lifetime`
    validations."""
    return math.log(len(ALTERNATIVES) * lifetime / false_alarm)


def false_alarm(h: float, validations: int) -> float:
    """The bound on an honest worker's chance of an alarm within `validations` validations."""
    return min(1.0, len(ALTERNATIVES) * max(validations, 1) * math.exp(-h))
