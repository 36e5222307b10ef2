"""The daemon: prefetch leases -> generate in batches -> spool and submit, each on its own thread.

The engine runs on the calling thread and never waits for the network or the disk: a
`Prefetcher` keeps the next batch's jobs leased (within `--max-leases`), a `Submitter` writes
each finished batch to the spool and sends it while the next one generates, a `Heartbeat` keeps
every held lease alive, and a `Reporter` publishes the status once a second.

Invariants kept: a result is on disk before it is sent and leaves it only on an ack; leases
never exceed the cap; a pause, the end of the allowed hours or a shutdown stops the engine at the
next decode step and gives the unfinished leases back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from shared.protocol import MAX_BATCH, HardwareInfo
from worker.background import Background
from worker.client import CoordinatorClient
from worker.config import WorkerConfig
from worker.controls import Controls
from worker.engines.base import Engine
from worker.errors import WorkerError
from worker.leases import Heartbeat, JobQueue, LeaseBook, Queued, give_back
from worker.picker import Chooser, fixed_choice
from worker.prefetch import LeasePolicy, Prefetcher
from worker.progress import Progress, Stats
from worker.rollouts import PolicyWatcher
from worker.spool import Spool
from worker.state import StateStore, write_status
from worker.submitter import Finished, Submitter

log = logging.getLogger("flywheel.worker")
WAIT_S = 0.25  # how often an idle or blocked main loop looks again
REPORT_S = 1.0


@dataclass(frozen=True)
class Sizes:
    batch: int | None  # fixed batch size, or None: sized per batch from free memory
    ceiling: int  # the most jobs in one batch
    max_leases: int
    max_jobs: int  # per lease request


def plan_sizes(config: WorkerConfig, engine: Engine) -> Sizes:
    """Batch and lease limits; by default a second full batch may be leased while one generates."""
    fixed = config.batch_size if isinstance(config.batch_size, int) else None
    if fixed is not None:
        ceiling = fixed
    elif config.max_leases is not None:
        ceiling = max(1, min(max(MAX_BATCH, engine.default_batch), config.max_leases // 2))
    else:
        ceiling = engine.default_batch
    max_leases = config.max_leases or max(2 * ceiling, config.max_jobs or 0)
    max_jobs = min(config.max_jobs or MAX_BATCH, max_leases, MAX_BATCH)
    return Sizes(fixed, ceiling, max_leases, max_jobs)


class Reporter(Background):
    """Once a second: refresh the derived counters, redraw the progress view, write daemon.json."""

    def __init__(self, worker: Worker) -> None:
        super().__init__("flywheel-status")
        self.worker = worker

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)
        self.report()

    def _run(self) -> None:
        while not self._closed.wait(REPORT_S):
            self.report()

    def report(self) -> None:
        w = self.worker
        s = w.stats
        s.queued, s.held = len(w.queue), len(w.book)
        s.jobs_today = w.controls.jobs_today
        change = w.controls.next_schedule_change()
        s.next_change = change.isoformat(timespec="minutes") if change else None
        w.progress.update(s)
        try:
            write_status(w.config.state_path, {**w.identity(), **s.snapshot()})
        except OSError as exc:
            log.debug("cannot write the status file: %s", exc)


class Worker:
    """One daemon run; `stop` is set by the signal handler (or a test) to ask for a clean exit."""

    def __init__(
        self,
        config: WorkerConfig,
        client: CoordinatorClient,
        engine: Engine,
        spool: Spool,
        progress: Progress,
        hardware: HardwareInfo,
        stop: threading.Event,
        controls: Controls | None = None,
        policies: PolicyWatcher | None = None,
        chooser: Chooser | None = None,
    ) -> None:
        self.config, self.client, self.engine, self.spool = config, client, engine, spool
        self.progress, self.stop, self.policies = progress, stop, policies
        self.chooser = chooser  # set when the worker picked its model and may switch (worker/picker.py)
        config.state_path.mkdir(parents=True, exist_ok=True)  # for daemon.json, with --spool elsewhere
        self.controls = controls or Controls(
            StateStore(config.state_path), config.parsed_schedule, config.max_jobs_per_day
        )
        self.sizes = plan_sizes(config, engine)
        self.stats = Stats(spooled=len(spool), max_leases=self.sizes.max_leases, schedule=config.schedule,
                           max_jobs_per_day=config.max_jobs_per_day)  # fmt: skip
        self.queue = JobQueue()
        self.generating = 0
        self.fatal: WorkerError | None = None
        self.book = LeaseBook(self.sizes.max_leases, on_room=self._room_freed)
        self.heartbeat = Heartbeat(client, self.book, config.poll_interval_s)
        self.submitter = Submitter(
            client, spool, self.book, self.stats, (engine.info, hardware), config.poll_interval_s, self._fail
        )
        models = policies.models if policies is not None else lambda: [config.model]
        policy = LeasePolicy(models, self.sizes.max_jobs, config.poll_interval_s, config.once)
        parts = (self.book, self.queue, self.heartbeat, self.controls, self.stats)
        self.prefetcher = Prefetcher(client, engine, parts, policy, self._pending, self._fail)
        self.reporter = Reporter(self)
        self.controls.on_change = self.prefetcher.wake.set
        self._last_batch_end = time.monotonic()

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"pid": os.getpid(), "name": c.name, "coordinator": c.coordinator, "model": c.model,
                "engine": self.engine.info.name, "device": self.engine.info.device,
                "choice": (self.chooser.choice if self.chooser else fixed_choice(c)).status(),
                "updated": time.time()}  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Work until stopped, idle past --exit-when-idle, or one lease with --once; returns 0."""
        log.info("batches of %s, up to %d leases held", self.sizes.batch or f"<= {self.sizes.ceiling} (auto)",
                 self.sizes.max_leases)  # fmt: skip
        self.stats.work_started_at = time.time()
        if self.policies is not None:
            self.policies.start()  # first, so the first lease request can name what is cached
        self.reporter.report()  # the status names the model from its load on, not a second later
        for part in (self.heartbeat, self.submitter, self.prefetcher, self.reporter):
            part.start()
        try:
            self._main_loop()
        finally:
            self._shutdown()
        if self.fatal is not None:
            raise self.fatal
        log.info("stopped; %d unacknowledged result(s) left in %s", len(self.spool), self.spool.directory)
        return 0

    def _shutdown(self) -> None:
        self._set_status("stopping")
        self.prefetcher.close()
        if self.policies is not None:
            self.policies.close()
        self._give_back(self.queue.drain(), "shutting down")
        self.submitter.close()
        self.heartbeat.close()
        self.stats.status = "stopped"
        self.reporter.close()
        self.progress.close(self.stats)

    def _fail(self, exc: WorkerError) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stop.set()
        self.queue.wake()

    def _room_freed(self) -> None:
        self.prefetcher.wake.set()

    def _pending(self) -> int:
        return len(self.queue) + self.generating

    def _set_status(self, status: str) -> None:
        self.stats.status = status

    # ------------------------------------------------------------------ the engine's loop

    def _main_loop(self) -> None:
        while not self.stop.is_set():
            block = self.controls.generation_block()
            if block is not None:
                self._hold(block)
                continue
            if self.queue.wait(WAIT_S):
                self._run_batch(self.queue.take(self._batch_size()))
            elif self._finished_idle():
                return

    def _hold(self, why: str) -> None:
        """Paused or outside the allowed hours: nothing runs and no lease is kept waiting."""
        self._give_back(self.queue.drain(), why)
        self._set_status(why)
        self.controls.changed.clear()
        self.controls.changed.wait(WAIT_S)
        self._last_batch_end = time.monotonic()  # a pause is not idleness: --exit-when-idle waits

    def _batch_size(self) -> int:
        if self.sizes.batch is not None:
            return self.sizes.batch
        head = self.queue.peek(self.sizes.ceiling)
        return min(self.sizes.ceiling, self.engine.max_batch([job.spec for job in head]))

    def _finished_idle(self) -> bool:
        if self.config.once and self.prefetcher.done and not len(self.queue):
            return True
        empty = self.prefetcher.empty_since
        self._set_status(self.controls.lease_block() or ("idle" if empty is not None else "leasing"))
        if empty is not None and self._drained_and_switching():
            return True
        limit = self.config.exit_when_idle
        if limit is None or empty is None:
            return False
        return time.monotonic() - max(empty, self._last_batch_end) >= limit

    def _drained_and_switching(self) -> bool:
        """A worker that picked its model stops once nothing of it is left here and the chooser
        names another; its shutdown gives back what the prefetcher leased meanwhile."""
        if self.chooser is None or len(self.queue) or self.generating:
            return False
        if not self.chooser.switch(self.config.model):
            return False
        self._set_status("switching model")
        return True

    def _should_stop(self) -> bool:
        return self.stop.is_set() or self.controls.generation_block() is not None

    def _run_batch(self, batch: list[Queued]) -> None:
        live = [q for q in batch if not self.book.is_lost(q.job.lease_id)]
        self.stats.dropped += len(batch) - len(live)
        if not live:
            return
        self.generating = len(live)
        self.stats.batch_size = len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        self.stats.current = [f"{q.job.spec.problem_id}#{q.job.spec.sample_index}" for q in live]
        self._set_status("generating")
        started = time.monotonic()
        try:
            generations = self.engine.generate([q.job.spec for q in live], should_stop=self._should_stop)
        finally:
            self.generating, self.stats.current = 0, []
            self._last_batch_end = time.monotonic()
        if len(generations) < len(live):
            why = "shutting down" if self.stop.is_set() else (self.controls.generation_block() or "stopped")
            self._give_back(live, f"{why}: batch abandoned")
            return
        tokens = sum(len(g.completion_token_ids) for g in generations)
        self.stats.record_batch(len(live), tokens, self._last_batch_end - started)
        self.controls.count_jobs(len(live))
        self.submitter.put(
            [Finished(q.job, g, started - q.at) for q, g in zip(live, generations, strict=True)]
        )

    def _give_back(self, queued: list[Queued], why: str) -> None:
        if queued:
            ids = [q.job.lease_id for q in queued]
            self.stats.released += give_back(self.client, self.book, ids, why)
