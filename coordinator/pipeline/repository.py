"""All SQL of the pipeline area."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign, CampaignStatus
from coordinator.jobs.models import LEASED, QUEUED, Job
from coordinator.pipeline.models import (
    GROUP_OPEN,
    RUNNING,
    Artifact,
    JobOutput,
    JobState,
    PipelineJob,
    PolicyVersion,
    RolloutGroup,
)
from coordinator.problems.models import Problem
from coordinator.results.models import ACCEPTED, Trace
from coordinator.trust.models import UNSETTLED, usable

VERIFIED = ("accepted", "rejected")

# --------------------------------------------------------------------------- jobs


def add_job(session: Session, job: PipelineJob) -> PipelineJob:
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: uuid.UUID) -> PipelineJob | None:
    return session.get(PipelineJob, job_id)


def list_jobs(session: Session, kind: str | None, limit: int) -> Sequence[PipelineJob]:
    query = select(PipelineJob).order_by(PipelineJob.created_at.desc()).limit(limit)
    if kind is not None:
        query = query.where(PipelineJob.kind == kind)
    return session.scalars(query).all()


def claim(
    session: Session, job_id: uuid.UUID, token: uuid.UUID, now: datetime, stale_before: datetime
) -> bool:
    """Make the caller the job's one runner: its token must be the live one, and nobody else may be
    running it (a `running` job whose heartbeat stopped counts as abandoned)."""
    j = PipelineJob
    runnable = or_(
        j.status.in_((JobState.QUEUED, JobState.WAITING)),
        and_(j.status == RUNNING, j.heartbeat_at < stale_before),
    )
    result = session.execute(
        update(j)
        .where(j.id == job_id, j.wake_token == token, runnable)
        .values(
            status=RUNNING,
            heartbeat_at=now,
            attempts=j.attempts + 1,
            started_at=func.coalesce(j.started_at, now),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def touch(session: Session, job_id: uuid.UUID, token: uuid.UUID, values: dict[str, Any]) -> bool:
    """Update a running job held by `token`; False when the runner has lost it (cancelled, taken over)."""
    j = PipelineJob
    result = session.execute(
        update(j).where(j.id == job_id, j.wake_token == token, j.status == RUNNING).values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def stalled(session: Session, stale_before: datetime, limit: int) -> Sequence[uuid.UUID]:
    """Jobs whose task chain is gone: running or waiting with no heartbeat since `stale_before`, or
    queued since before it without a task ever claiming them."""
    j = PipelineJob
    silent = and_(j.status.in_((RUNNING, JobState.WAITING)), j.heartbeat_at < stale_before)
    unclaimed = and_(j.status == JobState.QUEUED, func.coalesce(j.heartbeat_at, j.created_at) < stale_before)
    return session.scalars(select(j.id).where(or_(silent, unclaimed)).limit(limit)).all()


# --------------------------------------------------------------------------- artifacts


def get_artifact(session: Session, sha256: str) -> Artifact | None:
    return session.get(Artifact, sha256)


def next_version(session: Session, name: str) -> int:
    latest = session.scalar(select(func.max(Artifact.version)).where(Artifact.name == name))
    return int(latest or 0) + 1


def add_artifact(session: Session, artifact: Artifact) -> Artifact:
    session.add(artifact)
    session.flush()
    return artifact


def set_output(session: Session, job_id: uuid.UUID, label: str, sha256: str) -> None:
    row = session.get(JobOutput, (job_id, label))
    if row is None:
        session.add(JobOutput(job_id=job_id, label=label, sha256=sha256))
    else:
        row.sha256 = sha256
    session.flush()


def outputs(session: Session, job_id: uuid.UUID) -> list[tuple[str, Artifact]]:
    query = (
        select(JobOutput.label, Artifact)
        .join(Artifact, Artifact.sha256 == JobOutput.sha256)
        .where(JobOutput.job_id == job_id)
        .order_by(JobOutput.label)
    )
    return [(label, artifact) for label, artifact in session.execute(query)]


# --------------------------------------------------------------------------- problems and traces


def verifier_specs(session: Session, campaign_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """external problem id -> verifier spec, for the problems of a campaign's set (coordinator only)."""
    query = (
        select(Problem.external_id, Problem.verifier_spec)
        .join(Campaign, Campaign.problem_set_id == Problem.problem_set_id)
        .where(Campaign.id == campaign_id)
    )
    return {external: spec for external, spec in session.execute(query)}


