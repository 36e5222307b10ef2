"""HTTP routes of the pipeline: jobs (operators) and artifact downloads (any token; volunteers get
model weights only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from coordinator.db import after_commit, transaction
from coordinator.deps import OperatorDep, PrincipalDep, RuntimeDep, SessionDep
from coordinator.errors import Forbidden, NotFound
from coordinator.pipeline import rl, service, tasks
from shared.pipeline_types import (
    ArtifactOut,
    JobKind,
    PipelineJobCreate,
    PipelineJobOut,
    PolicyVersionOut,
)
from shared.protocol import MAX_NAME, PolicyList, Routes, Scope

router = APIRouter(tags=["pipeline"])
JOBS = "/pipeline/jobs"
ARTIFACTS = service.ARTIFACTS_ROUTE


@router.post(JOBS, response_model=PipelineJobOut, status_code=201)
def create(body: PipelineJobCreate, rt: RuntimeDep, _: OperatorDep) -> PipelineJobOut:
    with transaction(rt.sessions) as session:
        job = service.create_job(session, body, rt.settings)
        out = service.to_out(session, job)
        token = job.wake_token
        assert token is not None
        job_id = job.id
        after_commit(session, lambda: tasks.enqueue(rt, job_id, token))  # the task finds its row
    return out


@router.get(JOBS, response_model=list[PipelineJobOut])
def list_jobs(
    session: SessionDep,
    _: OperatorDep,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PipelineJobOut]:
    return [service.to_out(session, job) for job in service.list_jobs(session, kind, limit)]


@router.get(JOBS + "/{job_id}", response_model=PipelineJobOut)
def get(job_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> PipelineJobOut:
    return service.to_out(session, service.get_job(session, job_id))


@router.post(JOBS + "/{job_id}/cancel", response_model=PipelineJobOut)
def cancel(job_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> PipelineJobOut:
    return service.to_out(session, service.cancel(session, job_id))


@router.post(JOBS + "/{job_id}/resume", response_model=PipelineJobOut)
def resume(job_id: uuid.UUID, rt: RuntimeDep, _: OperatorDep) -> PipelineJobOut:
    with transaction(rt.sessions) as session:
        token = service.resume(session, job_id)
        out = service.to_out(session, service.get_job(session, job_id))
        after_commit(session, lambda: tasks.enqueue(rt, job_id, token))
    return out


@router.get(JOBS + "/{job_id}/policy", response_model=list[PolicyVersionOut])
def policy_versions(job_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> list[PolicyVersionOut]:
    service.get_job(session, job_id)
    return [rl.version_out(session, v) for v in rl.versions(session, job_id)]


@router.get(Routes.policies, response_model=PolicyList)
def live_policies(
    session: SessionDep,
    _: PrincipalDep,
    base_model: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
) -> PolicyList:
    """Policy versions with rollout jobs waiting, newest first: what a worker that serves RL may
    download before it asks for their jobs by name."""
    return rl.live_policies(session, base_model)


def _readable(session: SessionDep, who: PrincipalDep, sha256: str) -> ArtifactOut:
    artifact = service.get_artifact(session, sha256)
    if who.scope == Scope.volunteer and artifact.kind not in service.WEIGHT_KINDS:
        raise Forbidden("volunteers may download model weights only")
    return service.artifact_out(artifact)


@router.get(ARTIFACTS + "/{sha256}/info", response_model=ArtifactOut)
def artifact_info(sha256: str, session: SessionDep, who: PrincipalDep) -> ArtifactOut:
    return _readable(session, who, sha256)


# GET and HEAD are registered apart so each has its own OpenAPI operation id.
@router.head(ARTIFACTS + "/{sha256}", response_class=FileResponse, operation_id="artifact_head")
@router.get(ARTIFACTS + "/{sha256}", response_class=FileResponse, operation_id="artifact_download")
def download(sha256: str, rt: RuntimeDep, who: PrincipalDep) -> FileResponse:
    """The artifact's bytes. Supports `Range` (206 responses) so an interrupted download resumes;
    the ETag is the sha256, which is also what the client must find after hashing the whole file."""
    with transaction(rt.sessions) as session:
        artifact = _readable(session, who, sha256)
    path = service.store(rt.settings).path(artifact.sha256)
    if not path.is_file():
        raise NotFound(f"artifact {sha256} is recorded but its file is missing on this coordinator")
    headers = {"etag": f'"{artifact.sha256}"', "cache-control": "public, max-age=31536000, immutable"}
    return FileResponse(path, media_type=artifact.media_type, filename=artifact.filename, headers=headers)
