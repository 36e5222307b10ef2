"""Lease jobs ahead of the engine, so a batch is waiting whenever the one generating finishes.

The prefetcher asks for as many jobs as fit under `--max-leases` (and what is left of the
day's cap), only while the volunteer's controls allow leasing. It sleeps between attempts when
there is no room or no job, and is woken early when room frees up or a control changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.protocol import LeasedJob, LeaseGrant, LeaseRequest
from worker.background import Background
from worker.client import CoordinatorClient
from worker.controls import Controls
from worker.engines.base import Engine
from worker.errors import TransientError, WorkerError
from worker.leases import Heartbeat, JobQueue, LeaseBook, give_back
from worker.progress import Stats

log = logging.getLogger("flywheel.worker")


@dataclass(frozen=True)
class LeasePolicy:
    models: Callable[[], list[str]]  # the model names to ask jobs for, read before each request
    max_jobs: int  # per lease request
    poll_s: float  # wait after an empty grant or a failed request
    once: bool  # lease once, then stop


class Prefetcher(Background):
    def __init__(
        self,
        client: CoordinatorClient,
        engine: Engine,
        parts: tuple[LeaseBook, JobQueue, Heartbeat, Controls, Stats],
        policy: LeasePolicy,
        pending: Callable[[], int],
        on_fatal: Callable[[WorkerError], None],
    ) -> None:
        super().__init__("flywheel-prefetch")
        self.client = client
        self.engine = engine
        self.book, self.queue, self.heartbeat, self.controls, self.stats = parts
        self.policy = policy
        self.pending = pending  # jobs leased and not yet generated (queued + generating)
        self.on_fatal = on_fatal
        self.wake = threading.Event()
        self.empty_since: float | None = None  # since when every lease attempt came back empty
        self.done = False  # --once: the one lease is made

    def close(self, timeout_s: float | None = None) -> None:
        self.wake.set()
        # a lease request may be retrying: let it finish its longest back-off
        super().close(self.client.retry.max_delay_s + 60 if timeout_s is None else timeout_s)

    def wanted(self) -> int:
        """Jobs to ask for now: room under the lease cap and the day's cap; 0 while blocked."""
        if self.controls.lease_block() is not None:
            return 0
        wanted = min(self.policy.max_jobs, self.book.room())
        left = self.controls.jobs_left_today()
        if left is not None:
            wanted = min(wanted, left - self.pending())
        return max(0, wanted)

    def _run(self) -> None:
        while not self._closed.is_set() and not self.done:
            self.wake.clear()
            wanted = self.wanted()
            if wanted > 0:
                models = self.policy.models()
                grant = self._lease(wanted, models)
                if grant is not None:
                    self._accept(self._bounded(grant, wanted), models)
                self.done = self.policy.once
                if grant is not None and grant.jobs:
                    continue
            self.wake.wait(self.policy.poll_s)

    def _lease(self, wanted: int, models: list[str]) -> LeaseGrant | None:
        try:
            info = getattr(self.engine, "info", None)  # the dtype decides which campaigns take our work
            dtype = str(getattr(info, "dtype", "") or "")
            grant = self.client.lease(LeaseRequest(max_jobs=wanted, models=models, dtype=dtype))
        except TransientError as exc:
            log.warning("cannot lease jobs: %s", exc)
            self._note_empty()
            return None
        except WorkerError as exc:  # wrong token, banned, incompatible: retrying cannot help
            self.on_fatal(exc)
            self._closed.set()
            return None
        self.heartbeat.interval_s = grant.heartbeat_interval_s
        return grant

    def _bounded(self, grant: LeaseGrant, wanted: int) -> LeaseGrant:
        """At most the jobs asked for: extra ones would break --max-leases, so they go back unrun."""
        if len(grant.jobs) <= wanted:
            return grant
        extra = [job.lease_id for job in grant.jobs[wanted:]]
        log.warning("the coordinator granted %d job(s) for %d asked; giving %d back", len(grant.jobs), wanted,
                    len(extra))  # fmt: skip
        self.stats.released += give_back(self.client, self.book, extra, "jobs beyond what was asked")
        return grant.model_copy(update={"jobs": grant.jobs[:wanted]})

    def _note_empty(self) -> None:
        if self.empty_since is None:
            self.empty_since = time.monotonic()

    def _accept(self, grant: LeaseGrant, models: list[str]) -> None:
        self.stats.leased += len(grant.jobs)
        if not grant.jobs:
            self._note_empty()
            return
        self.empty_since = None
        self.book.add(job.lease_id for job in grant.jobs)
        runnable = [job for job in grant.jobs if self._runnable(job, models)]
        kept = {job.lease_id for job in runnable}
        refused = [job.lease_id for job in grant.jobs if job.lease_id not in kept]
        self.stats.released += give_back(self.client, self.book, refused, "jobs this worker cannot run")
        self.queue.put(runnable)

    def _runnable(self, job: LeasedJob, models: list[str]) -> bool:
        why = None
        if job.spec.model.name not in models:
            why = f"wants model {job.spec.model.name!r}, which this worker did not ask for"
        else:
            why = self.engine.unsupported(job.spec)  # a policy version is downloaded here if need be
        if why is not None:
            log.warning("job %s %s; given back", job.spec.job_id, why)
        return why is None
