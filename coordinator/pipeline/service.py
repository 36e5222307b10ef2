"""Pipeline jobs: creation, the one-runner-at-a-time lifecycle, artifacts, and the data jobs read.

A job is owned by one task chain at a time, named by `wake_token`: a task must present the live
token to `claim` the job, a job whose runner stops heartbeating is claimable again after
`STALL_AFTER_S`, and `resume` rotates the token so that any older chain exits on its next step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from coordinator.campaigns import service as campaigns
from coordinator.campaigns import strategies
from coordinator.campaigns.models import CampaignStatus
from coordinator.config import Settings
from coordinator.datasets import service as datasets
from coordinator.db import utcnow
from coordinator.errors import BadRequest, Conflict, FlywheelError, NotFound
from coordinator.pipeline import repository
from coordinator.pipeline.artifacts import ArtifactStore
from coordinator.pipeline.models import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    WAITING,
    Artifact,
    PipelineJob,
)
from coordinator.problems import service as problems
from shared.assets import ModelSource, is_sha256, resolve_model
from shared.pipeline_types import (
    ARTIFACT_MODEL_PREFIX,
    ArtifactOut,
    EvaluateSpec,
    GrpoSpec,
    JobSpecIn,
    PipelineJobCreate,
    PipelineJobOut,
    SelectSpec,
    SftSpec,
)
from shared.protocol import API_PREFIX, CampaignCreate, ModelRef, Routes, StrategyReport

STALL_AFTER_S = 120.0  # a runner heartbeats every KEEPALIVE_S; this many seconds of silence = gone
KEEPALIVE_S = 20.0
WEIGHT_KINDS = ("checkpoint", "policy")
ARTIFACTS_ROUTE = Routes.artifacts


def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.data_dir / "artifacts")


def workdir(settings: Settings, job_id: uuid.UUID) -> Path:
    """Scratch space of one job (resumable snapshots); on storage every train worker shares."""
    return settings.data_dir / "pipeline" / str(job_id)


def parse_spec(job: PipelineJob) -> JobSpecIn:
    return PipelineJobCreate.model_validate({"spec": job.spec}).spec


# --------------------------------------------------------------------------- creation and reading


def create_job(session: Session, request: PipelineJobCreate, settings: Settings) -> PipelineJob:
    _check_references(session, request.spec, settings)
    job_id = uuid.uuid4()
    job = PipelineJob(
        id=job_id,
        name=request.name or f"{request.spec.kind}-{job_id.hex[:8]}",
        kind=request.spec.kind,
        spec=request.spec.model_dump(mode="json"),
        status=QUEUED,
        stage="queued",
        progress=0.0,
        metrics={},
        state={},
        wake_token=uuid.uuid4(),
        attempts=0,
    )
    return repository.add_job(session, job)


def _check_references(session: Session, spec: JobSpecIn, settings: Settings) -> None:
    """Fail at creation, not minutes later in a task, when something the spec names is missing."""
    if isinstance(spec, SelectSpec):
        for campaign_id in spec.campaign_ids:
            campaigns.get(session, campaign_id)
        for step in spec.steps:
            for extra in getattr(step, "campaign_ids", []):
                campaigns.get(session, extra)
            for model in (getattr(step, "model", None), getattr(step, "sampler_model", None)):
                if model is not None:
                    resolve(session, settings, model)
    elif isinstance(spec, SftSpec):
        artifact = get_artifact(session, spec.dataset)
        if artifact.kind != "dataset":
            raise BadRequest(f"artifact {spec.dataset} is a {artifact.kind}, not a dataset")
        resolve(session, settings, spec.model)
    elif isinstance(spec, EvaluateSpec | GrpoSpec):
        problems.get_set(session, spec.problem_set_id)
        resolve(session, settings, spec.model)
        scorer = getattr(spec, "likelihood", None)
        if scorer is not None and scorer.model is not None:
            resolve(session, settings, scorer.model)


def get_job(session: Session, job_id: uuid.UUID) -> PipelineJob:
    job = repository.get_job(session, job_id)
    if job is None:
        raise NotFound(f"no pipeline job {job_id}")
    return job


def list_jobs(session: Session, kind: str | None = None, limit: int = 100) -> Sequence[PipelineJob]:
    return repository.list_jobs(session, kind, limit)


def artifact_out(artifact: Artifact) -> ArtifactOut:
    return ArtifactOut(
        sha256=artifact.sha256,
        kind=artifact.kind,
        name=artifact.name,
        version=artifact.version,
        size_bytes=artifact.size_bytes,
        filename=artifact.filename,
        media_type=artifact.media_type,
        job_id=artifact.job_id,
        metadata=artifact.meta,
        created_at=artifact.created_at,
        url=artifact_url(artifact.sha256),
    )


def artifact_url(sha256: str) -> str:
    """Where an artifact's bytes are, under the coordinator's base URL."""
    return f"{API_PREFIX}{ARTIFACTS_ROUTE}/{sha256}"


def to_out(session: Session, job: PipelineJob) -> PipelineJobOut:
    outputs = {label: artifact_out(a) for label, a in repository.outputs(session, job.id)}
    return PipelineJobOut(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        spec=job.spec,
        metrics=job.metrics,
        outputs=outputs,
        campaign_ids=[uuid.UUID(c) for c in job.state.get("campaigns", [])],
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


# --------------------------------------------------------------------------- lifecycle


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=STALL_AFTER_S)


def claim(session: Session, job_id: uuid.UUID, token: uuid.UUID) -> bool:
    now = utcnow()
    return repository.claim(session, job_id, token, now, _stale_before(now))


def touch(session: Session, job_id: uuid.UUID, token: uuid.UUID, **values: Any) -> bool:
    return repository.touch(session, job_id, token, {"heartbeat_at": utcnow(), **values})


def finish(
    session: Session, job_id: uuid.UUID, token: uuid.UUID, status: str, error: str | None = None
) -> bool:
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if status == DONE:
        values.update(progress=1.0, stage="done")
    return touch(session, job_id, token, **values)


def wait(session: Session, job_id: uuid.UUID, token: uuid.UUID, stage: str) -> uuid.UUID | None:
    """Park a running job until its next poll; returns the token of the next task (None: lost)."""
    new_token = uuid.uuid4()
    ok = touch(session, job_id, token, status=WAITING, stage=stage, wake_token=new_token)
    return new_token if ok else None


def resume(session: Session, job_id: uuid.UUID) -> uuid.UUID:
    """Hand the job to a new task chain; any older chain exits at its next claim or heartbeat."""
    job = get_job(session, job_id)
    now = utcnow()
    alive = job.status == RUNNING and job.heartbeat_at is not None and job.heartbeat_at >= _stale_before(now)
    if alive:
        raise Conflict("the job is running; cancel it first or wait for it")
    if job.status == DONE:
        raise Conflict("the job is done")
    job.wake_token = uuid.uuid4()
    if job.status in (FAILED, CANCELLED):
        job.status, job.error, job.finished_at = QUEUED, None, None
    # A GRPO run's campaigns of stale versions stay paused: only groups still open are worth rolling out.
    campaign_ids = (
        repository.campaigns_with_open_groups(session, job.id) if job.kind == "grpo" else _campaigns(job)
    )
    repository.set_campaign_status(session, campaign_ids, CampaignStatus.RUNNING)
    return job.wake_token


def cancel(session: Session, job_id: uuid.UUID) -> PipelineJob:
    job = get_job(session, job_id)
    if job.status in FINISHED:
        return job
    job.status, job.wake_token, job.finished_at, job.stage = CANCELLED, None, utcnow(), "cancelled"
    # volunteers stop spending on it
    repository.set_campaign_status(session, _campaigns(job), CampaignStatus.PAUSED)
    return job


def _campaigns(job: PipelineJob) -> list[uuid.UUID]:
    return [uuid.UUID(c) for c in job.state.get("campaigns", [])]


def stalled_jobs(session: Session, limit: int = 100) -> Sequence[uuid.UUID]:
    return repository.stalled(session, _stale_before(utcnow()), limit)


# --------------------------------------------------------------------------- artifacts and models


def get_artifact(session: Session, sha256: str) -> Artifact:
    if not is_sha256(sha256):
        raise BadRequest("an artifact is named by a lowercase hex sha256")
    artifact = repository.get_artifact(session, sha256)
    if artifact is None:
        raise NotFound(f"no artifact {sha256}")
    return artifact


def register_artifact(
    session: Session,
    files: ArtifactStore,
    path: Path,
    *,
    kind: str,
    name: str,
    filename: str,
    media_type: str,
    job_id: uuid.UUID | None,
    meta: dict[str, Any],
) -> Artifact:
    """Store a file under its sha256 and record it; the same bytes registered twice are one artifact."""
    sha, size = files.put_file(path)
    existing = repository.get_artifact(session, sha)
    if existing is not None:
        return existing
    return repository.add_artifact(
        session,
        Artifact(
            sha256=sha,
            kind=kind,
            name=name,
            version=repository.next_version(session, name),
            size_bytes=size,
            filename=filename,
            media_type=media_type,
            job_id=job_id,
            meta=meta,
        ),
    )


def set_output(session: Session, job_id: uuid.UUID, label: str, artifact: Artifact) -> None:
    repository.set_output(session, job_id, label, artifact.sha256)


def resolve(session: Session, settings: Settings, name: str) -> ModelSource:
    """A model name -> where its config, tokenizer and weights are."""
    if not name.startswith(ARTIFACT_MODEL_PREFIX):
        return ModelSource(base=resolve_model(name))
    artifact = get_artifact(session, name.removeprefix(ARTIFACT_MODEL_PREFIX))
    if artifact.kind not in WEIGHT_KINDS:
        raise BadRequest(f"artifact {artifact.sha256} is a {artifact.kind}, not model weights")
    return ModelSource(
        base=resolve_model(str(artifact.meta["base_model"])), weights=store(settings).path(artifact.sha256)
    )


def base_model_name(session: Session, name: str) -> str:
    """The root base model a name builds on (itself unless it is an artifact)."""
    if not name.startswith(ARTIFACT_MODEL_PREFIX):
        return name
    return str(get_artifact(session, name.removeprefix(ARTIFACT_MODEL_PREFIX)).meta["base_model"])


def base_model_of(session: Session, name: str, revision: str | None) -> tuple[str, str | None]:
    """(name, revision) of the model whose config describes `name`: an artifact (a checkpoint, a
    policy version) shares its base model's vocabulary and size; an artifact this coordinator
    does not know stands for itself."""
    if not name.startswith(ARTIFACT_MODEL_PREFIX):
        return name, revision
    try:
        return base_model_name(session, name), None
    except FlywheelError:
        return name, revision


def read_jsonl(files: ArtifactStore, sha256: str) -> list[dict[str, Any]]:
    with files.path(sha256).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- data for selection


def accepted_records(session: Session, campaign_ids: Sequence[uuid.UUID]) -> Iterator[dict[str, Any]]:
    where = datasets.ExportFilter(statuses=("accepted",))
    for campaign_id in campaign_ids:
        yield from datasets.records_in(session, campaign_id, where)


def verified_records(session: Session, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every verified (accepted or rejected) trace of a campaign as an export record."""
    where = datasets.ExportFilter(statuses=("accepted", "rejected"))
    return list(datasets.records_in(session, campaign_id, where))


