"""Student-model selection, SFT and evaluation jobs chained through the API on the tiny model."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from coordinator.pipeline.ops import selection, steps
from ml import embeddings, loading
from ml.training import batches
from shared.assets import TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import Diversity, artifact_model_name
from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import (
    campaign,
    create_job,
    download,
    gold,
    job,
    lease_all,
    problem_set,
    submit,
    trace,
    wait_for,
    worked,
)


def _odd(j: dict[str, Any]) -> str:
    """Right, but in a format the tiny model never saw: verified, yet out of its distribution."""
    return f"Result: \\boxed{{{gold(j)}}}"


def _two_style_campaign(api: Api, problems: int = 4) -> str:
    campaign_id = campaign(api, problem_set(api, problems, split="train"), samples=2)
    worker = api.volunteer()
    jobs = lease_all(api, worker)
    submit(api, worker, [trace(j, worked(j) if j["spec"]["sample_index"] == 0 else _odd(j)) for j in jobs])
    api.drain()
    return campaign_id


def _run(api: Api, spec: dict[str, Any]) -> dict[str, Any]:
    created = create_job(api, spec)
    api.drain()
    return wait_for(api, created["id"], {"done"})


def _rows(api: Api, done: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in download(api, done["outputs"]["dataset"]["sha256"]).splitlines()]


def test_student_loss_keeps_what_the_student_finds_likely(api: Api) -> None:
    campaign_id = _two_style_campaign(api)
    step = {"op": "student_loss", "model": TINY_MODEL_NAME, "max_loss": 1.0, "device": "cpu"}
    done = _run(api, {"kind": "select", "campaign_ids": [campaign_id], "steps": [step]})
    rows = _rows(api, done)
    assert len(rows) == 4 and all("\\boxed" in r["completion"] and "=" in r["completion"] for r in rows)
    assert all(r["selection"]["student_loss"] < 1.0 for r in rows)
    manifest = json.loads(download(api, done["outputs"]["manifest"]["sha256"]))
    dropped = [r for r in manifest["records"] if not r["kept"]]
    assert len(dropped) == 4 and all(r["values"]["student_loss"] > 1.0 for r in dropped)
    assert all("student loss" in r["dropped_by"] for r in dropped)


def test_token_mask_masks_the_tokens_the_student_finds_unlikely(api: Api) -> None:
    campaign_id = _two_style_campaign(api)
    step = {"op": "token_mask", "model": TINY_MODEL_NAME, "max_token_loss": 3.0, "device": "cpu"}
    rows = _rows(api, _run(api, {"kind": "select", "campaign_ids": [campaign_id], "steps": [step]}))
    tokenizer = loading.load_tokenizer(ModelSource(str(tiny_model_dir())))
    for row in rows:
        example = batches.encode(tokenizer, batches.prompt_messages(row), row["completion"])
        assert len(row["loss_mask"]) == len(example.completion_ids) and row["loss_mask"][-1] == 1
        assert row["mask_model"] == TINY_MODEL_NAME
    masked = {r["completion"].startswith("Result"): sum(1 - m for m in r["loss_mask"]) for r in rows}
    assert masked[True] >= 3 and masked[False] <= 1


def test_sft_job_then_volunteers_evaluate_the_checkpoint(api: Api, tmp_path: Path) -> None:
    campaign_id = _two_style_campaign(api)
    selected = _run(api, {"kind": "select", "campaign_ids": [campaign_id], "steps": []})
    spec = {
        "kind": "sft",
        "dataset": selected["outputs"]["dataset"]["sha256"],
        "model": TINY_MODEL_NAME,
        "method": "lora",
        "max_steps": 3,
        "batch_size": 4,
        "device": "cpu",
        "eval_fraction": 0.0,
    }
    trained = _run(api, spec)
    checkpoint = trained["outputs"]["checkpoint"]
    assert {"checkpoint", "adapter", "report"} <= set(trained["outputs"])
    assert checkpoint["metadata"]["base_model"] == TINY_MODEL_NAME and checkpoint["kind"] == "checkpoint"
    report = json.loads(download(api, trained["outputs"]["report"]["sha256"]))
    assert len(report["curve"]["train"]) == 3 and report["metrics"]["steps"] == 3
    model_name = artifact_model_name(checkpoint["sha256"])
    assert trained["metrics"]["model"] == model_name
    # Volunteers may fetch weights; what they get hashes to the name they asked for.
    volunteer = api.volunteer("eval")
    weights = download(api, checkpoint["sha256"], volunteer)
    assert hashlib.sha256(weights).hexdigest() == checkpoint["sha256"]
    (tmp_path / "w.safetensors").write_bytes(weights)
    served = loading.materialize(
        ModelSource(str(tiny_model_dir()), tmp_path / "w.safetensors"), tmp_path / "m"
    )
    assert loading.load_model(ModelSource(str(served)), "cpu").config.vocab_size > 0
    _evaluate(api, model_name, volunteer)


def _evaluate(api: Api, model_name: str, volunteer: dict[str, str]) -> None:
    spec = {
        "kind": "evaluate",
        "model": model_name,
        "problem_set_id": problem_set(api, 3),
        "samples_per_problem": 2,
        "poll_s": 0.05,
    }
    created = create_job(api, spec)
    waiting = wait_for(api, created["id"], {"waiting"})
    assert len(waiting["campaign_ids"]) == 1 and waiting["stage"] == "0/6 samples verified"
    assert lease_all(api, volunteer, ["flywheel/tiny-arith"]) == []  # the jobs are for the checkpoint
    jobs = sorted(
        lease_all(api, volunteer, [model_name]),
        key=lambda j: (j["spec"]["problem_id"], j["spec"]["sample_index"]),
    )
    assert len(jobs) == 6 and all(j["spec"]["sampling"]["temperature"] == 0.0 for j in jobs)
    # Problem 0: both right; problem 1: one of two; problem 2: none.
    right = [True, True, True, False, False, False]
    submit(api, volunteer, [trace(j, worked(j, correct=ok)) for j, ok in zip(jobs, right, strict=True)])
    api.drain()
    done = wait_for(api, created["id"], {"done"})
    strategies = done["metrics"]["strategies"]
    assert done["metrics"]["accuracy"] == strategies["pass@1"]["accuracy"] == 0.5
    assert strategies["pass@n"]["accuracy"] == 2 / 3 and done["metrics"]["problems"] == 3
    document = json.loads(download(api, done["outputs"]["report"]["sha256"]))
    assert document["model"] == model_name and document["summary"] == {
        k: v for k, v in done["metrics"].items() if k != "report"
    }


def test_cancel_pauses_the_campaign_and_resume_restarts_it(api: Api) -> None:
    spec = {
        "kind": "evaluate",
        "model": TINY_MODEL_NAME,
        "problem_set_id": problem_set(api, 2),
        "poll_s": 0.05,
    }
    created = create_job(api, spec)
    waiting = wait_for(api, created["id"], {"waiting"})
    campaign_id = waiting["campaign_ids"][0]
    cancelled = api.client.post(f"/v1/pipeline/jobs/{created['id']}/cancel", headers=api.operator).json()
    assert cancelled["status"] == "cancelled"
    assert api.client.get(f"/v1/campaigns/{campaign_id}", headers=api.operator).json()["status"] == "paused"
    volunteer = api.volunteer()
    assert lease_all(api, volunteer) == []
    resumed = api.client.post(f"/v1/pipeline/jobs/{created['id']}/resume", headers=api.operator).json()
    assert resumed["status"] == "queued"
    jobs = lease_all(api, volunteer)
    assert len(jobs) == 2
    submit(api, volunteer, [trace(j, worked(j)) for j in jobs])
    api.drain()
    done = wait_for(api, created["id"], {"done"})
    assert done["metrics"]["accuracy"] == 1.0 and done["campaign_ids"] == [campaign_id]
    again = api.client.post(f"/v1/pipeline/jobs/{created['id']}/resume", headers=api.operator)
    assert again.status_code == 409
    assert job(api, created["id"])["attempts"] >= 2


def test_diversity_samples_across_embedding_clusters() -> None:
    families = {
        "arithmetic": ["What is 12 + 30?", "Compute 7 times 8.", "What is 100 minus 1?"],
        "cooking": ["Simmer the onions in butter.", "Bake the bread for an hour.", "Whisk eggs with sugar."],
        "space": ["The rocket reached orbit.", "Mars has two small moons.", "The telescope saw a comet."],
    }
    records = [
        {"id": f"{name}-{i}", "problem_id": f"{name}-{i}", "prompt": text, "completion": text}
        for name, texts in families.items()
        for i, text in enumerate(texts)
    ]
    ctx = selection.Context(
        scores=lambda ids: [],
        scorer=lambda m, d: None,  # type: ignore[arg-type,return-value]
        verify=lambda r, t: True,
        embed=embeddings.embed_minilm,
        source_campaigns=[],
    )
    step = Diversity(max_records=3, clusters=3, text="completion", device="cpu")
    candidates, reports = steps.run(records, [step], ctx)
    kept = [c.record["id"].split("-")[0] for c in candidates if c.dropped is None]
    assert sorted(kept) == ["arithmetic", "cooking", "space"] and reports[0].kept == 3
    clusters: dict[str, set[int]] = {c.record["id"].split("-")[0]: set() for c in candidates}
    for c in candidates:
        clusters[c.record["id"].split("-")[0]].add(c.values["cluster"])
    assert all(len(ids) == 1 for ids in clusters.values())


def test_a_job_whose_task_chain_died_is_found_and_resumed(api: Api) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from coordinator.db import transaction, utcnow
    from coordinator.pipeline import tasks
    from coordinator.pipeline.models import PipelineJob

    spec = {
        "kind": "evaluate",
        "model": TINY_MODEL_NAME,
        "problem_set_id": problem_set(api, 2),
        "poll_s": 0.05,
    }
    created = create_job(api, spec)
    wait_for(api, created["id"], {"waiting"})
    assert tasks.requeue_stalled(api.runtime) == 0  # a live chain is never stalled
    with transaction(api.runtime.sessions) as session:  # the chain's process dies: its token is lost
        session.execute(
            update(PipelineJob)
            .where(PipelineJob.id == uuid.UUID(created["id"]))
            .values(status="running", wake_token=uuid.uuid4(), heartbeat_at=utcnow() - timedelta(hours=1))
        )
    assert tasks.requeue_stalled(api.runtime) == 1
    volunteer = api.volunteer()
    submit(api, volunteer, [trace(j, worked(j)) for j in lease_all(api, volunteer)])
    assert wait_for(api, created["id"], {"done"})["metrics"]["accuracy"] == 1.0
