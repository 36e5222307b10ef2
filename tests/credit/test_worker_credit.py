"""The worker's side: `flywheel worker register --team` joins a team, and `flywheel worker status`
shows the credit the coordinator counts, read with the configured token."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.credit.conftest import Served
from worker.cli import main
from worker.state import write_status


def _register(served: Served, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    assert main(["register", "--coordinator", served.url, "--name", "erin", *flags]) == 0
    return capsys.readouterr().out.strip()


def _earn(served: Served, token: str, jobs: int, tokens: int) -> None:
    """A campaign of the bundled model, and `jobs` traces of `tokens` tokens from the worker."""
    operator = {"Authorization": f"Bearer {served.operator_token}"}
    worker = {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
    with httpx.Client(base_url=served.url, timeout=60) as http:
        problems = http.post(
            "/v1/problem-sets", json={"name": "set", "source": "arithmetic", "limit": jobs}, headers=operator
        ).json()["id"]
        campaign = {
            "name": "c", "problem_set_id": problems, "model": {"name": "flywheel/tiny-arith"},
            "samples_per_problem": 1, "sampling": {"max_tokens": 32},
        }  # fmt: skip
        assert http.post("/v1/campaigns", json=campaign, headers=operator).status_code == 201
        leased = http.post("/v1/leases", json={"max_jobs": jobs}, headers=worker).json()["jobs"]
        results = [
            {
                "lease_id": j["lease_id"], "attempt_id": str(uuid.uuid4()), "job_id": j["spec"]["job_id"],
                "text": "\\boxed{1}", "completion_token_ids": [5] * tokens, "logprobs": [-0.1] * tokens,
                "finish_reason": "stop", "engine": {"name": "transformers"},
            }
            for j in leased
        ]  # fmt: skip
        assert http.post("/v1/results", json={"results": results}, headers=worker).status_code == 200
    assert served.runtime.queue.join(timeout=60)  # type: ignore[attr-defined]


def test_register_joins_a_team_and_status_shows_the_coordinators_credit(
    http_coordinator: Served,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = _register(http_coordinator, capsys, "--team", "Green Thumbs")
    _earn(http_coordinator, token, jobs=3, tokens=10)
    state = tmp_path / "state"
    state.mkdir()
    write_status(state, {"status": "stopped", "name": "erin", "pid": 0, "updated": 0})
    monkeypatch.setenv("FLYWHEEL_WORKER_COORDINATOR", http_coordinator.url)
    monkeypatch.setenv("FLYWHEEL_WORKER_TOKEN", token)

    assert main(["status", "--state-dir", str(state), "--json"]) == 3  # no daemon runs
    credit = json.loads(capsys.readouterr().out)["credit"]
    assert (credit["name"], credit["team"], credit["tokens"], credit["rank"]) == (
        "erin",
        "Green Thumbs",
        30,
        1,
    )
    assert credit["credit"] > 0

    assert main(["status", "--state-dir", str(state)]) == 3
    shown = capsys.readouterr().out
    assert "Green Thumbs" in shown and "#1" in shown and "30 (30 in the last 7 days)" in shown


def test_status_says_why_it_shows_no_credit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    write_status(state, {"status": "stopped", "name": "erin", "pid": 0, "updated": 0})
    monkeypatch.setenv("FLYWHEEL_WORKER_COORDINATOR", "http://127.0.0.1:9")
    monkeypatch.delenv("FLYWHEEL_WORKER_TOKEN", raising=False)
    monkeypatch.delenv("FLYWHEEL_WORKER_CONFIG", raising=False)
    assert main(["status", "--state-dir", str(state), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["credit"] == "no token configured"
    monkeypatch.setenv("FLYWHEEL_WORKER_TOKEN", "fw_x")
    assert main(["status", "--state-dir", str(state)]) == 3
    assert "coordinator unavailable" in capsys.readouterr().out


def test_a_team_name_must_be_printable() -> None:
    assert main(["register", "--coordinator", "http://127.0.0.1:9", "--team", " padded"]) != 0
