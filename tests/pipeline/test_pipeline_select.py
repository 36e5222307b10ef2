"""Selection jobs through the API: pass-rate band, reward variance, length pruning that re-verifies,
the manifest of what was kept and why, and content-addressed artifact downloads with Range."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import (
    campaign,
    create_job,
    download,
    lease_all,
    problem_set,
    submit,
    trace,
    wait_for,
    worked,
)

# Per problem, in problem order: how many of its 4 samples are right.
RIGHT_PER_PROBLEM = (4, 2, 1, 0)
TRAILER = " and that is all there is to say about it"


def _graded_campaign(api: Api) -> str:
    """4 problems x 4 samples with pass rates 1, 0.5, 0.25, 0; one right answer has trailing chatter."""
    campaign_id = campaign(api, problem_set(api, 4), samples=4)
    worker = api.volunteer()
    jobs = sorted(lease_all(api, worker), key=lambda j: (j["spec"]["problem_id"], j["spec"]["sample_index"]))
    problems = sorted({j["spec"]["problem_id"] for j in jobs})
    traces = []
    for j in jobs:
        right = j["spec"]["sample_index"] < RIGHT_PER_PROBLEM[problems.index(j["spec"]["problem_id"])]
        text = worked(j, correct=right)
        if right and j["spec"]["sample_index"] == 0:
            text += TRAILER
        traces.append(trace(j, text))
    submit(api, worker, traces)
    api.drain()
    return campaign_id


def _select(api: Api, campaign_id: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    created = create_job(api, {"kind": "select", "campaign_ids": [campaign_id], "steps": steps})
    assert created["status"] == "queued" and created["kind"] == "select"
    api.drain()
    return wait_for(api, created["id"], {"done"})


def test_pass_rate_band_keeps_problems_the_student_sometimes_solves(api: Api) -> None:
    campaign_id = _graded_campaign(api)
    done = _select(
        api, campaign_id, [{"op": "pass_rate", "low": 0.1, "high": 0.8}, {"op": "reward_variance"}]
    )
    assert done["progress"] == 1.0 and done["metrics"]["considered"] == 7  # accepted traces: 4 + 2 + 1
    assert done["metrics"]["kept"] == 3
    assert [s["kept"] for s in done["metrics"]["steps"]] == [3, 3]
    manifest = json.loads(download(api, done["outputs"]["manifest"]["sha256"]))
    assert manifest["dataset"] == done["outputs"]["dataset"]["sha256"]
    rates = sorted(r["values"]["pass_rate"] for r in manifest["records"] if r["kept"])
    assert rates == [0.25, 0.5, 0.5]
    solved = [r for r in manifest["records"] if r["values"]["pass_rate"] == 1.0]
    assert len(solved) == 4 and all("step 0 (pass_rate)" in r["dropped_by"] for r in solved)
    rows = [json.loads(line) for line in download(api, done["outputs"]["dataset"]["sha256"]).splitlines()]
    assert len(rows) == 3 and all(r["passed"] and r["loss_mask"] is None for r in rows)
    assert {r["selection"]["reward_std"] for r in rows} == {0.5, 0.4330127018922193}


def test_length_prune_cuts_after_the_answer_and_keeps_it_verified(api: Api) -> None:
    campaign_id = _graded_campaign(api)
    done = _select(api, campaign_id, [{"op": "length_prune", "trim_after_answer": True, "per_problem": 1}])
    rows = [json.loads(line) for line in download(api, done["outputs"]["dataset"]["sha256"]).splitlines()]
    assert len(rows) == 3  # one per problem that has a right answer
    assert all(not r["completion"].endswith(TRAILER) and r["completion"].endswith("}") for r in rows)
    assert all(r["messages"][-1]["content"] == r["completion"] for r in rows)
    manifest = json.loads(download(api, done["outputs"]["manifest"]["sha256"]))
    trimmed = [r for r in manifest["records"] if "trimmed_chars" in r["values"]]
    assert len(trimmed) == 3 and all(r["values"]["trimmed_chars"] == len(TRAILER) for r in trimmed)


def test_selection_is_idempotent_and_artifacts_are_content_addressed(api: Api) -> None:
    campaign_id = _graded_campaign(api)
    steps = [{"op": "pass_rate", "low": 0.0, "high": 0.9}]
    first, second = _select(api, campaign_id, steps), _select(api, campaign_id, steps)
    a, b = first["outputs"]["dataset"], second["outputs"]["dataset"]
    assert a["sha256"] == b["sha256"] and a["version"] == b["version"] == 1
    body = download(api, a["sha256"])
    assert hashlib.sha256(body).hexdigest() == a["sha256"] and len(body) == a["size_bytes"]


def test_artifact_download_resumes_with_range(api: Api) -> None:
    done = _select(api, _graded_campaign(api), [])
    sha = done["outputs"]["dataset"]["sha256"]
    whole = download(api, sha)
    part = api.client.get(f"/v1/pipeline/artifacts/{sha}", headers={**api.operator, "Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == whole[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert part.headers["etag"] == f'"{sha}"'
    head = api.client.head(f"/v1/pipeline/artifacts/{sha}", headers=api.operator)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole)
    info = api.client.get(f"/v1/pipeline/artifacts/{sha}/info", headers=api.researcher).json()
    assert info["kind"] == "dataset" and info["metadata"]["rows"] == 7


def test_artifact_access_rules(api: Api) -> None:
    done = _select(api, _graded_campaign(api), [])
    sha = done["outputs"]["dataset"]["sha256"]
    volunteer = api.volunteer("v")
    r = api.client.get(f"/v1/pipeline/artifacts/{sha}", headers=volunteer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert api.client.get(f"/v1/pipeline/artifacts/{'0' * 64}", headers=api.operator).status_code == 404
    assert api.client.get("/v1/pipeline/artifacts/not-a-hash", headers=api.operator).status_code == 400
    assert api.client.get(f"/v1/pipeline/artifacts/{sha}").status_code == 401


def test_job_specs_are_checked_when_the_job_is_created(api: Api) -> None:
    def post(spec: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return api.client.post("/v1/pipeline/jobs", json={"spec": spec}, headers=headers or api.operator)

    missing = str(uuid.uuid4())
    assert post({"kind": "select", "campaign_ids": [missing]}).status_code == 404
    assert post({"kind": "select", "campaign_ids": []}).status_code == 422
    assert post({"kind": "teleport"}).status_code == 422
    band = {
        "kind": "select",
        "campaign_ids": [missing],
        "steps": [{"op": "pass_rate", "low": 0.9, "high": 0.1}],
    }
    assert post(band).status_code == 422
    assert post({"kind": "sft", "dataset": "0" * 64, "model": "flywheel/tiny-arith"}).status_code == 404
    evaluate = {"kind": "evaluate", "model": "flywheel/tiny-arith", "problem_set_id": missing}
    assert post(evaluate).status_code == 404
    assert post({**evaluate, "typo": 1}).status_code == 422
    assert post({"kind": "select", "campaign_ids": [missing]}, api.researcher).status_code == 403
    assert api.client.get(f"/v1/pipeline/jobs/{missing}", headers=api.operator).status_code == 404
