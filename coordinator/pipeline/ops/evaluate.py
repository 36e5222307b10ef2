"""Evaluation reports: accuracy of a model under each test-time-compute strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.protocol import StrategyReport


def summarize(reports: Sequence[StrategyReport]) -> dict[str, Any]:
    """Job metrics: `accuracy` is pass@1 (mean over samples); each strategy's accuracy and cost."""
    by_name = {r.strategy: r for r in reports}
    first = by_name.get("pass@1")
    return {
        "problems": first.problems if first else 0,
        "accuracy": first.accuracy if first else None,
        "strategies": {
            r.strategy: {"accuracy": r.accuracy, "tokens_per_problem": r.tokens_per_problem} for r in reports
        },
    }


def document(
    model: str, problem_set: str, campaign_id: str, reports: Sequence[StrategyReport], spec: dict[str, Any]
) -> dict[str, Any]:
    """The report artifact: what was measured, on what, how, and the table."""
    return {
        "kind": "evaluation-report",
        "model": model,
        "problem_set_id": problem_set,
        "campaign_id": campaign_id,
        "spec": spec,
        "strategies": [r.model_dump(mode="json") for r in reports],
        "summary": summarize(reports),
    }
