"""Background tasks: RQ when REDIS_URL is set, an in-process runner otherwise.

Both run the same task functions, passed as functions (so go-to-definition follows them; RQ is
handed their dotted path, which `task_path` checks resolves back), with plain JSON-able arguments. Tasks are
idempotent (at-least-once delivery); anything a lost task leaves undone is found again by the
sweeper in `coordinator.results.tasks`, so a crash between commit and enqueue loses nothing.
This is the only module that imports `rq`.
"""

from __future__ import annotations

import importlib
import logging
import queue as stdqueue
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


Task = Callable[..., Any]


def resolve(path: str) -> Task:
    module, _, name = path.rpartition(".")
    func: Task = getattr(importlib.import_module(module), name)
    return func


def task_path(task: Task) -> str:
    """The dotted path a task runner in another process imports the task by; only module-level
    functions have one."""
    path = f"{task.__module__}.{task.__qualname__}"
    try:
        found: Task | None = resolve(path)
    except (ImportError, AttributeError):  # a nested function or a lambda: `<locals>` in its name
        found = None
    if found is not task:
        raise ValueError(f"{path} is not a module-level function: no other process could run it")
    return path


class TaskQueue(Protocol):
    def enqueue(self, task: Task, *args: Any, queue: str = "default") -> None: ...

    def close(self) -> None: ...


class InProcessQueue:
    """Threads draining one FIFO; used by `flywheel demo` and tests without Redis."""

    def __init__(self, threads: int = 2) -> None:
        self._items: stdqueue.Queue[tuple[Task, tuple[Any, ...]] | None] = stdqueue.Queue()
        self._idle = threading.Condition()
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"flywheel-task-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, task: Task, *args: Any, queue: str = "default") -> None:
        task_path(task)  # the same tasks as RQ would take, so code tested here runs there too
        with self._idle:
            self._busy += 1
        self._items.put((task, args))

    def _run(self) -> None:
        while (item := self._items.get()) is not None:
            task, args = item
            try:
                task(*args)
            except Exception:  # a failed task is retried by the sweeper, never lost
                log.exception("background task %s%r failed", task.__qualname__, args)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every enqueued task has run; True if the queue drained in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self) -> None:
        for _ in self._threads:
            self._items.put(None)
        for thread in self._threads:
            thread.join(timeout=30)


class RQQueue:
    def __init__(self, redis_url: str) -> None:
        import redis
        import rq

        self._redis = redis.Redis.from_url(redis_url)
        self._rq = rq
        self._queues: dict[str, Any] = {}

    def _queue(self, name: str) -> Any:
        if name not in self._queues:
            self._queues[name] = self._rq.Queue(name, connection=self._redis)
        return self._queues[name]

    def enqueue(self, task: Task, *args: Any, queue: str = "default") -> None:
        self._queue(queue).enqueue(task_path(task), *args, result_ttl=0, failure_ttl=86_400)

    def close(self) -> None:
        self._redis.close()


def make_queue(redis_url: str | None, threads: int = 2) -> TaskQueue:
    return RQQueue(redis_url) if redis_url else InProcessQueue(threads)


def run_rq_worker(redis_url: str, queues: list[str], burst: bool = False) -> None:
    """Body of `flywheel coordinator tasks`: one RQ worker process over the named queues."""
    import redis
    import rq

    connection = redis.Redis.from_url(redis_url)
    # SimpleWorker runs jobs in this process instead of forking one per job, so the verifier's
    # warm scoring services and loaded models survive from one task to the next.
    worker = rq.SimpleWorker(
        [rq.Queue(name, connection=connection) for name in queues], connection=connection
    )
    worker.work(burst=burst, with_scheduler=False)
