"""Background functions of pipeline jobs, run on the `train` queue by trusted machines.

`run_job(job_id, token)` is the only task. It claims the job with the token it was given (so a
duplicate or superseded task does nothing), heartbeats while it works, and ends the job `done`,
`failed`, or `waiting`: a job that handed work to volunteers (an evaluation campaign, GRPO
rollouts) parks itself and enqueues its own next look with a fresh token, `poll_s` later.
Every executor is idempotent: outputs are content-addressed, campaigns and policy versions are
found again by name and number, and SFT and GRPO resume from snapshots in the job's work folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

from coordinator.db import after_commit, transaction
from coordinator.pipeline import rl, service
from coordinator.pipeline.models import DONE, FAILED, Artifact
from coordinator.pipeline.ops import evaluate, selection, steps, ttc
from coordinator.pipeline.runner import JobLost, Outcome, Runner, write_text
from coordinator.runtime import Runtime, get_runtime
from ml import embeddings
from ml.training import finetune, sft
from shared.assets import ModelSource
from shared.pipeline_types import EvaluateSpec, GrpoSpec, SelectSpec, SftSpec, artifact_model_name
from shared.protocol import StrategyReport

log = logging.getLogger(__name__)


def enqueue(runtime: Runtime, job_id: uuid.UUID, token: uuid.UUID, delay_s: float = 0.0) -> None:
    runtime.queue.enqueue(run_job, str(job_id), str(token), delay_s, queue=runtime.settings.train_queue)


def run_job(job_id: str, token: str, delay_s: float = 0.0) -> None:
    if delay_s > 0:
        time.sleep(delay_s)
    runtime = get_runtime()
    jid, tok = uuid.UUID(job_id), uuid.UUID(token)
    with transaction(runtime.sessions) as session:
        if not service.claim(session, jid, tok):
            return  # done, cancelled, superseded, or someone else is running it
        kind = service.get_job(session, jid).kind
    runner = Runner(runtime, jid, tok)
    try:
        with runner.keepalive():
            outcome = EXECUTORS[kind](runner)
    except JobLost:
        log.info("pipeline job %s was cancelled or taken over; this runner stops", jid)
        return
    except Exception as exc:
        log.exception("pipeline job %s failed", jid)
        with transaction(runtime.sessions) as session:
            service.finish(session, jid, tok, FAILED, error=f"{type(exc).__name__}: {exc}"[:4000])
        return
    _settle(runtime, runner, outcome)


def _settle(runtime: Runtime, runner: Runner, outcome: Outcome) -> None:
    with transaction(runtime.sessions) as session:
        if not outcome.waiting:
            service.finish(session, runner.job_id, runner.token, DONE)
            return
        token = service.wait(session, runner.job_id, runner.token, outcome.stage)
        if token is not None:
            after_commit(session, lambda: enqueue(runtime, runner.job_id, token, outcome.poll_s))


def requeue_stalled(runtime: Runtime | None = None) -> int:
    """Give every job whose task chain died (a killed process, a lost queue) a new chain.
    Meant for a periodic sweeper; safe to run any time (a live chain is never stalled)."""
    runtime = runtime or get_runtime()
    with transaction(runtime.sessions) as session:
        stalled = list(service.stalled_jobs(session))
        tokens = [(job_id, service.resume(session, job_id)) for job_id in stalled]
        for job_id, token in tokens:
            after_commit(session, partial(enqueue, runtime, job_id, token))
    return len(tokens)


# --------------------------------------------------------------------------- select


def _select(runner: Runner) -> Outcome:
    with runner.session() as session:
        job = runner.job(session)
        spec = SelectSpec.model_validate(job.spec)
        records = list(service.accepted_records(session, spec.campaign_ids))
        verifier_specs = service.verifier_specs(session, spec.campaign_ids)
        name = job.name
    ctx = selection.Context(
        scores=lambda ids: runner.read(lambda s: service.verified_scores(s, ids)),
        scorer=_scorers(runner),
        verify=lambda record, text: _reverify(verifier_specs, record, text),
        embed=embeddings.embed_minilm,
        source_campaigns=[str(c) for c in spec.campaign_ids],
        progress=lambda fraction, stage: runner.progress(fraction, stage),
        workdir=runner.workdir,
    )
    candidates, reports = steps.run(records, spec.steps, ctx)
    kept = [c for c in candidates if c.dropped is None]
    dataset = runner.workdir / "dataset.jsonl"
    write_text(
        dataset, "".join(json.dumps(_dataset_row(c), sort_keys=True, default=str) + "\n" for c in kept)
    )
    data_artifact = runner.output(
        "dataset",
        dataset,
        kind="dataset",
        name=f"{name}/dataset",
        filename="dataset.jsonl",
        media_type="application/x-ndjson",
        meta={"rows": len(kept), "sources": ctx.source_campaigns},
    )
    manifest = _manifest(spec, candidates, reports, data_artifact.sha256)
    runner.json_output("manifest", manifest, kind="manifest", name=f"{name}/manifest")
    metrics = {
        "considered": len(candidates),
        "kept": len(kept),
        "steps": [asdict(r) for r in reports],
        "dataset": data_artifact.sha256,
    }
    runner.progress(1.0, "selected", metrics, force=True)
    return Outcome()


def _scorers(runner: Runner) -> Callable[[str, str], selection.ScoredModel]:
    cache: dict[tuple[str, str], selection.ScoredModel] = {}

    def scorer(model: str, device: str) -> selection.ScoredModel:
        if (model, device) not in cache:
            source = runner.read(lambda s: service.resolve(s, runner.settings, model))
            cache[(model, device)] = selection.scorer_for(source, device)
        return cache[(model, device)]

    return scorer


REVERIFY_ATTEMPTS = 3  # tries a refined trace gets while the host stalls its code sandbox


def _reverify(specs: dict[tuple[str, str], dict[str, Any]], record: dict[str, Any], text: str) -> bool:
    """Whether the text still passes its problem's verifier. A stalled host is retried; after the
    last try, what it measured (a failure) stands, so nothing unverified enters a dataset."""
    from shared.protocol import VerifierSpec
    from verifier.api import verify
    from verifier.errors import HostStalledError

    spec = specs.get((str(record["campaign_id"]), str(record["problem_id"])))
    if spec is None:
        return False
    for attempt in range(REVERIFY_ATTEMPTS):
        try:
            return verify(VerifierSpec.model_validate(spec), text).passed
        except HostStalledError as stalled:
            log.warning("re-verification stalled (attempt %d): %s", attempt + 1, stalled.reason)
            if attempt == REVERIFY_ATTEMPTS - 1:
                return stalled.verdict.passed
    return False


DATASET_FIELDS = (
    "id",
    "campaign_id",
    "campaign",
    "problem_set",
    "source",
    "problem_id",
    "messages",
    "prompt",
    "completion",
    "model",
    "sampling",
    "score",
    "passed",
    "finish_reason",
    "completion_tokens",
)


def _dataset_row(c: selection.Candidate) -> dict[str, Any]:
    row = {k: c.record.get(k) for k in DATASET_FIELDS}
    values = dict(c.values)
    row["mask_model"] = values.pop("mask_model", None)
    row["loss_mask"] = c.loss_mask
    row["selection"] = values
    return row


def _manifest(
    spec: SelectSpec,
    candidates: list[selection.Candidate],
    reports: list[selection.StepReport],
    dataset_sha: str,
) -> dict[str, Any]:
    return {
        "kind": "selection-manifest",
        "spec": spec.model_dump(mode="json"),
        "dataset": dataset_sha,
        "considered": len(candidates),
        "kept": sum(c.dropped is None for c in candidates),
        "steps": [asdict(r) for r in reports],
        "records": [_manifest_record(c) for c in candidates],
    }


def _manifest_record(c: selection.Candidate) -> dict[str, Any]:
    """A candidate's line: kept or why not, its values, and the sha256 of its completion (of the
    one the sources stored too, when a refinement step replaced it)."""
    line = {
        "id": c.record["id"],
        "problem_id": c.problem,
        "kept": c.dropped is None,
        "dropped_by": c.dropped,
        "values": {k: v for k, v in c.values.items() if k != "mask_model"},
        "completion_sha256": _sha256(str(c.record["completion"])),
        "edited": c.edited,
    }
    if c.edited:
        line["source_completion_sha256"] = _sha256(c.source_completion)
    return line


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- sft


def _sft(runner: Runner) -> Outcome:
    with runner.session() as session:
        job = runner.job(session)
        spec = SftSpec.model_validate(job.spec)
        source = service.resolve(session, runner.settings, spec.model)
        base = service.base_model_name(session, spec.model)
        name = job.name
    rows = service.read_jsonl(runner.files, spec.dataset)
    runner.progress(0.0, f"training on {len(rows)} rows", force=True)

    def progress(fraction: float, stage: str, latest: dict[str, Any]) -> None:
        runner.progress(0.98 * fraction, stage, {"latest": latest})

    result = finetune.train(rows, source, spec, runner.workdir, progress)
    checkpoint = _sft_outputs(runner, name, base, spec, result)
    metrics = {**result.metrics, "model": artifact_model_name(checkpoint.sha256)}
    report = {
        "kind": "sft-report",
        "spec": spec.model_dump(mode="json"),
        "curve": result.curve,
        "metrics": metrics,
    }
    runner.json_output("report", report, kind="report", name=f"{name}/report")
    runner.progress(1.0, "trained", metrics, force=True)
    return Outcome()


def _sft_outputs(runner: Runner, name: str, base: str, spec: SftSpec, result: sft.SftResult) -> Artifact:
    """The merged checkpoint (what is served) and, for LoRA/DoRA, the adapter on its own."""
    octets = "application/octet-stream"
    lineage = {"base_model": base, "parent_model": spec.model}
    checkpoint = runner.output(
        "checkpoint", result.weights, kind="checkpoint", name=f"{name}/checkpoint",
        filename="model.safetensors", media_type=octets,
        meta={**lineage, "method": spec.method, "dataset": spec.dataset},
    )  # fmt: skip
    if result.adapter is not None:
        runner.output(
            "adapter", result.adapter, kind="adapter", name=f"{name}/adapter",
            filename="adapter_model.safetensors", media_type=octets,
            meta={**lineage, "adapter_config": result.adapter_config},
        )  # fmt: skip
    return checkpoint


# --------------------------------------------------------------------------- evaluate


def _evaluate(runner: Runner) -> Outcome:
    with runner.session() as session:
        job = runner.job(session)
        spec = EvaluateSpec.model_validate(job.spec)
        campaign_id = uuid.UUID(job.state["campaign"]) if "campaign" in job.state else None
        if campaign_id is None:
            campaign_id = service.evaluation_campaign(session, job, spec)
            job.state = {**job.state, "campaign": str(campaign_id), "campaigns": [str(campaign_id)]}
        verified, total = service.campaign_progress(session, campaign_id)
        reports = service.strategy_report(session, campaign_id) if verified >= total else None
        name = job.name
    stage = f"{verified}/{total} samples verified"
    if reports is None:
        runner.progress(0.99 * verified / max(1, total), stage, force=True)
        return Outcome(waiting=True, poll_s=spec.poll_s, stage=stage)
    extra, notes = _model_strategies(runner, spec, campaign_id)
    reports = [*reports, *extra]
    document = evaluate.document(
        spec.model, str(spec.problem_set_id), str(campaign_id), reports, spec.model_dump(mode="json")
    )
    document["summary"].update(notes)
    artifact = runner.json_output("report", document, kind="report", name=f"{name}/report")
    summary = {**evaluate.summarize(reports), **notes, "report": artifact.sha256}
    runner.progress(1.0, stage, summary, force=True)
    return Outcome()


def _model_strategies(
    runner: Runner, spec: EvaluateSpec, campaign_id: uuid.UUID
) -> tuple[list[StrategyReport], dict[str, Any]]:
    """The strategies that need a model (fuzzy majority, likelihood), when the spec asks for them."""
    if spec.fuzzy_majority is None and spec.likelihood is None:
        return [], {}
    groups = ttc.samples_of(runner.read(lambda s: service.verified_records(s, campaign_id)))
    reports: list[StrategyReport] = []
    notes: dict[str, Any] = {}
    if spec.fuzzy_majority is not None:
        runner.progress(0.99, "fuzzy majority: embedding answers", force=True)
        report, notes["fuzzy_majority_embedding"] = ttc.fuzzy_majority(
            groups, spec.fuzzy_majority, embeddings.embed
        )
        reports.append(report)
    if spec.likelihood is not None:
        model = spec.likelihood.model or spec.model
        runner.progress(0.99, f"likelihood: scoring samples under {model}", force=True)
        scorer = _scorers(runner)(model, spec.likelihood.device)
        report, notes["likelihood_scored_tokens_per_problem"] = ttc.likelihood(
            groups, spec.likelihood, scorer
        )
        notes["likelihood_model"] = model
        reports.append(report)
    return reports, notes


# --------------------------------------------------------------------------- grpo


def _grpo(runner: Runner) -> Outcome:
    from coordinator.pipeline import trainer

    with runner.session() as session:
        job = runner.job(session)
        spec = GrpoSpec.model_validate(job.spec)
        source = service.resolve(session, runner.settings, spec.model)
        base = service.base_model_name(session, spec.model)
        current = rl.latest(session, job.id)
    if current is None:
        trainer.publish_initial(runner, spec, source, base)
        return Outcome(waiting=True, poll_s=spec.poll_s, stage="v0 published; rolling out")
    if current.version >= spec.steps:
        trainer.finalize(runner, current.sha256)
        return Outcome()
    if trainer.advance(runner, spec, ModelSource(source.base, None), base, current):
        return _grpo(runner)  # a new version: finished, or its rollouts just started
    return Outcome(waiting=True, poll_s=spec.poll_s, stage="waiting for rollouts")


EXECUTORS: dict[str, Callable[[Runner], Outcome]] = {
    "select": _select,
    "sft": _sft,
    "evaluate": _evaluate,
    "grpo": _grpo,
}