def verified_scores(session: Session, campaign_ids: Sequence[uuid.UUID]) -> list[tuple[str, float, bool]]:
    """(external problem id, score, passed) of every verified trace of these campaigns."""
    query = (
        select(Problem.external_id, Trace.score, Trace.status)
        .join(Job, Job.id == Trace.job_id)
        .join(Problem, Problem.id == Job.problem_id)
        .where(Trace.campaign_id.in_(campaign_ids), Trace.status.in_(VERIFIED), usable())
    )
    return [(p, float(score or 0.0), status == ACCEPTED) for p, score, status in session.execute(query)]


def problem_ids(session: Session, problem_set_id: uuid.UUID) -> Sequence[uuid.UUID]:
    query = select(Problem.id).where(Problem.problem_set_id == problem_set_id).order_by(Problem.external_id)
    return session.scalars(query).all()


def set_campaign_status(session: Session, campaign_ids: Sequence[uuid.UUID], status: str) -> None:
    if campaign_ids:
        session.execute(update(Campaign).where(Campaign.id.in_(campaign_ids)).values(status=status))


# --------------------------------------------------------------------------- policy versions


def add_policy_version(session: Session, version: PolicyVersion) -> PolicyVersion:
    session.add(version)
    session.flush()
    return version


def policy_versions(session: Session, run_id: uuid.UUID) -> Sequence[PolicyVersion]:
    query = select(PolicyVersion).where(PolicyVersion.run_id == run_id).order_by(PolicyVersion.version)
    return session.scalars(query).all()


