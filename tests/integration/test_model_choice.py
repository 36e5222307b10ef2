"""A worker started without --model picks its own work: a real daemon against a real coordinator
chooses the model with the most jobs waiting, finishes that campaign, switches to the next model,
and says what it chose and why in `flywheel worker status`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from tests.integration.conftest import Cluster
from worker.state import read_status


def status(cluster: Cluster, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flywheel", "worker", "status", "--state-dir", str(state), *extra]
    return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=60)


def status_json(cluster: Cluster, state: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(status(cluster, state, "--json").stdout)
    return body


def choice_while_running(state: Path, model: str, timeout: float) -> dict[str, Any]:
    """The choice in daemon.json (what `flywheel worker status` shows) once it names `model`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = read_status(state) or {}
        choice: dict[str, Any] = body.get("choice") or {}
        if body.get("status") != "stopped" and choice.get("model") == model and body.get("model") == model:
            return choice
        time.sleep(0.05)
    raise AssertionError(f"the status never showed {model} chosen: {read_status(state)}")


def test_worker_without_model_picks_finishes_and_switches(cluster: Cluster) -> None:
    cluster.env["HF_HUB_OFFLINE"] = "1"  # no download, no hub in tests: both models are here
    copy = cluster.folder / "tiny-copy"
    shutil.copytree(tiny_model_dir(), copy)
    busy = cluster.campaign(problems=16, samples=2, max_tokens=24)  # 32 jobs: chosen first
    later = cluster.campaign(
        problems=6, samples=1, max_tokens=24, model=str(copy)
    )  # 6 jobs: served once the first drains
    state = cluster.folder / "state-picker"
    args = ["worker", "run", "--coordinator", cluster.url, "--token", cluster.register("picker"),
            "--device", "cpu", "--name", "picker", "--state-dir", str(state), "--progress", "plain",
            "--batch-size", "2", "--max-jobs", "2", "--poll-interval", "0.3",
            "--exit-when-idle", "4"]  # fmt: skip
    worker = cluster._spawn(args, "picker.log")
    cluster.workers.append(worker)

    first = choice_while_running(state, TINY_MODEL_NAME, timeout=120)
    assert first["mode"] == "auto"
    assert first["reason"].startswith("32 jobs waiting; present here; needs ~")
    assert "of free RAM" in first["reason"]
    assert f"{copy}: 6 jobs waiting, ranked lower" in first["skipped"]
    second = choice_while_running(state, str(copy), timeout=120)  # the first campaign drained
    assert second["reason"].startswith("6 jobs waiting; present here")
    assert cluster.wait_done(busy)["progress"]["jobs"] == 32
    assert cluster.wait_done(later)["progress"]["jobs"] == 6
    assert worker.wait(timeout=120) == 0

    log = (cluster.folder / "picker.log").read_text()
    assert f"serving {TINY_MODEL_NAME}: 32 jobs waiting" in log
    assert f"{TINY_MODEL_NAME} has no jobs left here; switching to {copy}" in log
    final = status_json(cluster, state)
    assert final["running"] is False and final["status"]["status"] == "stopped"
    assert final["status"]["choice"]["model"] == str(copy) and final["status"]["model"] == str(copy)
    shown = status(cluster, state).stdout
    assert "chosen: 6 jobs waiting; present here" in " ".join(shown.split())
