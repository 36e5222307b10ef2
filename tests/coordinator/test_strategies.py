"""Majority vote and shortest-of-n choose blind to verdicts; reports carry accuracy and cost."""

from __future__ import annotations

import uuid

from coordinator.campaigns.strategies import Sample, answer_key, majority, report, shortest

P1, P2 = uuid.uuid4(), uuid.uuid4()


def _s(problem: uuid.UUID, answer: str, tokens: int, passed: bool) -> Sample:
    return Sample(problem_id=problem, text=f"work \\boxed{{{answer}}}", tokens=tokens, passed=passed)


def test_equal_answers_vote_together() -> None:
    assert answer_key("\\boxed{0.5}") == answer_key("\\boxed{\\frac{1}{2}}") == answer_key("\\boxed{1/2}")
    assert answer_key("no answer") is None


def test_majority_picks_the_most_common_answer_even_if_wrong() -> None:
    group = [_s(P1, "7", 10, True), _s(P1, "8", 12, False), _s(P1, "8", 30, False)]
    assert majority(group).text.endswith("{8}")
    assert not majority(group).passed


def test_shortest_ignores_unanswered_samples() -> None:
    group = [Sample(P1, "rambling", 3, False), _s(P1, "7", 10, True), _s(P1, "9", 20, False)]
    assert shortest(group).tokens == 10


def test_report_accuracy_and_cost() -> None:
    samples = [_s(P1, "7", 10, True), _s(P1, "7", 20, True), _s(P1, "8", 30, False)]
    samples += [_s(P2, "1", 5, False), _s(P2, "2", 50, True), _s(P2, "1", 45, False)]
    rows = {r.strategy: r for r in report(samples)}
    assert rows["pass@1"].accuracy == (2 / 3 + 1 / 3) / 2
    assert rows["majority"].accuracy == 0.5
    assert rows["shortest"].accuracy == 0.5
    assert rows["pass@n"].accuracy == 1.0
    assert rows["majority"].tokens_per_problem == 80.0
    assert rows["pass@1"].tokens_per_problem == 80.0 / 3
