"""A pool of long-lived sandboxed scoring services with a hard kill.

Each service is a sandbox (verifier/sandbox.py) whose runner imports one handler module once
(math-verify, reasoning-gym: about a second of imports) and then answers requests, each in a
fresh forked child under rlimits and a wall-clock limit (or, for a handler that never evaluates
its input, in the service process under an alarm, the process being discarded after any
failure). A request that overruns is killed inside the sandbox; a service that stops answering
is killed from outside (bwrap and every process in its pid namespace die) and replaced. This
works from any thread of any process, unlike signal-based timeouts, which only work in a main
thread (the alarm above runs in the service's own main thread).

Pools are per process: a forked child (an RQ work horse) builds its own on first use.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from verifier.errors import ServiceError
from verifier.sandbox import Sandbox

START_TIMEOUT_S = 120.0
KILL_MARGIN_S = 3.0


@dataclass(frozen=True)
class ServiceSpec:
    handler: str  # module imported inside the sandbox; defines handle(payload) and maybe prepare
    timeout_s: float
    memory_mb: int
    cpu_s: float


class Reply:
    """What a service said about one request: a result dict, or why there is none."""

    def __init__(self, result: dict[str, Any] | None, failure: str = "") -> None:
        self.result = result
        self.failure = failure


class _Gone(Exception):
    """The service had died before the request was sent (so sending it again is safe)."""


class Service:
    def __init__(self, spec: ServiceSpec) -> None:
        limits = {
            "cpu_s": spec.cpu_s,
            "wall_s": spec.timeout_s,
            "memory_mb": spec.memory_mb,
            "output_bytes": 1 << 20,
            "nproc": 8,
        }
        self.spec = spec
        self.sandbox = Sandbox({"mode": "serve", "handler": spec.handler, "limits": limits}, skip_site=False)
        self.next_id = 0
        ready = self.sandbox.read_frame(time.monotonic() + START_TIMEOUT_S)
        if ready is None or not ready.get("ready"):
            tail = self.sandbox.stderr_tail()
            self.sandbox.kill()
            raise ServiceError(f"scoring service {spec.handler} did not start: {tail[-500:]}")

    def call(self, payload: dict[str, Any]) -> Reply:
        self.next_id += 1
        try:
            self.sandbox.send({"id": self.next_id, "payload": payload})
        except OSError as exc:  # it died between requests: nothing was asked yet
            self.sandbox.kill()
            raise _Gone from exc
        frame = self.sandbox.read_frame(time.monotonic() + self.spec.timeout_s + KILL_MARGIN_S)
        if frame is None or frame.get("id") != self.next_id:
            self.sandbox.kill()  # hung or confused: nothing it says later can be trusted
            return Reply(None, "timeout")
        if frame.get("fatal"):
            self.sandbox.kill()  # the runner is exiting; do not hand it out again
        if frame.get("status") != "ok":
            return Reply(None, str(frame.get("status")))
        try:
            result = json.loads(str(frame.get("value", "")))
        except ValueError:
            return Reply(None, "crashed")
        return Reply(result) if isinstance(result, dict) else Reply(None, "crashed")

    def alive(self) -> bool:
        return self.sandbox.alive()

    def close(self) -> None:
        self.sandbox.stop()


class ServicePool:
    """At most `size` services; callers borrow one per request (thread-safe)."""

    def __init__(self, spec: ServiceSpec, size: int) -> None:
        self.spec = spec
        self.size = size
        self._idle: queue.LifoQueue[Service | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a slot with no service started yet

    def call(self, payload: dict[str, Any]) -> Reply:
        service = self._idle.get()
        try:
            if service is None or not service.alive():
                service = Service(self.spec)
            try:
                reply = service.call(payload)
            except _Gone:
                service = Service(self.spec)
                reply = service.call(payload)
        except BaseException:
            if service is not None:
                service.close()
            self._idle.put(None)
            raise
        self._idle.put(service if service.alive() else None)
        return reply

    def warm(self) -> None:
        """Start every service now (each start imports the handler's libraries)."""
        started = [self._idle.get() for _ in range(self.size)]
        try:
            started = [s if s is not None and s.alive() else Service(self.spec) for s in started]
        finally:
            for service in started:
                self._idle.put(service)

    def close(self) -> None:
        for _ in range(self.size):
            service = self._idle.get()
            if service is not None:
                service.close()
            self._idle.put(None)


_lock = threading.Lock()
_pools: dict[tuple[int, str], ServicePool] = {}


def pool_size() -> int:
    return max(1, int(os.environ.get("FLYWHEEL_VERIFIER_WORKERS", os.cpu_count() or 1)))


def get_pool(spec: ServiceSpec) -> ServicePool:
    """This process's pool for `spec` (a forked child never reuses its parent's services)."""
    key = (os.getpid(), spec.handler)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ServicePool(spec, pool_size())
        return pool


def close_all() -> None:
    with _lock:
        mine = [(k, p) for k, p in _pools.items() if k[0] == os.getpid()]
        for key, pool in mine:
            pool.close()
            del _pools[key]
