"""Every table, imported in one place for Alembic and for metadata-wide operations."""

from coordinator.campaigns.models import Campaign
from coordinator.credit.models import CreditGrant, Team, TeamMember
from coordinator.db import Base
from coordinator.jobs.models import Job
from coordinator.pipeline.models import Artifact, JobOutput, PipelineJob, PolicyVersion, RolloutGroup
from coordinator.problems.models import Problem, ProblemSet
from coordinator.results.models import Trace
from coordinator.trust.models import Validation, WorkerTrust
from coordinator.workers.models import Worker

__all__ = [
    "Artifact",
    "Base",
    "Campaign",
    "CreditGrant",
    "Job",
    "JobOutput",
    "PipelineJob",
    "PolicyVersion",
    "Problem",
    "ProblemSet",
    "RolloutGroup",
    "Team",
    "TeamMember",
    "Trace",
    "Validation",
    "Worker",
    "WorkerTrust",
]
