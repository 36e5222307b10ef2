"""`python -m flywheel worker ...` as a real process against a fake coordinator over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_job
from worker_fakes import FakeCoordinator

from shared.protocol import TraceSubmission

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def worker_cmd(server: FakeCoordinator, model: str, spool: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "flywheel", "worker", "run",
        "--coordinator", server.url, "--token", "t0k3n", "--model", model, "--device", "cpu",
        "--spool", str(spool), "--name", "test-worker", "--progress", "plain", "--poll-interval", "0.2",
        *extra,
    ]  # fmt: skip


def run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_WORKER_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def spooled(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.json"))


def test_worker_runs_all_jobs_and_exits_when_idle(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    jobs = [make_job(tiny_model, seed=i, sample_index=i % 2, max_tokens=6) for i in range(5)]
    coordinator.queue.extend(jobs)
    cmd = worker_cmd(
        coordinator, tiny_model, tmp_path, "--batch-size", "2", "--max-jobs", "3", "--exit-when-idle", "1"
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert {r.job_id for r in coordinator.stored.values()} == {j.job_id for j in jobs}
    for result in coordinator.stored.values():
        assert result.engine.name == "transformers"
        assert 1 <= len(result.completion_token_ids) == len(result.logprobs) <= 6
        assert result.hardware.cpu_count > 0
    assert spooled(tmp_path) == []
    assert "accepted 5" in proc.stderr


def test_sigterm_keeps_unacknowledged_results_and_restart_resubmits(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(tiny_model, seed=i, max_tokens=4) for i in range(2))
    coordinator.submit_status = 503  # the coordinator is down for submissions: nothing gets acked
    proc = start(worker_cmd(coordinator, tiny_model, tmp_path, "--exit-when-idle", "120"))
    try:
        assert wait_for(lambda: len(spooled(tmp_path)) == 2, timeout=180), "results never reached the spool"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    kept = {TraceSubmission.model_validate_json(p.read_bytes()).attempt_id for p in spooled(tmp_path)}
    assert len(kept) == 2 and coordinator.stored == {}

    coordinator.submit_status = None
    again = subprocess.run(
        worker_cmd(coordinator, tiny_model, tmp_path, "--exit-when-idle", "0.5"),
        cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert set(coordinator.stored) == kept  # the same attempts: re-sending is idempotent
    assert spooled(tmp_path) == []


def test_protocol_mismatch_refuses_to_start(tiny_model: str, tmp_path: Path) -> None:
    server = FakeCoordinator(protocol_version=99)
    server.start()
    try:
        proc = subprocess.run(
            worker_cmd(server, tiny_model, tmp_path, "--once"),
            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode == 1
    assert "protocol v99" in proc.stderr and "upgrade the worker" in proc.stderr


def test_register_prints_the_token(coordinator: FakeCoordinator) -> None:
    cmd = [
        sys.executable,
        "-m",
        "flywheel",
        "worker",
        "register",
        "--coordinator",
        coordinator.url,
        "--name",
        "box-1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert token.startswith("fw_") and len(token.splitlines()) == 1
    assert "box-1" in proc.stderr


def test_missing_token_is_a_usage_error(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "flywheel",
        "worker",
        "run",
        "--coordinator",
        coordinator.url,
        "--spool",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no token" in proc.stderr
