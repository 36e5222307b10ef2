"""`flywheel coordinator migrate | create-token | problems | campaign | export` as a user runs them:
real subprocesses against the test database (SQLite, or PostgreSQL when the environment names it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, inspect

from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import answer_of, trace_for

ROOT = Path(__file__).resolve().parents[2]


def _cli(database_url: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "flywheel", "coordinator", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _ok(database_url: str, *args: str) -> str:
    done = _cli(database_url, *args)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _work_campaign(api: Api, jobs: int) -> None:
    """A volunteer does every job: even ones right, odd ones wrong."""
    worker = api.volunteer()
    leased = api.client.post("/v1/leases", json={"max_jobs": jobs}, headers=worker).json()["jobs"]
    assert len(leased) == jobs
    traces = [
        trace_for(j, text=answer_of(api, j) if i % 2 == 0 else "\\boxed{-1}") for i, j in enumerate(leased)
    ]
    r = api.client.post("/v1/results", json={"results": traces}, headers=worker)
    assert {a["status"] for a in r.json()["acks"]} == {"accepted"}, r.text
    api.drain()


def test_a_campaign_from_the_command_line_to_its_dumps(database_url: str, tmp_path: Path) -> None:
    assert "database is at the newest schema" in _ok(database_url, "migrate")
    engine = create_engine(database_url)
    assert {"jobs", "traces", "workers", "campaigns"} <= set(inspect(engine).get_table_names())
    engine.dispose()

    made = json.loads(_ok(database_url, "create-token", "--name", "ops"))
    assert made["scope"] == "operator" and made["token"]
    volunteer = json.loads(_ok(database_url, "create-token", "--name", "v", "--scope", "volunteer"))

    problems = json.loads(_ok(database_url, "problems", "arithmetic", "--name", "arith", "--limit", "3"))
    assert (problems["name"], problems["size"], problems["source"]) == ("arith", 3, "arithmetic")
    lines = tmp_path / "mine.jsonl"
    lines.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"{i}?", "answer": str(i)}) + "\n" for i in range(4))
    )
    mine = json.loads(_ok(database_url, "problems", "jsonl", "--name", "mine", "--file", str(lines)))
    assert (mine["size"], mine["source"]) == (4, "jsonl")

    campaign_args = ["campaign", "--name", "c1", "--problem-set", "arith", "--model", "flywheel/tiny-arith"]
    campaign = json.loads(_ok(database_url, *campaign_args, "--samples", "2", "--max-tokens", "32"))
    assert campaign["name"] == "c1" and campaign["progress"]["jobs"] == 6
    assert campaign["sampling"]["max_tokens"] == 32

    with serve(make_settings(database_url)) as api:
        operator = {"Authorization": f"Bearer {made['token']}"}
        assert api.client.get("/v1/stats", headers=operator).status_code == 200  # the token works
        refused = api.client.get("/v1/stats", headers={"Authorization": f"Bearer {volunteer['token']}"})
        assert refused.status_code == 403  # and carries its scope
        sets = api.client.get("/v1/problem-sets", headers=operator).json()
        assert sorted(s["name"] for s in sets) == ["arith", "mine"]
        _work_campaign(api, 6)

    out = tmp_path / "c1.jsonl"
    assert (
        _ok(database_url, "export", "c1", "--format", "jsonl", "--out", str(out)).strip()
        == f"wrote 3 rows to {out}"
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {r["status"] for r in rows} == {"accepted"} and all(r["passed"] for r in rows)
    both = tmp_path / "c1.parquet"
    by_id = _ok(
        database_url, "export", campaign["id"], "--out", str(both), "--status", "accepted", "rejected"
    )
    assert by_id.strip() == f"wrote 6 rows to {both}"
    assert sorted(pq.read_table(both).column("status").to_pylist()) == ["accepted"] * 3 + ["rejected"] * 3


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    code = tmp_path / "code.jsonl"
    code.write_text(
        json.dumps({"id": "p1", "prompt": "x", "verifier": "code", "answer": {"tests": [{"input": "1"}]}})
        + "\n"
    )
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    return {
        "code spec": (["jsonl", "--name", "a", "--file", str(code)], "unknown key 'input'"),
        "line": (["jsonl", "--name", "a", "--file", str(garbage)], "line 1"),
        "missing file": (["jsonl", "--name", "a", "--file", str(tmp_path / "none.jsonl")], "none.jsonl"),
        "options": (["arithmetic", "--name", "a", "--options", "{bad"], "options"),
        "split": (["gsm8k", "--name", "g", "--split", "nope"], "split 'nope'"),
        "limit": (["arithmetic", "--name", "a", "--limit", "0"], "limit"),
    }


CASES = ["code spec", "line", "missing file", "options", "split", "limit"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_problem_spec_is_one_clear_line_and_a_failure(
    database_url: str, tmp_path: Path, case: str
) -> None:
    args, named = _bad_inputs(tmp_path)[case]
    done = _cli(database_url, "problems", *args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and named in done.stderr, done.stderr


def test_a_campaign_over_a_missing_problem_set_is_refused(database_url: str) -> None:
    args = ["campaign", "--name", "c", "--problem-set", "absent", "--model", "flywheel/tiny-arith"]
    done = _cli(database_url, *args)
    assert done.returncode != 0 and done.stderr.strip() == "no problem set named 'absent'", done.stderr
    done = _cli(database_url, "export", "nope", "--out", "/dev/null")
    assert done.returncode != 0
