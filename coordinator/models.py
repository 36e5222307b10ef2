"""Every table, imported in one place for Alembic and for metadata-wide operations."""

from coordinator.campaigns.models import Campaign
from coordinator.db import Base
from coordinator.jobs.models import Job
from coordinator.problems.models import Problem, ProblemSet
from coordinator.results.models import Trace
from coordinator.workers.models import Worker

__all__ = ["Base", "Campaign", "Job", "Problem", "ProblemSet", "Trace", "Worker"]
