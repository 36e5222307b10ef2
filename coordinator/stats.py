"""Whole-coordinator counts for operators (`GET /v1/stats`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from coordinator.campaigns import repository as campaigns
from coordinator.jobs import repository as jobs
from coordinator.jobs.models import LEASED, QUEUED
from coordinator.problems import repository as problems
from coordinator.results import repository as results
from coordinator.results.models import ACCEPTED, PENDING, REJECTED
from coordinator.workers import repository as workers
from shared.protocol import Scope, Stats


def collect_stats(session: Session) -> Stats:
    job_counts = jobs.count_by_status(session)
    trace_counts = results.count_by_status(session)
    return Stats(
        workers=workers.count(session, Scope.volunteer.value),
        problems=problems.count_problems(session),
        campaigns=campaigns.count(session),
        jobs_queued=job_counts.get(QUEUED, 0),
        jobs_leased=job_counts.get(LEASED, 0),
        traces_pending=trace_counts.get(PENDING, 0),
        traces_accepted=trace_counts.get(ACCEPTED, 0),
        traces_rejected=trace_counts.get(REJECTED, 0),
    )
