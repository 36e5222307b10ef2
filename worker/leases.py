"""Leases the daemon holds, the local queue of leased jobs, and the heartbeat that keeps them.

A lease is *held* from the moment it is granted until its result is acknowledged, it is given
back (released), or the coordinator reports it lost. A held lease is *finished* once its result is in
the spool: the coordinator ends such a lease itself when it takes the result, so a heartbeat that
crossed the submission on the wire reports it "lost" though nothing is - only the result's ack
decides its fate. `LeaseBook.room()` is what the prefetcher
may still lease under `--max-leases`, so the number held never exceeds the cap.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.protocol import MAX_BATCH, HeartbeatRequest, LeasedJob, ReleaseRequest
from worker.background import Background
from worker.client import CoordinatorClient

log = logging.getLogger("flywheel.worker")
MIN_HEARTBEAT_S = 0.2


class LeaseBook:
    """Held and lost lease ids; thread-safe. `on_room` runs whenever leases stop being held."""

    def __init__(self, limit: int, on_room: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.on_room = on_room
        self.peak = 0
        self._held: set[uuid.UUID] = set()
        self._finished: set[uuid.UUID] = set()  # held, with the result in the spool
        self._lost: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def room(self) -> int:
        with self._lock:
            return max(0, self.limit - len(self._held))

    def held(self) -> list[uuid.UUID]:
        with self._lock:
            return sorted(self._held)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def add(self, lease_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            self._held.update(lease_ids)
            self.peak = max(self.peak, len(self._held))

    def finish(self, lease_ids: Iterable[uuid.UUID]) -> None:
        """Their results are in the spool: held until acknowledged, whatever a heartbeat says."""
        with self._lock:
            ids = set(lease_ids)
            self._held.update(ids)
            self._finished.update(ids)
            self.peak = max(self.peak, len(self._held))

    def drop(self, lease_ids: Iterable[uuid.UUID]) -> None:
        ids = set(lease_ids)
        with self._lock:
            before = len(self._held)
            self._held.difference_update(ids)
            self._finished.difference_update(ids)
            freed = len(self._held) < before
        if freed:
            self.on_room()

    def mark_lost(self, lease_ids: Iterable[uuid.UUID]) -> None:
        ids = set(lease_ids)
        with self._lock:
            self._lost.update(ids)
        self.drop(ids)

    def settle_lost(self, reported: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Of the leases a heartbeat reported lost, mark and return those truly lost: still held
        and without a result. The others were acknowledged, given back, or have a result on its
        way (the coordinator ended them on taking it) since the heartbeat's snapshot."""
        with self._lock:
            lost = [lid for lid in dict.fromkeys(reported) if lid in self._held and lid not in self._finished]
            self._lost.update(lost)
            self._held.difference_update(lost)
        if lost:
            self.on_room()
        return lost

    def is_lost(self, lease_id: uuid.UUID) -> bool:
        with self._lock:
            return lease_id in self._lost


@dataclass(frozen=True)
class Queued:
    job: LeasedJob
    at: float  # time.monotonic() when it was leased


class JobQueue:
    """Leased jobs waiting for the engine, oldest first."""

    def __init__(self) -> None:
        self._jobs: deque[Queued] = deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        with self._ready:
            return len(self._jobs)

    def put(self, jobs: Iterable[LeasedJob]) -> None:
        now = time.monotonic()
        with self._ready:
            self._jobs.extend(Queued(job, now) for job in jobs)
            self._ready.notify_all()

    def peek(self, n: int) -> list[LeasedJob]:
        with self._ready:
            return [self._jobs[i].job for i in range(min(n, len(self._jobs)))]

    def wait(self, timeout: float) -> bool:
        """True once a job is waiting; False after `timeout` without one."""
        with self._ready:
            if not self._jobs:
                self._ready.wait(timeout)
            return bool(self._jobs)

    def take(self, n: int) -> list[Queued]:
        """Up to `n` jobs, oldest first, without waiting."""
        with self._ready:
            return [self._jobs.popleft() for _ in range(min(n, len(self._jobs)))]

    def drain(self) -> list[Queued]:
        with self._ready:
            jobs, self._jobs = list(self._jobs), deque()
            return jobs

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()


def give_back(client: CoordinatorClient, book: LeaseBook, lease_ids: list[uuid.UUID], why: str) -> int:
    """Release leases so their jobs go back to the pool now, not at their deadline; returns how
    many the coordinator took back. They stop being held either way: a lease the coordinator
    did not take back expires there."""
    if not lease_ids:
        return 0
    released = 0
    try:
        for start in range(0, len(lease_ids), MAX_BATCH):
            response = client.release(ReleaseRequest(lease_ids=lease_ids[start : start + MAX_BATCH]))
            if response is None:
                log.info("%s: the coordinator cannot take leases back; %d will expire", why, len(lease_ids))
                break
            released += len(response.released)
    except Exception as exc:  # giving back is a courtesy: failing it must not stop a shutdown
        log.warning("%s: could not give back %d lease(s): %s", why, len(lease_ids), exc)
    else:
        if released:
            log.info("%s: gave back %d lease(s)", why, released)
    book.drop(lease_ids)
    return released


class Heartbeat(Background):
    """Background thread extending every held lease; marks the ones reported lost."""

    def __init__(self, client: CoordinatorClient, book: LeaseBook, interval_s: float) -> None:
        super().__init__("flywheel-heartbeat")
        self.client = client
        self.book = book
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._closed.wait(max(MIN_HEARTBEAT_S, self.interval_s)):
            ids = self.book.held()
            for start in range(0, len(ids), MAX_BATCH):
                self._beat(ids[start : start + MAX_BATCH])

    def _beat(self, ids: list[uuid.UUID]) -> None:
        try:
            response = self.client.heartbeat(HeartbeatRequest(lease_ids=ids))
        except Exception as exc:  # a failed beat must never kill the thread; the next one may pass
            log.warning("heartbeat failed: %s", exc)
            return
        lost = self.book.settle_lost(response.lost)
        if lost:
            log.warning("%d lease(s) lost; their jobs are dropped", len(lost))
        if len(lost) < len(response.lost):
            log.debug("%d lease(s) ended by their own submission or release", len(response.lost) - len(lost))
