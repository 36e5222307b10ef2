"""Test-time compute beside majority and shortest-of-n: fuzzy majority over answer embeddings and
selection by the student's own likelihood, computed by an evaluation job on the tiny model."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from coordinator.campaigns.strategies import Sample as CampaignSample
from coordinator.campaigns.strategies import majority
from coordinator.pipeline.ops import ttc
from ml import embeddings
from shared.assets import TINY_MODEL_NAME
from shared.pipeline_types import FuzzyMajority
from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import (
    create_job,
    download,
    gold,
    lease_all,
    problem_set,
    submit,
    trace,
    wait_for,
    worked,
)


def _odd_wrong(j: dict[str, Any]) -> str:
    """Wrong, in a format the tiny model never saw: unlikely under it."""
    return f"Result: \\boxed{{{gold(j) + 1}}}"


def test_evaluation_reports_fuzzy_majority_and_likelihood_with_their_cost(api: Api) -> None:
    spec = {
        "kind": "evaluate",
        "model": TINY_MODEL_NAME,
        "problem_set_id": problem_set(api, 2),
        "samples_per_problem": 3,
        "poll_s": 0.05,
        "fuzzy_majority": {"device": "cpu"},
        "likelihood": {"device": "cpu"},
    }
    created = create_job(api, spec)
    wait_for(api, created["id"], {"waiting"})
    volunteer = api.volunteer()
    jobs = sorted(
        lease_all(api, volunteer), key=lambda j: (j["spec"]["problem_id"], j["spec"]["sample_index"])
    )
    # Problem 0: right, right, odd wrong. Problem 1: odd wrong twice (the majority), then right.
    texts: list[Callable[[dict[str, Any]], str]] = [
        worked,
        worked,
        _odd_wrong,
        _odd_wrong,
        _odd_wrong,
        worked,
    ]
    submit(api, volunteer, [trace(j, text(j)) for j, text in zip(jobs, texts, strict=True)])
    api.drain()
    done = wait_for(api, created["id"], {"done"})
    strategies = done["metrics"]["strategies"]
    assert strategies["pass@1"]["accuracy"] == 0.5 and strategies["majority"]["accuracy"] == 0.5
    assert strategies["fuzzy_majority"]["accuracy"] == 0.5  # distinct numbers do not merge at 0.9
    assert strategies["likelihood"]["accuracy"] == 1.0  # the student's own format is the likely one
    generated = strategies["majority"]["tokens_per_problem"]
    assert (
        strategies["likelihood"]["tokens_per_problem"] == strategies["fuzzy_majority"]["tokens_per_problem"]
    )
    assert strategies["likelihood"]["tokens_per_problem"] == generated == 12.0  # 3 samples x 4 tokens
    assert done["metrics"]["fuzzy_majority_embedding"] == embeddings.available()
    assert done["metrics"]["likelihood_model"] == TINY_MODEL_NAME
    assert done["metrics"]["likelihood_scored_tokens_per_problem"] > generated
    report = json.loads(download(api, done["outputs"]["report"]["sha256"]))
    names = [s["strategy"] for s in report["strategies"]]
    assert names == ["pass@1", "majority", "shortest", "pass@n", "fuzzy_majority", "likelihood"]


def _records(answers: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    return [
        {
            "problem_id": "p",
            "sample_index": i,
            "completion": f"\\boxed{{{a}}}",
            "completion_tokens": 5,
            "passed": ok,
        }
        for i, (a, ok) in enumerate(answers)
    ]


CITIES = [
    ("Paris, France", True),
    ("the city of Paris", True),
    ("Lyon", False),
    ("Lyon", False),
    ("paris", True),
]


def test_fuzzy_majority_merges_answers_that_mean_the_same() -> None:
    records = _records(CITIES)
    problem = uuid.uuid4()
    exact = majority(
        [
            CampaignSample(problem_id=problem, text=r["completion"], tokens=5, passed=r["passed"])
            for r in records
        ]
    )
    assert not exact.passed  # "Lyon" is the only answer written twice alike
    report, name = ttc.fuzzy_majority(
        ttc.samples_of(records), FuzzyMajority(threshold=0.85, device="cpu"), embeddings.embed
    )
    assert name == embeddings.MINILM and report.accuracy == 1.0 and report.tokens_per_problem == 25.0


def test_the_hashed_fallback_groups_equal_spellings_only() -> None:
    vectors = embeddings.embed_hashed(["Paris", "Paris", "Lyon", "paris"])
    assert ttc.clusters(vectors, 0.99) == [0, 0, 1, 2]
    again = embeddings.embed_hashed(["Paris", "Paris", "Lyon", "paris"])
    assert (vectors == again).all()  # deterministic: no model, no seed
