"""Test-time-compute strategies that need a model, computed by evaluation jobs on train workers
beside the campaign's own (pass@1, majority, shortest-of-n, pass@n in coordinator/campaigns/
strategies.py, which the API serves without loading any model):

* `fuzzy_majority`: majority vote over clusters of sentence embeddings of the final answers (or
  whole completions), so answers written differently but alike vote together;
* `likelihood`: per problem, the sample the scorer model (by default the evaluated model) finds
  most likely, by mean token log-likelihood of its completion.

Like the campaign strategies, both choose without looking at verdicts; the chosen sample's verdict
scores the problem. Cost is completion tokens generated per problem, all samples counted (the
scorer's prefill is reported apart, as `scored_tokens_per_problem`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.campaigns.strategies import answer_key
from coordinator.pipeline.ops.selection import ScoredModel
from shared.pipeline_types import FuzzyMajority, LikelihoodSelect
from shared.protocol import StrategyReport


@dataclass(frozen=True)
class Sample:
    problem: str
    record: dict[str, Any]  # an export record: messages, completion, completion_tokens, passed

    @property
    def text(self) -> str:
        return str(self.record["completion"])

    @property
    def tokens(self) -> int:
        return int(self.record.get("completion_tokens") or 0)

    @property
    def passed(self) -> bool:
        return bool(self.record["passed"])


def samples_of(records: Sequence[dict[str, Any]]) -> dict[str, list[Sample]]:
    """Samples by problem, in sample order."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (str(r["problem_id"]), int(r.get("sample_index", 0)))):
        groups[str(r["problem_id"])].append(Sample(str(r["problem_id"]), r))
    return groups


def _report(name: str, groups: dict[str, list[Sample]], chosen: dict[str, Sample]) -> StrategyReport:
    n = len(groups)
    tokens = sum(s.tokens for g in groups.values() for s in g) / max(1, n)
    accuracy = sum(chosen[p].passed for p in groups) / max(1, n)
    return StrategyReport(strategy=name, problems=n, accuracy=accuracy, tokens_per_problem=tokens)


# --------------------------------------------------------------------------- fuzzy majority


def _final_answer(text: str) -> str | None:
    from verifier.math import final_answer

    return final_answer(text)[0]


def clusters(vectors: Any, threshold: float) -> list[int]:
    """Leader clustering in order: each row joins the first cluster whose leader (its first row) has
    cosine similarity >= threshold with it, else leads a new one. Rows must be unit vectors."""
    import numpy as np

    leaders: list[int] = []
    labels: list[int] = []
    for i in range(len(vectors)):
        sims = [float(np.dot(vectors[i], vectors[j])) for j in leaders]
        match = next((k for k, sim in enumerate(sims) if sim >= threshold), None)
        if match is None:
            leaders.append(i)
            match = len(leaders) - 1
        labels.append(match)
    return labels


def _vote(group: list[Sample], texts: list[str | None], vectors: Any, threshold: float) -> Sample:
    voters = [i for i, t in enumerate(texts) if t is not None]
    if not voters:
        return group[0]
    labels = clusters(vectors[voters], threshold)
    sizes = [labels.count(k) for k in range(max(labels) + 1)]
    winner = sizes.index(max(sizes))  # ties: the cluster whose leader came first
    return group[voters[labels.index(winner)]]


def fuzzy_majority(
    groups: dict[str, list[Sample]],
    step: FuzzyMajority,
    embed: Callable[[list[str], int, str], tuple[str, Any]],
) -> tuple[StrategyReport, str]:
    """The strategy's report and the name of the embedding it used."""
    import numpy as np

    texts = {
        p: [(_final_answer(s.text) if step.text == "answer" else s.text) for s in g]
        for p, g in groups.items()
    }
    flat = [t for ts in texts.values() for t in ts if t is not None]
    name, vectors = embed(flat, step.batch_size, step.device) if flat else ("none", np.zeros((0, 1)))
    vectors, at, chosen = np.asarray(vectors, dtype=np.float64), 0, {}
    for p, group in groups.items():
        rows = np.zeros((len(group), vectors.shape[1]))
        for i, t in enumerate(texts[p]):
            if t is not None:
                rows[i], at = vectors[at], at + 1
        chosen[p] = _vote(group, texts[p], rows, step.threshold)
    return _report("fuzzy_majority", groups, chosen), name


# --------------------------------------------------------------------------- likelihood


def likelihood(
    groups: dict[str, list[Sample]], step: LikelihoodSelect, scorer: ScoredModel
) -> tuple[StrategyReport, float]:
    """The strategy's report and the tokens the scorer read per problem (prompts and completions)."""
    flat = [s for g in groups.values() for s in g]
    examples = [scorer.encode(s.record) for s in flat]
    per_token = scorer.losses(examples, step.batch_size)
    score = {id(s): -sum(t) / len(t) if t else float("-inf") for s, t in zip(flat, per_token, strict=True)}
    chosen = {}
    for p, group in groups.items():
        answered = [s for s in group if answer_key(s.text) is not None] or group
        chosen[p] = max(answered, key=lambda s: score[id(s)])  # ties: the earliest sample
    read = sum(len(e.prompt_ids) + len(e.completion_ids) for e in examples) / max(1, len(groups))
    return _report("likelihood", groups, chosen), read
