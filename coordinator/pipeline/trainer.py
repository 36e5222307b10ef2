"""The GRPO run loop on a trusted machine: publish a version, wait for its rollouts, update, repeat.

Each call of `advance` is one look: score what volunteers returned (coordinator-side rewards),
and when enough groups with a learning signal are in, take one policy step and publish the next
version. Between looks nothing lives in memory: the policy is its newest version's artifact and
the optimizer state is `optimizer-v<k>.pt` in the run's work folder, so any train worker can
take the next look, and a crash mid-step only repeats that step. The step itself, and the model
code around it, is ml/training/grpo.py.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from coordinator.pipeline import rl, service
from coordinator.pipeline.models import PipelineJob, PolicyVersion
from ml import prompts
from ml.loading import load_model, load_tokenizer, save_weights
from ml.training import batches, grpo
from shared.assets import ModelSource
from shared.pipeline_types import GrpoSpec

if TYPE_CHECKING:
    from coordinator.pipeline.runner import Runner


def run_metrics(session: Session, job: PipelineJob, spec: GrpoSpec) -> dict[str, Any]:
    """What the job shows: version, per-version history (reward, accuracy, KL, staleness), groups."""
    history = [v.metrics for v in rl.versions(session, job.id) if v.version > 0]
    newest = rl.latest(session, job.id)
    return {
        "version": newest.version if newest else None,
        "steps": spec.steps,
        "groups": rl.group_counts(session, job.id),
        "latest": history[-1] if history else {},
        "history": history,
    }


def publish_initial(runner: Runner, spec: GrpoSpec, source: ModelSource, base: str) -> None:
    """Version 0: the starting weights, as the safetensors file workers will download."""
    path = runner.workdir / "policy-v0.safetensors"
    save_weights(load_model(source, "cpu", "float32"), path)
    with runner.session() as session:
        job = runner.job(session)
        version = rl.publish(session, runner.files, job, 0, path, base, {"version": 0})
        if not job.state.get("campaigns"):
            rl.start_rollouts(session, job, spec, version, spec.groups_per_step)
        metrics = run_metrics(session, job, spec)
    runner.progress(0.0, "v0 published; rolling out", metrics, force=True)


def finalize(runner: Runner, sha256: str) -> None:
    with runner.session() as session:
        job = runner.job(session)
        rl.pause_all(session, job)
        artifact = service.get_artifact(session, sha256)
        service.set_output(session, job.id, "policy", artifact)
        metrics = run_metrics(session, job, GrpoSpec.model_validate(job.spec))
    runner.progress(1.0, "done", metrics, force=True)


def advance(
    runner: Runner, spec: GrpoSpec, base_source: ModelSource, base: str, current: PolicyVersion
) -> bool:
    """One look at the run; True when it published a new version."""
    with runner.session() as session:
        job = runner.job(session)
        plan = rl.collect(session, job, spec, current.version)
        if plan.top_up:
            rl.start_rollouts(session, job, spec, current, plan.top_up)
        metrics = run_metrics(session, job, spec)
    if not plan.train:
        stage = (
            f"v{current.version}: {plan.verified_open} rollouts verified in {plan.open_groups} open groups"
        )
        runner.progress(current.version / spec.steps, stage, metrics, force=True)
    if plan.exhausted:
        raise RuntimeError(
            f"every problem of the set gave all {spec.group_size} samples the same reward under "
            f"v{current.version}: nothing left to learn from these problems"
        )
    if not plan.train:
        return False
    entry = _train(runner, spec, base_source, current, plan)
    new_version = current.version + 1
    with runner.session() as session:
        job = runner.job(session)
        entry.update(rl.record_step(session, job, plan, new_version))
        published = rl.publish(
            session, runner.files, job, new_version, _policy_path(runner, new_version), base, entry
        )
        if new_version < spec.steps:
            rl.start_rollouts(session, job, spec, published, spec.groups_per_step)
        metrics = run_metrics(session, job, spec)
    runner.progress(new_version / spec.steps, f"v{new_version} published", metrics, force=True)
    return True


def _policy_path(runner: Runner, version: int) -> Path:
    return runner.workdir / f"policy-v{version}.safetensors"


def _prompt_ids(tokenizer: Any, prompt: str, system: str | None) -> list[int]:
    # The same turns the job spec gave the worker (coordinator.jobs.service): system first, if any.
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return prompts.prompt_ids(tokenizer, messages)


def _train(
    runner: Runner, spec: GrpoSpec, base_source: ModelSource, current: PolicyVersion, plan: rl.Plan
) -> dict[str, Any]:
    started = time.monotonic()
    tokenizer = load_tokenizer(base_source)
    first = runner.read(lambda s: rl.versions(s, runner.job_id)[0].sha256)
    rollouts = [
        grpo.Rollout(
            group_id=str(r.group_id),
            policy_version=r.policy_version,
            prompt_ids=_prompt_ids(tokenizer, r.prompt, r.system),
            completion_ids=r.completion_ids,
            old_logprobs=r.logprobs,
            reward=r.reward,
            passed=r.passed,
            advantage=r.advantage,
        )
        for r in plan.train
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else batches.end_of_turn_id(tokenizer)
    weights = (runner.files.path(current.sha256), runner.files.path(first))
    out = _policy_path(runner, current.version + 1)
    metrics = grpo.train_version(
        base_source.base, weights, rollouts, spec, int(pad), current.version, runner.workdir, out
    )
    staleness = [current.version - r.policy_version for r in plan.train]
    metrics.update(
        version=current.version + 1,
        groups_used=len(plan.used_groups),
        groups_skipped=plan.skipped,
        groups_stale=plan.stale,
        rollouts_excluded=plan.excluded,
        staleness_mean=statistics.fmean(staleness),
        staleness_max=max(staleness),
        train_seconds=round(time.monotonic() - started, 3),
    )
    return metrics
