"""Process-wide handles (settings, database, task queue), built once per process.

The API process builds its runtime in `create_app`; an RQ worker process builds one lazily from
the environment the first time a task runs, so task functions only ever receive ids.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from coordinator.config import Settings
from coordinator.db import make_engine, make_session_factory
from coordinator.queue import TaskQueue, make_queue


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    queue: TaskQueue

    def close(self) -> None:
        self.queue.close()
        self.engine.dispose()


_lock = threading.Lock()
_current: Runtime | None = None


def build_runtime(settings: Settings) -> Runtime:
    engine = make_engine(settings)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        queue=make_queue(settings.redis_url, settings.inprocess_task_threads),
    )


def set_runtime(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime


def get_runtime() -> Runtime:
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(Settings())
        return _current
