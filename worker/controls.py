"""The volunteer's controls as the daemon sees them: pause, allowed hours, jobs per day.

Pause comes from `state.json` (written by `flywheel worker pause|resume`) or from SIGUSR1/SIGUSR2;
a signal only flips an in-memory request, which the next `refresh` persists, because a signal
handler must not take the file lock the interrupted code may hold. `refresh` costs a `stat` when
nothing changed, so the decode loop may ask `generation_block` between two steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from worker.schedule import Schedule
from worker.state import StateStore

log = logging.getLogger("flywheel.worker")
REFRESH_S = 0.5
PAUSED = "paused"
OUTSIDE_SCHEDULE = "outside schedule"
DAILY_CAP = "daily cap reached"


def local_now() -> datetime:
    return datetime.now().astimezone()


class Controls:
    def __init__(
        self,
        store: StateStore,
        schedule: Schedule,
        max_jobs_per_day: int | None,
        now: Callable[[], datetime] = local_now,
    ) -> None:
        self.store = store
        self.schedule = schedule
        self.max_jobs_per_day = max_jobs_per_day
        self.now = now
        self.changed = threading.Event()  # set whenever a control flips, to wake waiting threads
        self.on_change: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._requested: bool | None = None  # pause (True) / resume (False) asked by a signal
        self._refreshed = -1e9
        self._mtime = -1
        state = store.read()
        self.paused = state.paused
        self._count_day = self.now().date()
        self.jobs_today = state.jobs_on(self._count_day)
        self._in_schedule = self.schedule.allows(self.now())

    def request_pause(self, paused: bool) -> None:
        """Safe in a signal handler: no lock, no I/O."""
        self._requested = paused
        self.changed.set()

    def _notify(self) -> None:
        self.changed.set()
        self.on_change()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._requested is None and now - self._refreshed < REFRESH_S:
            return
        with self._lock:
            self._refreshed = now
            self._apply_request()
            self._reload()
            in_schedule = self.schedule.allows(self.now())
            if in_schedule != self._in_schedule:
                self._in_schedule = in_schedule
                log.info("schedule window %s", "opens" if in_schedule else "closes")
                self._notify()

    def _apply_request(self) -> None:
        requested, self._requested = self._requested, None
        if requested is None:
            return
        with self.store.update() as state:
            state.paused = requested
        self._mtime = -1  # re-read below

    def _reload(self) -> None:
        mtime = self.store.mtime_ns()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        paused = self.store.read().paused
        if paused != self.paused:
            self.paused = paused
            log.warning("%s by the volunteer", "paused" if paused else "resumed")
            self._notify()

    def generation_block(self) -> str | None:
        """Why jobs must not run now (pause, schedule), or None."""
        self.refresh()
        if self.paused:
            return PAUSED
        if not self._in_schedule:
            return OUTSIDE_SCHEDULE
        return None

    def lease_block(self) -> str | None:
        """Why no job may be leased now: the above, or the daily cap; None when leasing is fine."""
        block = self.generation_block()
        if block is None and self.jobs_left_today() == 0:
            return DAILY_CAP
        return block

    def jobs_left_today(self) -> int | None:
        if self.max_jobs_per_day is None:
            return None
        return max(0, self.max_jobs_per_day - self._today_count())

    def _today_count(self) -> int:
        today = self.now().date()
        with self._lock:
            if self._count_day != today:  # a new local day starts from zero
                self._count_day = today
                self.jobs_today = self.store.read().jobs_on(today)
            return self.jobs_today

    def count_jobs(self, n: int) -> None:
        """Add `n` finished jobs to today's count, persisted (the cap holds across restarts)."""
        if n <= 0:
            return
        today = self.now().date()
        with self._lock, self.store.update() as state:
            if state.day != today.isoformat():
                state.day, state.jobs_today = today.isoformat(), 0
            state.jobs_today += n
            self.jobs_today, self._count_day = state.jobs_today, today

    def next_schedule_change(self) -> datetime | None:
        return self.schedule.next_change(self.now())
