"""The pipeline commands in a real process: submit runs the job in the foreground without Redis,
status and list read it back, fetch copies an artifact out and checks its hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from coordinator.config import Settings
from shared.assets import TINY_MODEL_NAME
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


def _rl(settings: Settings, set_name: str, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "FLYWHEEL_DATA_DIR": str(settings.data_dir)}
    env.pop("REDIS_URL", None)
    command = ["pipeline", "rl", "--model", TINY_MODEL_NAME, "--problem-set", set_name, "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator.pipeline.cli", *command, *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stored_spec(api: Api, settings: Settings, set_name: str, *flags: str) -> dict[str, Any]:
    """The spec of the run `rl` creates. The run itself would wait for volunteers' rollouts, so the
    command is stopped once it has said which job it created."""
    proc = _rl(settings, set_name, *flags)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        job_id = json.loads(line)["job_id"]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    r = api.client.get(f"/v1/pipeline/jobs/{job_id}", headers=api.operator)
    assert r.status_code == 200, r.text
    spec: dict[str, Any] = r.json()["spec"]
    return spec


def test_rl_takes_the_trainer_precision_from_the_command_line(api: Api, settings: Settings) -> None:
    name = f"set-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "source": "arithmetic", "limit": 2, "split": "test", "seed": 0}
    assert api.client.post("/v1/problem-sets", json=body, headers=api.operator).status_code == 201
    assert _stored_spec(api, settings, name, "--precision", "bf16-mixed")["precision"] == "bf16-mixed"
    assert _stored_spec(api, settings, name, "--precision", "float32")["precision"] == "float32"
    assert _stored_spec(api, settings, name)["precision"] == "auto"
    refused = _rl(settings, name, "--precision", "fp16")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'fp16'" in err
