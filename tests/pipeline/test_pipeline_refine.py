"""Refinement steps through selection jobs on the tiny model: shortest verified trace per problem,
loss-targeted rewriting and condensation, each re-verified by the real verifier, recorded in the
manifest, and resumed from the job's folder without redoing finished work."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.pipeline import service, tasks
from coordinator.pipeline.ops import selection, steps
from shared.assets import TINY_MODEL_NAME, ModelSource, resolve_model
from shared.pipeline_types import LossRewrite, ShortestVerified
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

TRAILER = " and that is all there is to say about it"
NOISE = "qzqzqzqz "
LONG_THOUGHT = "<think>let me see, I add the columns, then check the carry once more, twice even</think> "


def _campaign(api: Api, texts: Callable[[dict[str, Any]], str], samples: int, problems: int = 2) -> str:
    """A campaign whose traces are `texts(job)`; each trace's token count is its length in characters
    (the tiny model's tokenizer is byte level)."""
    campaign_id = campaign(api, problem_set(api, problems, split="train"), samples=samples, max_tokens=256)
    worker = api.volunteer()
    submit(api, worker, [trace(j, texts(j), token_ids=[7] * len(texts(j))) for j in lease_all(api, worker)])
    api.drain()
    return campaign_id


def _run(
    api: Api, campaign_id: str, steps: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    created = create_job(api, {"kind": "select", "campaign_ids": [campaign_id], "steps": steps})
    api.drain()
    done = wait_for(api, created["id"], {"done"})
    rows = [json.loads(line) for line in download(api, done["outputs"]["dataset"]["sha256"]).splitlines()]
    return done, rows, json.loads(download(api, done["outputs"]["manifest"]["sha256"]))


def texts_of(manifest: dict[str, Any], row: dict[str, Any]) -> str:
    """The completion a dataset row had before the steps edited it: the worked solution of its
    problem, with or without the noise, whichever the manifest's hash names."""
    from scripts.tiny_model.solutions import worked_solution

    line = next(r for r in manifest["records"] if r["id"] == row["id"])
    source = line.get("source_completion_sha256", line["completion_sha256"])
    a, op, b = row["prompt"].removeprefix("What is ").removesuffix("?").split()
    clean = worked_solution(int(a), op, int(b))
    for text in (clean, clean.replace(" ", f" {NOISE}", 1)):
        if hashlib.sha256(text.encode()).hexdigest() == source:
            return text
    raise AssertionError(f"no known source for {row['id']}")


def _boxed_gold(row: dict[str, Any]) -> str:
    a, op, b = row["prompt"].removeprefix("What is ").removesuffix("?").split()
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    return f"\\boxed{{{value}}}"


def test_shortest_verified_keeps_one_trace_per_problem(api: Api) -> None:
    def texts(j: dict[str, Any]) -> str:
        return [worked(j) + TRAILER, worked(j), worked(j) + " ok"][j["spec"]["sample_index"]]

    done, rows, manifest = _run(api, _campaign(api, texts, samples=3), [{"op": "shortest_verified"}])
    assert done["metrics"]["considered"] == 6 and done["metrics"]["kept"] == 2
    assert all(not r["completion"].endswith(("ok", TRAILER)) for r in rows)
    assert all(r["selection"]["reverified"] for r in rows)
    dropped = [r for r in manifest["records"] if not r["kept"]]
    assert len(dropped) == 4 and all("not the shortest verified trace" in r["dropped_by"] for r in dropped)


def test_shortest_verified_reverifies_and_skips_a_trace_that_fails(api: Api, settings: Settings) -> None:
    def texts(j: dict[str, Any]) -> str:
        return [worked(j), worked(j) + TRAILER][j["spec"]["sample_index"]]

    campaign_id = uuid.UUID(_campaign(api, texts, samples=2, problems=1))
    with transaction(api.runtime.sessions) as session:
        records = list(service.accepted_records(session, [campaign_id]))
        specs = service.verifier_specs(session, [campaign_id])
    shortest = min(records, key=lambda r: r["completion_tokens"])
    # The shortest trace no longer holds the right answer (as if its verifier had been made stricter).
    shortest["completion"] = shortest["completion"].replace("\\boxed{", "\\boxed{1")
    ctx = _context(lambda record, text: tasks._reverify(specs, record, text))
    candidates, _ = steps.run(records, [ShortestVerified()], ctx)
    kept = [c for c in candidates if c.dropped is None]
    assert len(kept) == 1 and kept[0].record["completion"].endswith(TRAILER)
    failed = next(c for c in candidates if c.record["id"] == shortest["id"])
    assert failed.values["reverified"] is False and "fails its verifier" in str(failed.dropped)


def _context(
    verify: Callable[[dict[str, Any], str], bool], workdir: Path | None = None, scorer: Any = None
) -> selection.Context:
    return selection.Context(
        scores=lambda ids: [],
        scorer=scorer
        or (lambda model, device: selection.scorer_for(ModelSource(resolve_model(model)), device)),
        verify=verify,
        embed=lambda texts, batch, device: None,
        source_campaigns=[],
        workdir=workdir,
    )


REWRITE = {
    "op": "loss_rewrite",
    "model": TINY_MODEL_NAME,
    "span_tokens": 8,
    "spans": 2,
    "samples": 2,
    "mode": "suffix",
    "sampling": {"temperature": 0.0, "max_tokens": 64},
    "device": "cpu",
}


def test_loss_rewrite_replaces_a_high_loss_span_only_when_it_verifies_and_helps(
    api: Api, settings: Settings
) -> None:
    def texts(j: dict[str, Any]) -> str:
        return [worked(j).replace(" ", f" {NOISE}", 1), worked(j)][j["spec"]["sample_index"]]

    done, rows, manifest = _run(api, _campaign(api, texts, samples=2), [REWRITE])
    assert done["metrics"]["kept"] == 4  # rewriting edits traces; it drops none
    noisy = [r for r in rows if NOISE in texts_of(manifest, r)]
    assert len(noisy) == 2 and all(r["selection"]["rewrite_loss_before"] > 1.0 for r in noisy)
    # The tiny model gets one of the two sums wrong from the prefix: that rewrite fails its
    # verifier and the trace stays as it was; the other one is cleaned.
    rewritten = [r for r in rows if r["selection"]["rewritten"]]
    assert rewritten and all(r in noisy for r in rewritten)
    for r in rewritten:
        assert NOISE not in r["completion"] and r["completion"].endswith(_boxed_gold(r))
        assert r["selection"]["rewrite_loss_after"] < r["selection"]["rewrite_loss_before"]
        assert r["completion_tokens"] is None and r["messages"][-1]["content"] == r["completion"]
    for r in rows:
        if not r["selection"]["rewritten"]:
            assert r["completion"] == texts_of(manifest, r) and "rewrite_loss_after" not in r["selection"]
            assert r["selection"]["rewrite_windows_tried"] >= 1
    memo = service.workdir(settings, uuid.UUID(done["id"])) / "refine-0-loss_rewrite.jsonl"
    assert len(memo.read_text().splitlines()) == 4
    assert {r["id"] for r in manifest["records"]} == {r["id"] for r in rows}


def test_a_resumed_rewrite_reads_finished_traces_from_the_job_folder(api: Api, settings: Settings) -> None:
    def texts(j: dict[str, Any]) -> str:
        return worked(j).replace(" ", f" {NOISE}", 1)

    campaign_id = _campaign(api, texts, samples=1)
    done, rows, _ = _run(api, campaign_id, [REWRITE])
    with transaction(api.runtime.sessions) as session:
        records = list(service.accepted_records(session, [uuid.UUID(campaign_id)]))

    def no_model(model: str, device: str) -> selection.ScoredModel:
        raise AssertionError("a finished trace was worked on again")

    ctx = _context(lambda r, t: False, service.workdir(settings, uuid.UUID(done["id"])), no_model)
    candidates, _ = steps.run(records, [LossRewrite.model_validate(REWRITE)], ctx)
    assert sorted(c.record["completion"] for c in candidates) == sorted(r["completion"] for r in rows)


def test_condense_folds_thinking_and_keeps_only_shorter_verified_text(api: Api) -> None:
    def texts(j: dict[str, Any]) -> str:
        return [LONG_THOUGHT + worked(j), worked(j)][j["spec"]["sample_index"]]

    step = {
        "op": "condense",
        "model": TINY_MODEL_NAME,
        "device": "cpu",
        "sampling": {"temperature": 0.0, "max_tokens": 24},
    }
    done, rows, _ = _run(api, _campaign(api, texts, samples=2), [step])
    assert done["metrics"]["kept"] == 4
    plain = [r for r in rows if r["selection"].get("condense_kept_original") == "no thinking"]
    assert len(plain) == 2 and all("<think>" not in r["completion"] for r in plain)
    folded = [r for r in rows if r["selection"]["condensed"]]
    assert len(folded) == 2
    for r in folded:
        assert "<think>" not in r["completion"] and r["completion"].endswith(_boxed_gold(r))
        assert r["selection"]["condense_tokens_after"] < r["selection"]["condense_tokens_before"]


def test_condense_keeps_the_original_when_the_new_text_fails_its_verifier(api: Api) -> None:
    def texts(j: dict[str, Any]) -> str:
        return LONG_THOUGHT + worked(j)

    # The tiny model, shown the thinking before the question, writes its own (here wrong) answer.
    step = {
        "op": "condense",
        "model": TINY_MODEL_NAME,
        "device": "cpu",
        "prompt": "{thinking} {problem}",
        "keep_answer": False,
        "sampling": {"temperature": 0.0, "max_tokens": 48},
    }
    _, rows, _ = _run(api, _campaign(api, texts, samples=1), [step])
    for r in rows:
        if r["selection"]["condensed"]:
            assert r["completion"].endswith(_boxed_gold(r)) and "<think>" not in r["completion"]
        else:
            assert r["completion"].startswith("<think>") and r["selection"]["condense_kept_original"]
    assert any(not r["selection"]["condensed"] for r in rows)
