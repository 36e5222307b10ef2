"""`flywheel demo` end to end, as a user runs it: a coordinator, two worker processes and the
bundled tiny model on a small campaign, then the Parquet and JSONL dumps it writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from coordinator.jobs.models import Job
from coordinator.problems.models import Problem
from coordinator.results.models import Trace
from coordinator.trust.models import usable

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PROBLEMS, SAMPLES = 4, 2
# docs/datasets.md's columns: a dump holds these and nothing else (no gold, no verifier spec).
COLUMNS = {
    "id", "campaign_id", "campaign", "problem_set", "source", "problem_id", "messages", "prompt",
    "completion", "model", "model_revision", "sampling", "sample_index", "status", "passed", "score",
    "verdict_reason", "verdict_details", "finish_reason", "prompt_tokens", "completion_tokens", "engine",
    "created_at", "verified_at",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    command = [
        sys.executable, "-m", "flywheel", "demo", "--dir", str(folder), "--problems", str(PROBLEMS),
        "--samples", str(SAMPLES), "--max-tokens", "48", "--workers", "2", "--timeout", "240",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = {p.name: p.read_text()[-2000:] for p in folder.glob("*.log")}
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    return folder, done.stdout


def _db_traces(folder: Path) -> tuple[set[str], set[str], dict[str, str]]:
    """Every trace's id, the usable ones' ids, and each trace's gold answer, from the demo's database."""
    engine = create_engine(f"sqlite:///{folder / 'flywheel.db'}")
    with Session(engine) as session:
        every = {str(i) for i in session.scalars(select(Trace.id))}
        kept = {str(i) for i in session.scalars(select(Trace.id).where(usable()))}
        golds = session.execute(
            select(Trace.id, Problem.verifier_spec)
            .join(Job, Job.id == Trace.job_id)
            .join(Problem, Problem.id == Job.problem_id)
        ).all()
    engine.dispose()
    return every, kept, {str(t): str(spec["gold"]) for t, spec in golds}


def test_the_demo_finishes_and_summarises(demo: tuple[Path, str]) -> None:
    folder, stdout = demo
    assert "Flywheel demo" in stdout
    jobs = re.search(r"^\W*jobs\W+(\d+)", stdout, re.MULTILINE)  # whatever box characters rich draws
    assert jobs is not None and int(jobs.group(1)) == PROBLEMS * SAMPLES, stdout
    every, _, _ = _db_traces(folder)
    assert len(every) == PROBLEMS * SAMPLES  # one trace per job, none lost or doubled
    assert (folder / "README.md").read_text().startswith("---")


def test_the_dumps_hold_the_usable_verified_traces_and_no_secrets(demo: tuple[Path, str]) -> None:
    folder, _ = demo
    rows: list[dict[str, Any]] = [
        json.loads(line) for line in (folder / "demo-traces.jsonl").read_text().splitlines()
    ]
    table = pq.read_table(folder / "demo-traces.parquet").to_pylist()
    assert sorted(r["id"] for r in table) == sorted(r["id"] for r in rows)
    every, kept, golds = _db_traces(folder)
    assert {r["id"] for r in rows} == kept and kept <= every and rows
    for row in rows:
        assert set(row) == COLUMNS, sorted(set(row) ^ COLUMNS)
        assert row["status"] in {"accepted", "rejected"}
        assert row["passed"] == (row["status"] == "accepted") == (row["score"] == 1.0)
        assert row["messages"][-1] == {"role": "assistant", "content": row["completion"]}
        # The verdict says whether the answer was right, never what the right answer is.
        said = row["verdict_reason"] + " " + row["verdict_details"]
        assert not re.search(rf"(?<![\d.]){re.escape(golds[row['id']])}(?![\d.])", said), row
