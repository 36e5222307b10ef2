"""`python -m flywheel worker ...` as a real process against a fake coordinator over HTTP."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_job
from worker_fakes import FakeCoordinator, error_reply

from shared.protocol import API_PREFIX, Routes, TraceSubmission
from tests.waiting import wait_for

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
    # every lease request says the engine's dtype: campaigns may take one dtype's work only
    assert coordinator.lease_dtypes and set(coordinator.lease_dtypes) == {"float32"}


def test_sigterm_keeps_unacknowledged_results_and_restart_resubmits(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(tiny_model, seed=i, max_tokens=4) for i in range(2))
    coordinator.submit_status = 503  # the coordinator is down for submissions: nothing gets acked
    proc = start(worker_cmd(coordinator, tiny_model, tmp_path, "--exit-when-idle", "120"))
    try:
        wait_for(lambda: len(spooled(tmp_path)) == 2, 180, lambda: f"spooled: {spooled(tmp_path)}")
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


def first_start(
    coordinator: FakeCoordinator, tiny_model: str, state: Path
) -> subprocess.CompletedProcess[str]:
    """`flywheel worker run` with no token anywhere: a volunteer's first start."""
    cmd = [
        sys.executable, "-m", "flywheel", "worker", "run", "--coordinator", coordinator.url,
        "--model", tiny_model, "--device", "cpu", "--state-dir", str(state), "--name", "first-box",
        "--progress", "plain", "--poll-interval", "0.2", "--exit-when-idle", "0.5",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=240)


REGISTER = API_PREFIX + Routes.register


