"""Problem sets: JSONL import (all or nothing) and built-in sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.problems.models import Problem
from tests.coordinator.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
GOOD_CODE = {"tests": [{"stdin": "1 2\n", "stdout": "3\n"}]}


def _import(api: Api, name: str, lines: list[str]):  # type: ignore[no-untyped-def]
    return api.client.post(
        f"/v1/problem-sets/import?name={name}", content="\n".join(lines).encode(), headers=api.operator
    )


def test_jsonl_import_stores_problems_and_hides_answers(api: Api) -> None:
    lines = [
        json.dumps({"id": f"p{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(5)
    ]
    r = _import(api, "mine", lines)
    assert r.status_code == 201, r.text
    assert r.json()["size"] == 5 and r.json()["source"] == "jsonl"
    with transaction(api.runtime.sessions) as session:
        specs = session.scalars(select(Problem.verifier_spec)).all()
    assert sorted(s["gold"] for s in specs) == ["1", "2", "3", "4", "5"]


def test_jsonl_import_with_bad_lines_imports_nothing_and_names_the_lines(api: Api) -> None:
    lines = [
        json.dumps({"id": "ok", "prompt": "fine"}),
        "{broken",
        json.dumps({"id": "x"}),
        json.dumps({"id": "y", "prompt": "p", "bogus": 1}),
    ]
    r = _import(api, "bad", lines)
    assert r.status_code == 422
    assert [e["line"] for e in r.json()["error"]["details"]] == [2, 3, 4]
    assert api.client.get("/v1/problem-sets", headers=api.operator).json() == []


def test_duplicate_ids_and_names_conflict(api: Api) -> None:
    line = json.dumps({"id": "same", "prompt": "p", "answer": "1"})
    assert _import(api, "dups", [line, line]).status_code == 422
    assert _import(api, "once", [line]).status_code == 201
    assert _import(api, "once", [line]).json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("source", "options", "kind"),
    [
        ("gsm8k", {}, "math"),
        ("arithmetic", {"max_digits": 2}, "math"),
        ("reasoning_gym", {"dataset": "basic_arithmetic"}, "reasoning_gym"),
        ("humaneval", {}, "code"),
    ],
)
def test_builtin_sources(api: Api, source: str, options: dict, kind: str) -> None:
    body = {"name": source, "source": source, "limit": 3, "options": options}
    r = api.client.post("/v1/problem-sets", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    assert r.json()["size"] == 3
    with transaction(api.runtime.sessions) as session:
        problems = session.scalars(select(Problem)).all()
    assert {p.verifier_kind for p in problems} == {kind}
    assert all(p.prompt for p in problems)


def test_gsm8k_gold_answers_are_the_final_numbers(api: Api) -> None:
    api.client.post(
        "/v1/problem-sets",
        json={"name": "g", "source": "gsm8k", "split": "train", "limit": 2},
        headers=api.operator,
    )
    with transaction(api.runtime.sessions) as session:
        golds = sorted(s["gold"] for s in session.scalars(select(Problem.verifier_spec)))
    assert golds == ["10", "72"]


def test_unknown_split_is_a_clear_error(api: Api) -> None:
    r = api.client.post(
        "/v1/problem-sets", json={"name": "g", "source": "gsm8k", "split": "nope"}, headers=api.operator
    )
    assert r.status_code == 400 and "split" in r.json()["error"]["message"]


def _code_line(problem_id: str, answer: Any) -> str:
    return json.dumps({"id": problem_id, "prompt": "Add two numbers.", "verifier": "code", "answer": answer})


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"tests": [{"input": "1 2\n", "output": "3\n"}]}, "test 0: unknown key 'input'"),
        ({"tests": [{"stdin": "1 2\n"}]}, "test 0: missing key 'stdout'"),
        ({"tests": [{"stdin": "1 2\n", "stdout": 3}]}, "test 0: 'stdout' must be a string"),
        ({"tests": []}, "non-empty list of tests"),
        ({"tests": [{"stdout": "3\n"}], "time_limit": 5}, "config: unknown key 'time_limit'"),
        (
            {"style": "call", "entry_point": "f", "tests": [{"args": [1], "result": 2}]},
            "unknown key 'result'",
        ),
        ({"tests": [{"stdout": "3\n"}], "time_limit_s": "soon"}, "bad code spec"),
    ],
)
def test_a_malformed_code_spec_is_refused_at_import_with_the_reason(
    api: Api, answer: Any, named: str
) -> None:
    lines = [_code_line("fine", GOOD_CODE), _code_line("broken", answer)]
    r = _import(api, "code", lines)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert [e["line"] for e in details] == [2]
    assert "'broken'" in details[0]["error"] and named in details[0]["error"]
    assert named in r.json()["error"]["message"]
    assert api.client.get("/v1/problem-sets", headers=api.operator).json() == []


def test_a_well_formed_code_spec_is_imported_as_written(api: Api) -> None:
    call = {
        "style": "call",
        "entry_point": "f",
        "tests": [{"args": [1], "kwargs": {"$dict": []}, "expected": 2}],
    }
    r = _import(api, "code", [_code_line("stdio", GOOD_CODE), _code_line("call", call)])
    assert r.status_code == 201, r.text
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(select(Problem.external_id, Problem.verifier_spec)).all()
    assert {external: spec["config"] for external, spec in rows} == {"stdio": GOOD_CODE, "call": call}


def test_the_cli_refuses_a_malformed_code_spec_and_names_it(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "code.jsonl"
    path.write_text(_code_line("p1", GOOD_CODE) + "\n" + _code_line("p2", {"tests": [{"input": "1"}]}) + "\n")
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    env.pop("REDIS_URL", None)
    command = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "problems",
        "jsonl",
        "--name",
        "c",
        "--file",
        str(path),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "line 2: problem 'p2': bad code spec: test 0: unknown key 'input'" in done.stderr
    assert api.client.get("/v1/problem-sets", headers=api.operator).json() == []
