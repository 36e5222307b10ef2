"""Tables of the downstream pipeline: jobs, their content-addressed artifacts, RL policy versions and
rollout groups."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import GUID, Base, JSONType, UTCDateTime, utcnow


class JobState(StrEnum):
    """A pipeline job's state. `waiting`: it handed work to volunteers (a campaign) and polls for it."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class GroupState(StrEnum):
    """A GRPO rollout group's state."""

    OPEN = "open"
    USED = "used"
    SKIPPED = "skipped"  # every member got the same reward: zero advantage, nothing to learn
    STALE = "stale"  # its policy version fell more than the staleness bound behind


QUEUED, RUNNING, WAITING = JobState.QUEUED, JobState.RUNNING, JobState.WAITING
DONE, FAILED, CANCELLED = JobState.DONE, JobState.FAILED, JobState.CANCELLED
FINISHED = (DONE, FAILED, CANCELLED)
GROUP_OPEN, GROUP_USED = GroupState.OPEN, GroupState.USED
GROUP_SKIPPED, GROUP_STALE = GroupState.SKIPPED, GroupState.STALE


class PipelineJob(Base):
    """One downstream job (select, sft, evaluate, grpo): its spec, progress, metrics and state."""

    __tablename__ = "pipeline_jobs"
    __table_args__ = (Index("ix_pipeline_jobs_status_heartbeat", "status", "heartbeat_at"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    stage: Mapped[str] = mapped_column(String(256), default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # What a resumed run needs to carry on (campaigns it made, cursors); never shown raw to clients.
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The token of the one live task chain; a task holding an older token exits (see tasks.py).
    wake_token: Mapped[uuid.UUID | None] = mapped_column(GUID, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """A file under `data_dir/artifacts/<sha256>`; identical bytes are one artifact."""

    __tablename__ = "pipeline_artifacts"
    __table_args__ = (UniqueConstraint("name", "version"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(192))
    version: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(256))
    media_type: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        GUID, ForeignKey("pipeline_jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobOutput(Base):
    """Which artifact a job produced under which label (one artifact may serve several jobs)."""

    __tablename__ = "pipeline_outputs"

    job_id: Mapped[uuid.UUID] = mapped_column(
        GUID, ForeignKey("pipeline_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("pipeline_artifacts.sha256"))


class PolicyVersion(Base):
    """Version k of an RL run's policy: weights (safetensors) that rollout workers download."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("run_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    run_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("pipeline_jobs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("pipeline_artifacts.sha256"))
    base_model: Mapped[str] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RolloutGroup(Base):
    """`group_size` rollouts of one problem under one policy version (one campaign's jobs)."""

    __tablename__ = "rollout_groups"
    __table_args__ = (
        UniqueConstraint("campaign_id", "problem_id"),
        Index("ix_rollout_groups_run_status", "run_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    run_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("pipeline_jobs.id", ondelete="CASCADE"))
    policy_version: Mapped[int] = mapped_column(Integer)
    campaign_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("campaigns.id", ondelete="CASCADE"))
    problem_id: Mapped[uuid.UUID] = mapped_column(GUID, ForeignKey("problems.id"))
    group_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=GROUP_OPEN)
    reward_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward_std: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_in_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