def test_a_first_start_registers_keeps_the_token_private_and_says_how_to_pause(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = first_start(coordinator, tiny_model, state)
    assert first.returncode == 0, first.stderr
    stored = state / "token"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_text().strip().startswith("fw_")
    assert "registered with" in first.stderr and str(stored) in first.stderr
    assert f"flywheel worker pause --state-dir {state}" in first.stderr and "kill -USR1" in first.stderr
    assert "on the CPU" in first.stderr
    again = first_start(coordinator, tiny_model, state)
    assert again.returncode == 0, again.stderr
    assert "registered with" not in again.stderr  # the stored token is used: no second identity
    assert coordinator.count(REGISTER) == 1


def test_a_first_start_the_coordinator_refuses_is_a_usage_error(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    coordinator.fail_next(REGISTER, error_reply(403, "forbidden", "registration is closed"))
    proc = first_start(coordinator, tiny_model, tmp_path / "state")
    assert proc.returncode == 2
    assert "no token" in proc.stderr and "registration is closed" in proc.stderr
    assert not (tmp_path / "state" / "token").exists()


def flywheel(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flywheel", "worker", *args]
    return subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=timeout)


def status_json(state: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(flywheel("status", "--state-dir", str(state), "--json").stdout)
    return status


def daemon_state(state: Path) -> object:
    status = status_json(state).get("status")
    return status.get("status") if isinstance(status, dict) else None


def test_pause_and_resume_a_running_daemon(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    # Enough jobs that the daemon cannot finish them all before the pause signal lands; short ones,
    # so the run after the resume takes little time on a busy machine.
    jobs = [make_job(tiny_model, seed=i, max_tokens=8) for i in range(20)]
    coordinator.queue.extend(jobs)
    state = tmp_path / "state"
    extra = ("--state-dir", str(state), "--batch-size", "2", "--max-leases", "4", "--exit-when-idle", "1")
    proc = start(worker_cmd(coordinator, tiny_model, tmp_path / "spool", *extra))
    try:
        wait_for(lambda: len(coordinator.stored) >= 2, 180, lambda: f"{len(coordinator.stored)} stored")
        proc.send_signal(signal.SIGUSR1)  # pause by signal alone
        wait_for(lambda: daemon_state(state) == "paused", 120, lambda: f"status {status_json(state)}")
        # leases given back or acked
        wait_for(lambda: not coordinator.outstanding, 120, lambda: f"outstanding {coordinator.outstanding}")
        assert status_json(state)["paused"] is True and coordinator.released
        done = len(coordinator.stored)
        time.sleep(1.5)
        assert len(coordinator.stored) == done < len(jobs) and proc.poll() is None  # paused is not idle
        shown = flywheel("status", "--state-dir", str(state))
        assert shown.returncode == 0 and "PAUSED" in shown.stdout and "paused" in shown.stdout
        resumed = flywheel("resume", "--state-dir", str(state))
        assert resumed.returncode == 0 and f"pid {proc.pid}" in resumed.stdout
        try:  # communicate, not a poll: it drains the daemon's output, which would otherwise fill the pipe
            _, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired as exc:
            left = f"{len(coordinator.stored)} of {len(jobs)} stored, status {status_json(state)}"
            raise AssertionError(f"the resumed daemon did not finish: {left}") from exc
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert {r.job_id for r in coordinator.stored.values()} == {j.job_id for j in jobs}
    after = flywheel("status", "--state-dir", str(state))
    assert after.returncode == 3 and "not running" in after.stdout


def test_pause_before_start_keeps_the_daemon_paused(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    coordinator.queue.append(make_job(tiny_model, max_tokens=4))
    state = tmp_path / "state"
    paused = flywheel("pause", "--state-dir", str(state))
    assert paused.returncode == 0 and "will start paused" in paused.stdout
    proc = start(worker_cmd(coordinator, tiny_model, tmp_path / "spool", "--state-dir", str(state)))
    try:
        wait_for(lambda: daemon_state(state) == "paused", 180, lambda: f"status {status_json(state)}")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert coordinator.count(API_PREFIX + Routes.lease) == 0 and len(coordinator.queue) == 1


def test_wrong_token_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    server = FakeCoordinator(token="the-right-one")
    server.start()
    try:
        # The model path does not exist: a refusal about the token shows it was checked first.
        cmd = worker_cmd(server, str(tmp_path / "no-model"), tmp_path)
        proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert proc.returncode == 1
    assert "refused the token" in proc.stderr and "no-model" not in proc.stderr


def test_a_model_that_cannot_be_loaded_stops_the_start(coordinator: FakeCoordinator, tmp_path: Path) -> None:
    cmd = worker_cmd(coordinator, str(tmp_path / "no-model"), tmp_path)
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot start: cannot load model" in proc.stderr and "no-model" in proc.stderr
    assert coordinator.count(API_PREFIX + Routes.lease) == 0


def test_config_file_supplies_options_flags_override(
    coordinator: FakeCoordinator, tiny_model: str, tmp_path: Path
) -> None:
    coordinator.queue.extend(make_job(tiny_model, seed=i, max_tokens=4) for i in range(3))
    config = tmp_path / "worker.toml"
    config.write_text(
        f'coordinator = "{coordinator.url}"\ntoken = "t0k3n"\nmodel = "{tiny_model}"\ndevice = "cpu"\n'
        f'state-dir = "{tmp_path / "state"}"\nmax_jobs = 1\nprogress = "plain"\nmax-jobs-per-day = 100\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "flywheel",
        "worker",
        "run",
        "--config",
        str(config),
        "--max-jobs",
        "2",
        "--once",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert len(coordinator.stored) == 2  # --max-jobs 2 on the command line beat max_jobs = 1 in the file
    assert (tmp_path / "state" / "state.json").exists() and (tmp_path / "state" / "spool").is_dir()
    bad = tmp_path / "bad.toml"
    bad.write_text('coordinator = "http://x"\nbatch_sise = 3\n')
    proc = subprocess.run(
        [*cmd[:5], "--config", str(bad)], cwd=ROOT, env=run_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "batch_sise" in proc.stderr and str(bad) in proc.stderr
