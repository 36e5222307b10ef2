"""docs/problems.md "Code problems from published files": APPS and CodeContests rows (stdin/stdout)
and MBPP rows (function calls) become code problems through the API and the CLI; a bad row is
named by line and field; solutions are judged by the real sandbox after a lease; and the hidden
tests never reach a worker or a dump."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.problems.models import Problem
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import trace_for

ROOT = Path(__file__).resolve().parents[2]
# Distinctive hidden values: a dump, a job or a listing that held them would show them.
HIDDEN_IN, HIDDEN_OUT = "123456789 987654321\n", "1111111110\n"
APPS_ROW: dict[str, Any] = {
    "problem_id": 4001,
    "question": "Read two integers a and b and print a + b.",
    "input_output": json.dumps({"inputs": ["1 2\n", HIDDEN_IN], "outputs": ["3\n", HIDDEN_OUT]}),
    "starter_code": "",
    "difficulty": "introductory",
    "solutions": json.dumps(["print(sum(map(int, input().split())))"]),
}
MBPP_ROW: dict[str, Any] = {
    "task_id": 2,
    "text": "Write a function to find the shared elements of two tuples, in increasing order.",
    "code": "def similar_elements(a, b):\r\n  return tuple(sorted(set(a) & set(b)))",
    "test_list": [
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 77777)) == (14,)",
    ],
    "test_setup_code": "",
    "challenge_test_list": [],
}
MBPP_SANITIZED: dict[str, Any] = {
    "task_id": 3,
    "prompt": "Write a python function to find the hypotenuse of a right triangle.",
    "code": "def hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)",
    "test_imports": ["import math"],
    "test_list": ["assert math.isclose(hypotenuse(3, 4), 5.0)", "assert hypotenuse(5, 12) == 13.0"],
}
STDIO_RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
STDIO_WRONG = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"
MBPP_RIGHT = "```python\ndef similar_elements(x, y):\n    return tuple(sorted(set(x) & set(y)))\n```"
MBPP_WRONG = "```python\ndef similar_elements(x, y):\n    return tuple(sorted(set(x) | set(y)))\n```"


def _body(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()


def _import(api: Api, name: str, fmt: str, rows: list[dict[str, Any]], **params: Any) -> Any:
    query = {"name": name, "format": fmt, **params}
    return api.client.post(
        "/v1/problem-sets/import-code", params=query, content=_body(rows), headers=api.operator
    )


def _specs(api: Api) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    with transaction(api.runtime.sessions) as session:
        stored = session.scalars(select(Problem))
        return {p.external_id: (p.prompt, p.verifier_spec, p.extra) for p in stored}


def test_apps_and_mbpp_rows_become_code_problems_with_hidden_tests(api: Api) -> None:
    r = _import(api, "apps", "apps", [APPS_ROW])
    assert r.status_code == 201, r.text
    r = _import(api, "mbpp", "mbpp", [MBPP_ROW, MBPP_SANITIZED])
    assert r.status_code == 201 and r.json()["size"] == 2, r.text
    specs = _specs(api)
    prompt, spec, extra = specs["apps-4001"]
    assert prompt.startswith(APPS_ROW["question"]) and "```python block" in prompt
    assert spec["config"]["style"] == "stdio" and spec["config"]["tests"][1] == {
        "stdin": HIDDEN_IN,
        "stdout": HIDDEN_OUT,
    }
    assert extra == {"source": "apps", "tests": 2, "difficulty": "introductory"}
    prompt, spec, extra = specs["mbpp-2"]
    assert MBPP_ROW["test_list"][0] in prompt and MBPP_ROW["test_list"][1] not in prompt
    assert spec["config"]["entry_point"] == "similar_elements" and len(spec["config"]["tests"]) == 2
    assert extra == {"source": "mbpp", "entry_point": "similar_elements"}  # no record, no tests
    spec = specs["mbpp-3"][1]["config"]
    assert spec["prelude"] == "import math" and [t["expected"] for t in spec["tests"]] == [5.0, 13.0]


def _campaign(api: Api, set_name: str) -> dict[str, Any]:
    sets = {s["name"]: s["id"] for s in api.client.get("/v1/problem-sets", headers=api.operator).json()}
    body = {
        "name": f"c-{set_name}",
        "problem_set_id": sets[set_name],
        "model": {"name": "flywheel/tiny-arith"},
        "samples_per_problem": 2,
        "sampling": {"max_tokens": 64, "temperature": 1.0},
    }
    r = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    campaign: dict[str, Any] = r.json()
    return campaign


def _judged(api: Api, set_name: str, right: str, wrong: str) -> tuple[list[dict[str, Any]], str]:
    """Lease both samples of the set's one problem, answer one right and one wrong, and return the
    dump's rows (accepted and rejected) and, as text, the JSONL and Parquet dumps, the dataset card
    and every job sent to the worker."""
    campaign = _campaign(api, set_name)
    worker = api.volunteer(f"w-{set_name}")
    jobs = api.client.post("/v1/leases", json={"max_jobs": 2}, headers=worker).json()["jobs"]
    assert len(jobs) == 2
    traces = [trace_for(jobs[0], text=right), trace_for(jobs[1], text=wrong)]
    r = api.client.post("/v1/results", json={"results": traces}, headers=worker)
    assert r.status_code == 200, r.text
    api.drain()
    export = f"/v1/datasets/{campaign['id']}/export"
    params = {"status": ["accepted", "rejected"]}
    r = api.client.get(export, params=params, headers=api.researcher)
    assert r.status_code == 200, r.text
    rows = [json.loads(line) for line in r.text.splitlines()]
    r = api.client.get(export, params={**params, "format": "parquet"}, headers=api.researcher)
    parquet = json.dumps(pq.read_table(io.BytesIO(r.content)).to_pylist(), default=str)
    card = api.client.get(f"/v1/datasets/{campaign['id']}/card", headers=api.researcher).text
    return rows, "\n".join([json.dumps(rows), parquet, card, json.dumps(jobs)])


def test_a_right_and_a_wrong_solution_are_judged_by_the_sandbox_and_tests_stay_hidden(api: Api) -> None:
    assert _import(api, "apps", "apps", [APPS_ROW]).status_code == 201
    assert _import(api, "mbpp", "mbpp", [MBPP_ROW]).status_code == 201
    for set_name, right, wrong in (("apps", STDIO_RIGHT, STDIO_WRONG), ("mbpp", MBPP_RIGHT, MBPP_WRONG)):
        rows, seen = _judged(api, set_name, right, wrong)
        by_text = {row["completion"]: row for row in rows}
        assert by_text[right]["status"] == "accepted" and by_text[right]["score"] == 1.0
        assert by_text[wrong]["status"] == "rejected" and by_text[wrong]["score"] == 0.0
        for secret in ("1111111110", "77777", "(14,)", "test_list"):
            assert secret not in seen, f"{secret!r} leaked"


def test_a_bad_row_is_named_by_line_and_field_and_nothing_is_imported(api: Api) -> None:
    uneven = {**APPS_ROW, "problem_id": 2, "input_output": {"inputs": ["1\n", "2\n"], "outputs": ["1\n"]}}
    r = _import(api, "bad", "apps", [APPS_ROW, uneven, {**APPS_ROW, "question": ""}])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {"line": 2, "error": "input_output.inputs has 2 entries but input_output.outputs has 1"},
        {"line": 3, "error": "question: must be a non-empty string"},
    ]
    unknown = {**MBPP_ROW, "test_list": ["assert other(1) == 2"]}
    r = _import(api, "bad", "mbpp", [unknown])
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert (
        "line 1: no assert in test_list calls a function that 'code' defines (['similar_elements'])"
        in message
    )
    body = {"name": "bad", "source": "code", "options": {"format": "apps"}}
    r = api.client.post("/v1/problem-sets", json=body, headers=api.operator)
    assert r.status_code == 400 and "/v1/problem-sets/import-code" in r.text, r.text
    r = _import(api, "bad", "leetcode", [APPS_ROW])
    assert r.status_code == 422 and "format" in r.json()["error"]["message"], r.text
    assert api.client.get("/v1/problem-sets", headers=api.operator).json() == []


def test_call_based_apps_rows_are_refused_unless_left_out(api: Api) -> None:
    call = {**APPS_ROW, "problem_id": 9, "input_output": {"fn_name": "f", "inputs": [[1]], "outputs": [[2]]}}
    r = _import(api, "apps", "apps", [APPS_ROW, call])
    assert r.status_code == 422 and "skip_call_based" in r.json()["error"]["details"][0]["error"], r.text
    r = _import(api, "apps", "apps", [APPS_ROW, call], options=json.dumps({"skip_call_based": True}))
    assert r.status_code == 201 and r.json()["size"] == 1, r.text


def test_the_cli_imports_codecontests_rows_with_their_limits(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    row = {
        "name": "1548_E. Sum",
        "description": "Print the sum of two integers.",
        "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
        "private_tests": {"input": ["5 5\n"], "output": ["10\n"]},
        "generated_tests": {"input": ["0 0\n"], "output": ["0\n"]},
        "time_limit": {"seconds": 1, "nanos": 500000000},
        "memory_limit_bytes": 268435456,
    }
    path = tmp_path / "cc.jsonl"
    path.write_bytes(_body([row]))
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    env.pop("REDIS_URL", None)
    command = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "problems",
        "code",
        "--name",
        "cc",
        "--file",
        str(path),
    ]
    command += ["--format", "codecontests", "--options", json.dumps({"tests": ["public", "private"]})]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    config = _specs(api)["cc-1548_E. Sum"][1]["config"]
    assert [t["stdout"] for t in config["tests"]] == ["3\n", "10\n"]
    assert config["time_limit_s"] == 1.5 and config["memory_mb"] == 256
    path.write_bytes(_body([{**row, "public_tests": {"input": ["1\n"]}}]))
    command[command.index("cc")] = "cc2"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert (
        done.returncode != 0
        and "line 1: public_tests.input and public_tests.output must be lists" in done.stderr
    )
