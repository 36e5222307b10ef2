"""Aggregating a campaign's n samples per problem: majority vote and shortest-of-n.

Both choose an answer without looking at correctness (the choice uses only the completions);
the verdict of the chosen trace then says whether the strategy got the problem right.
`pass@1` (mean over samples) and `pass@n` (any sample right, an oracle) bracket them.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from coordinator.campaigns import repository
from coordinator.results.models import ACCEPTED
from shared.protocol import StrategyReport


@dataclass(frozen=True)
class Sample:
    problem_id: uuid.UUID
    text: str
    tokens: int
    passed: bool


def answer_key(text: str) -> str | None:
    """A canonical form of a completion's final answer, so equal answers vote together."""
    from verifier.math import exact_value, final_answer

    answer, _ = final_answer(text)
    if answer is None:
        return None
    value = exact_value(answer)
    return str(value) if value is not None else answer.replace(" ", "")


def majority(samples: Sequence[Sample]) -> Sample:
    keys = [answer_key(s.text) for s in samples]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return samples[0]
    top = max(votes.values())
    # Ties go to the answer whose first occurrence came first: deterministic, blind to verdicts.
    winner = next(k for k in keys if k is not None and votes[k] == top)
    return samples[keys.index(winner)]


def shortest(samples: Sequence[Sample]) -> Sample:
    answered = [s for s in samples if answer_key(s.text) is not None] or list(samples)
    return min(answered, key=lambda s: s.tokens)


def report(samples: Sequence[Sample]) -> list[StrategyReport]:
    groups: dict[uuid.UUID, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.problem_id].append(sample)
    n = len(groups)
    if n == 0:
        return []
    tokens = sum(s.tokens for s in samples) / n
    per_sample = tokens / max(1.0, len(samples) / n)

    def accuracy(pick: list[float]) -> float:
        return sum(pick) / n

    rows = [
        ("pass@1", accuracy([sum(s.passed for s in g) / len(g) for g in groups.values()]), per_sample),
        ("majority", accuracy([float(majority(g).passed) for g in groups.values()]), tokens),
        ("shortest", accuracy([float(shortest(g).passed) for g in groups.values()]), tokens),
        ("pass@n", accuracy([float(any(s.passed for s in g)) for g in groups.values()]), tokens),
    ]
    return [
        StrategyReport(strategy=name, problems=n, accuracy=acc, tokens_per_problem=cost)
        for name, acc, cost in rows
    ]


def campaign_report(session: Session, campaign_id: uuid.UUID) -> list[StrategyReport]:
    rows = repository.verified_samples(session, campaign_id)
    return report([Sample(problem_id=p, text=t, tokens=n, passed=s == ACCEPTED) for p, t, n, s in rows])
