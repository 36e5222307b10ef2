"""docs/problems.md "verifiers environments": an installed environment's single-turn tasks become a
problem set (API and CLI), and its reward functions score the returned completions inside the
verifier sandbox during verification, with each reward function's value in the stored verdict."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.problems.models import Problem
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import trace_for
from tests.verifier.environment_venv import environment_python, sandbox_python

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "Answer with the number in \\boxed{}."


@pytest.fixture(scope="module")
def python() -> Iterator[Path]:
    with environment_python() as path:
        yield path


@pytest.fixture
def in_sandbox(python: Path) -> Iterator[None]:
    with sandbox_python(python):
        yield


def _import(api: Api, name: str, environment: str, **options: Any) -> Any:
    body = {"name": name, "source": "verifiers", "options": {"environment": environment, **options}}
    return api.client.post("/v1/problem-sets", json=body, headers=api.operator)


def _campaign(api: Api, set_id: str) -> dict[str, Any]:
    body = {
        "name": "c-env",
        "problem_set_id": set_id,
        "model": {"name": "flywheel/tiny-arith"},
        "samples_per_problem": 2,
        "sampling": {"max_tokens": 64, "temperature": 1.0},
    }
    r = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    campaign: dict[str, Any] = r.json()
    return campaign


def test_an_environments_tasks_are_problems_and_its_rubric_judges_completions(
    api: Api, in_sandbox: None
) -> None:
    r = _import(api, "tiny", "vf-tiny", args={"eval_size": 1})
    assert r.status_code == 201 and r.json()["size"] == 1, r.text
    with transaction(api.runtime.sessions) as session:
        problem = session.scalars(select(Problem)).one()
        stored = (problem.external_id, problem.prompt, problem.system, problem.extra, problem.verifier_spec)
    ident, prompt, system, extra, spec = stored
    assert (ident, prompt, system) == ("vf-tiny-eval-0", "What is 100 + 201?", SYSTEM)
    assert extra == {"source": "verifiers", "environment": "vf-tiny", "split": "eval", "example_id": 0}
    assert spec["kind"] == "verifiers" and spec["config"]["row"]["answer"] == "301"
    _campaign(api, r.json()["id"])
    worker = api.volunteer("w")
    jobs = api.client.post("/v1/leases", json={"max_jobs": 2}, headers=worker).json()["jobs"]
    roles = [m["role"] for m in jobs[0]["spec"]["messages"]]
    assert roles == ["system", "user"] and "301" not in json.dumps(jobs)  # the answer stays here
    right, wrong = trace_for(jobs[0], text="\\boxed{301}"), trace_for(jobs[1], text="\\boxed{3}")
    r = api.client.post("/v1/results", json={"results": [right, wrong]}, headers=worker)
    assert r.status_code == 200, r.text
    api.drain()
    with transaction(api.runtime.sessions) as session:
        verdicts = {t.text: (t.status, t.score, t.verdict or {}) for t in session.scalars(select(Trace))}
    status, score, verdict = verdicts[right["text"]]
    assert (status, score) == ("accepted", 1.0)
    assert verdict["details"]["rewards"] == {"correct_answer": 1.0, "boxed_format": 1.0}
    status, score, verdict = verdicts[wrong["text"]]
    assert status == "rejected" and score == pytest.approx(0.2)
    assert verdict["details"] == {
        "environment": "vf-tiny",
        "reward": pytest.approx(0.2),
        "rewards": {"correct_answer": 0.0, "boxed_format": 1.0},
    }
    assert importlib.util.find_spec("vf_tiny") is None  # the API and task process never loaded it


def test_multi_turn_environments_and_bad_options_are_refused(api: Api, in_sandbox: None) -> None:
    r = _import(api, "chat", "vf-tiny-chat")
    assert r.status_code == 422, r.text
    assert "EchoEnv is not a SingleTurnEnv: multi-turn and tool environments are not supported" in r.text
    r = _import(api, "shots", "vf-tiny", args={"few_shot": True, "eval_size": 2})
    assert r.status_code == 422, r.text
    roles = ["user", "assistant", "user"]
    error = f"prompt: needs one user message after the system one, not {roles} (few-shot)"
    assert r.json()["error"]["details"] == [{"row": 0, "error": error}, {"row": 1, "error": error}]
    r = _import(api, "tiny", "vf-tiny", arguments={})
    assert r.status_code == 422 and "bad verifiers options: arguments" in r.text, r.text
    body = {"name": "tiny", "source": "verifiers", "split": "dev", "options": {"environment": "vf-tiny"}}
    r = api.client.post("/v1/problem-sets", json=body, headers=api.operator)
    assert r.status_code == 422 and "no split 'dev'" in r.text, r.text
    assert api.client.get("/v1/problem-sets", headers=api.operator).json() == []


def test_the_cli_imports_an_environments_train_split(api: Api, settings: Settings, python: Path) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "FLYWHEEL_SANDBOX_PYTHON": str(python)}
    env.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "coordinator.cli", "problems", "verifiers", "--name", "train"]
    command += ["--split", "train", "--limit", "4", "--environment", "vf-tiny"]
    command += ["--env-args", json.dumps({"train_size": 9})]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["size"] == 4
    with transaction(api.runtime.sessions) as session:
        ids = sorted(session.scalars(select(Problem.external_id)))
    assert ids == [f"vf-tiny-train-{i}" for i in range(4)]