def latest_policy(session: Session, run_id: uuid.UUID) -> PolicyVersion | None:
    query = (
        select(PolicyVersion)
        .where(PolicyVersion.run_id == run_id)
        .order_by(PolicyVersion.version.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def policy_by_sha(session: Session, sha256: str) -> PolicyVersion | None:
    return session.scalars(select(PolicyVersion).where(PolicyVersion.sha256 == sha256).limit(1)).first()


# --------------------------------------------------------------------------- rollout groups


def insert_groups(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(RolloutGroup), rows)


def groups_by_status(session: Session, run_id: uuid.UUID, status: str) -> Sequence[RolloutGroup]:
    query = select(RolloutGroup).where(RolloutGroup.run_id == run_id, RolloutGroup.status == status)
    return session.scalars(query.order_by(RolloutGroup.created_at, RolloutGroup.id)).all()


def group_counts(session: Session, run_id: uuid.UUID) -> dict[str, int]:
    query = (
        select(RolloutGroup.status, func.count())
        .where(RolloutGroup.run_id == run_id)
        .group_by(RolloutGroup.status)
    )
    return {status: int(n) for status, n in session.execute(query)}


def verified_per_group(session: Session, run_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Open group id -> how many of its rollouts have a verdict and a settled validation: a group
    is complete once no rollout of it may still be withdrawn by a validation in flight. A returned
    rollout (unverifiable, or failed its validation) does not count: its job is being done again."""
    g = RolloutGroup
    query = (
        select(g.id, func.count(Trace.id))
        .join(Job, and_(Job.campaign_id == g.campaign_id, Job.problem_id == g.problem_id))
        .join(Trace, Trace.job_id == Job.id)
        .where(g.run_id == run_id, g.status == GROUP_OPEN, _settled(), Trace.returned.is_(False))
        .group_by(g.id)
    )
    return {group_id: int(n) for group_id, n in session.execute(query)}


def campaigns_with_open_groups(session: Session, run_id: uuid.UUID) -> list[uuid.UUID]:
    query = select(RolloutGroup.campaign_id).where(
        RolloutGroup.run_id == run_id, RolloutGroup.status == GROUP_OPEN
    )
    return sorted(set(session.scalars(query)))


def set_group_status(
    session: Session, group_ids: Sequence[uuid.UUID], status: str, used_in_version: int | None = None
) -> None:
    if group_ids:
        values: dict[str, Any] = {"status": status}
        if used_in_version is not None:
            values["used_in_version"] = used_in_version
        session.execute(update(RolloutGroup).where(RolloutGroup.id.in_(group_ids)).values(**values))


def set_group_rewards(session: Session, group_id: uuid.UUID, mean: float, std: float) -> None:
    session.execute(
        update(RolloutGroup).where(RolloutGroup.id == group_id).values(reward_mean=mean, reward_std=std)
    )


def _settled() -> ColumnElement[bool]:
    """A verified trace whose validation is decided and done (whatever came of it)."""
    return and_(Trace.status.in_(VERIFIED), Trace.validation.is_not(None), Trace.validation.not_in(UNSETTLED))


def rollouts(session: Session, group_ids: Sequence[uuid.UUID]) -> Sequence[Any]:
    """Every verified, trainable rollout of these groups, with what the trainer and the rewards need.
    A group still counts as complete by its verdicts (`verified_per_group`); what is left out here
    is neither a reward nor a training example."""
    g = RolloutGroup
    query = (
        select(
            g.id.label("group_id"),
            g.policy_version,
            Trace.id.label("trace_id"),
            Job.sample_index,
            Trace.completion_token_ids,
            Trace.logprobs,
            Trace.score,
            Trace.status,
            Problem.prompt,
            Problem.system,
        )
        .join(Job, and_(Job.campaign_id == g.campaign_id, Job.problem_id == g.problem_id))
        .join(Trace, Trace.job_id == Job.id)
        .join(Problem, Problem.id == g.problem_id)
        .where(g.id.in_(group_ids), Trace.status.in_(VERIFIED), usable())
        .order_by(g.id, Job.sample_index)
    )
    return session.execute(query).all()


def rollout_refs(session: Session, job_ids: Sequence[uuid.UUID]) -> Sequence[Any]:
    """The group and policy version of each rollout job among these (other jobs are left out)."""
    g, pv = RolloutGroup, PolicyVersion
    query = (
        select(
            Job.id.label("job_id"),
            g.id.label("group_id"),
            g.group_size,
            pv.version,
            pv.sha256,
            pv.base_model,
            Artifact.size_bytes,
        )
        .select_from(Job)
        .join(g, and_(g.campaign_id == Job.campaign_id, g.problem_id == Job.problem_id))
        .join(pv, and_(pv.run_id == g.run_id, pv.version == g.policy_version))
        .join(Artifact, Artifact.sha256 == pv.sha256)
        .where(Job.id.in_(job_ids))
    )
    return session.execute(query).all()


def live_policies(session: Session, base_model: str | None, limit: int) -> Sequence[Any]:
    """Policy versions that have open groups with jobs to lease in running campaigns, newest first."""
    g, pv, c = RolloutGroup, PolicyVersion, Campaign
    waiting = exists().where(
        Job.campaign_id == g.campaign_id, Job.problem_id == g.problem_id, Job.status.in_((QUEUED, LEASED))
    )
    query = (
        select(pv.version, pv.sha256, pv.base_model, Artifact.size_bytes, pv.created_at)
        .distinct()
        .select_from(g)
        .join(c, c.id == g.campaign_id)
        .join(pv, and_(pv.run_id == g.run_id, pv.version == g.policy_version))
        .join(Artifact, Artifact.sha256 == pv.sha256)
        .where(g.status == GROUP_OPEN, c.status == CampaignStatus.RUNNING, waiting)
        .order_by(pv.created_at.desc())
        .limit(limit)
    )
    if base_model is not None:
        query = query.where(pv.base_model == base_model)
    return session.execute(query).all()
