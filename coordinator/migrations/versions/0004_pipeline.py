"""pipeline jobs, artifacts, policy versions, rollout groups

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import coordinator.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
GUID = coordinator.db.GUID
UTC = coordinator.db.UTCDateTime


def upgrade() -> None:
    _pipeline_jobs()
    _pipeline_artifacts()
    _pipeline_outputs()
    _policy_versions()
    _rollout_groups()


def _pipeline_jobs() -> None:
    op.create_table(
        "pipeline_jobs",
        sa.Column("id", GUID(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=256), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("wake_token", GUID(), nullable=True),
        sa.Column("heartbeat_at", UTC(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("started_at", UTC(), nullable=True),
        sa.Column("finished_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipeline_jobs") as batch:
        batch.create_index("ix_pipeline_jobs_kind", ["kind"], unique=False)
        batch.create_index("ix_pipeline_jobs_status_heartbeat", ["status", "heartbeat_at"], unique=False)


def _pipeline_artifacts() -> None:
    op.create_table(
        "pipeline_artifacts",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=192), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=256), nullable=False),
        sa.Column("media_type", sa.String(length=128), nullable=False),
        sa.Column("job_id", GUID(), nullable=True),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["pipeline_jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("sha256"),
        sa.UniqueConstraint("name", "version"),
    )
    with op.batch_alter_table("pipeline_artifacts") as batch:
        batch.create_index("ix_pipeline_artifacts_kind", ["kind"], unique=False)
        batch.create_index("ix_pipeline_artifacts_job_id", ["job_id"], unique=False)


def _pipeline_outputs() -> None:
    op.create_table(
        "pipeline_outputs",
        sa.Column("job_id", GUID(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["pipeline_jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["pipeline_artifacts.sha256"]),
        sa.PrimaryKeyConstraint("job_id", "label"),
    )


def _policy_versions() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("id", GUID(), nullable=False),
        sa.Column("run_id", GUID(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("base_model", sa.String(length=128), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["pipeline_jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["pipeline_artifacts.sha256"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "version"),
    )


def _rollout_groups() -> None:
    op.create_table(
        "rollout_groups",
        sa.Column("id", GUID(), nullable=False),
        sa.Column("run_id", GUID(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("campaign_id", GUID(), nullable=False),
        sa.Column("problem_id", GUID(), nullable=False),
        sa.Column("group_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reward_mean", sa.Float(), nullable=True),
        sa.Column("reward_std", sa.Float(), nullable=True),
        sa.Column("used_in_version", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["pipeline_jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["problem_id"], ["problems.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "problem_id"),
    )
    with op.batch_alter_table("rollout_groups") as batch:
        batch.create_index("ix_rollout_groups_run_status", ["run_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_table("rollout_groups")
    op.drop_table("policy_versions")
    op.drop_table("pipeline_outputs")
    op.drop_table("pipeline_artifacts")
    op.drop_table("pipeline_jobs")
