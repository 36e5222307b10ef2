"""Dumps: streaming JSONL and Parquet that Hugging Face `datasets` loads, plus a card."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, trace_for


def _finished_campaign(api: Api) -> str:
    campaign = make_campaign(api, problems=3, samples=2)
    worker = api.volunteer()
    jobs = api.client.post("/v1/leases", json={"max_jobs": 6}, headers=worker).json()["jobs"]
    results = [
        trace_for(j, text=answer_of(api, j) if i % 2 == 0 else "\\boxed{-1}") for i, j in enumerate(jobs)
    ]
    api.client.post("/v1/results", json={"results": results}, headers=worker)
    api.drain()
    campaign_id: str = campaign["id"]
    return campaign_id


def test_jsonl_export_streams_accepted_traces(api: Api) -> None:
    campaign_id = _finished_campaign(api)
    r = api.client.get(f"/v1/datasets/{campaign_id}/export?format=jsonl", headers=api.researcher)
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 3 and all(row["status"] == "accepted" and row["passed"] for row in rows)
    first = rows[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"] == first["completion"]
    assert {
        "problem_id",
        "source",
        "model",
        "sampling",
        "score",
        "verdict_details",
        "completion_tokens",
    } <= set(first)
    assert first["source"] == "arithmetic" and first["sampling"]["seed"] > 0


def test_parquet_export_loads_with_datasets(api: Api, tmp_path: Path) -> None:
    campaign_id = _finished_campaign(api)
    r = api.client.get(
        f"/v1/datasets/{campaign_id}/export?format=parquet&status=accepted&status=rejected",
        headers=api.researcher,
    )
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 6
    path = tmp_path / "dump.parquet"
    path.write_bytes(r.content)
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert len(ds) == 6 and sorted(set(ds["status"])) == ["accepted", "rejected"]
    assert ds[0]["messages"][0]["role"] == "user"


def test_export_filters_and_errors(api: Api) -> None:
    campaign_id = _finished_campaign(api)
    r = api.client.get(f"/v1/datasets/{campaign_id}/export?min_score=2", headers=api.researcher)
    assert r.status_code == 200 and r.text == ""
    bad = api.client.get(f"/v1/datasets/{campaign_id}/export?status=weird", headers=api.researcher)
    assert bad.status_code == 400
    missing = api.client.get(
        "/v1/datasets/00000000-0000-0000-0000-000000000000/export", headers=api.researcher
    )
    assert missing.status_code == 404


def test_dataset_list_and_card(api: Api) -> None:
    campaign_id = _finished_campaign(api)
    listing = api.client.get("/v1/datasets", headers=api.researcher).json()
    assert [(d["accepted"], d["rejected"]) for d in listing] == [(3, 3)]
    card = api.client.get(f"/v1/datasets/{campaign_id}/card", headers=api.researcher).text
    assert card.startswith("---") and "messages" in card and "Accepted traces: 3" in card
