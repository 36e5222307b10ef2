"""The pipeline commands in a real process: submit runs the job in the foreground without Redis,
status and list read it back, fetch copies an artifact out and checks its hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from coordinator.config import Settings
from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import campaign, lease_all, problem_set, submit, trace, worked

ROOT = Path(__file__).resolve().parents[2]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "FLYWHEEL_DATA_DIR": str(settings.data_dir)}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "coordinator.pipeline.cli", "pipeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_submit_runs_a_job_here_and_fetch_checks_the_artifact(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    campaign_id = campaign(api, problem_set(api, 2), samples=2)
    worker = api.volunteer()
    jobs = lease_all(api, worker)
    submit(api, worker, [trace(j, worked(j, correct=j["spec"]["sample_index"] == 0)) for j in jobs])
    api.drain()
    spec = tmp_path / "select.json"
    spec.write_text(
        json.dumps({"kind": "select", "campaign_ids": [campaign_id], "steps": [{"op": "pass_rate"}]})
    )
    done = _cli(settings, "submit", str(spec), "--name", "cli-select")
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout.splitlines()[0])["job_id"]
    final = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert final["status"] == "done" and final["name"] == "cli-select" and final["metrics"]["kept"] == 2
    status = _cli(settings, "status", job_id)
    assert json.loads(status.stdout)["outputs"] == final["outputs"]
    listed = [json.loads(line) for line in _cli(settings, "list", "--kind", "select").stdout.splitlines()]
    assert [row["id"] for row in listed] == [job_id]
    sha = final["outputs"]["dataset"]["sha256"]
    out = tmp_path / "dataset.jsonl"
    fetched = _cli(settings, "fetch", sha, "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha and len(out.read_text().splitlines()) == 2


def test_select_runs_refinement_steps_given_on_the_command_line(api: Api, settings: Settings) -> None:
    campaign_id = campaign(api, problem_set(api, 2), samples=2)
    worker = api.volunteer()
    jobs = lease_all(api, worker)
    submit(api, worker, [trace(j, worked(j) + " ok" * j["spec"]["sample_index"]) for j in jobs])
    api.drain()
    done = _cli(settings, "select", "--campaign", campaign_id, "--step", '{"op": "shortest_verified"}')
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert final["status"] == "done" and final["metrics"]["considered"] == 4 and final["metrics"]["kept"] == 2
    assert final["metrics"]["steps"][0]["op"] == "shortest_verified"
    bad = _cli(settings, "select", "--campaign", campaign_id, "--step", "{op: oops}")
    assert bad.returncode != 0 and "--step must be a JSON object" in bad.stderr