def verified_scores(session: Session, campaign_ids: Sequence[str]) -> list[tuple[str, float, bool]]:
    return repository.verified_scores(session, [uuid.UUID(c) for c in campaign_ids])


def verifier_specs(
    session: Session, campaign_ids: Sequence[uuid.UUID]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(campaign id, external problem id) -> verifier spec; used to re-verify edited traces."""
    specs: dict[tuple[str, str], dict[str, Any]] = {}
    for campaign_id in campaign_ids:
        for problem, spec in repository.verifier_specs(session, campaign_id).items():
            specs[(str(campaign_id), problem)] = spec
    return specs


# --------------------------------------------------------------------------- evaluation campaigns


def evaluation_campaign(session: Session, job: PipelineJob, spec: EvaluateSpec) -> uuid.UUID:
    """The volunteer campaign that generates an evaluation's samples; made once per job."""
    from coordinator.campaigns import repository as campaigns_repository

    name = f"eval-{job.id.hex[:16]}"
    existing = campaigns_repository.by_name(session, name)
    if existing is not None:  # a resumed run finds the campaign its lost predecessor made
        return existing.id
    request = CampaignCreate(
        name=name,
        problem_set_id=spec.problem_set_id,
        model=ModelRef(name=spec.model),
        sampling=spec.sampling,
        samples_per_problem=spec.samples_per_problem,
        seed=spec.seed,
        budget=spec.budget,
    )
    return campaigns.create(session, request).id


def campaign_progress(session: Session, campaign_id: uuid.UUID) -> tuple[int, int]:
    """(verified traces, jobs) of a campaign."""
    report = campaigns.progress(session, campaign_id)
    return report.accepted + report.rejected, report.jobs


def strategy_report(session: Session, campaign_id: uuid.UUID) -> list[StrategyReport]:
    return strategies.campaign_report(session, campaign_id)
