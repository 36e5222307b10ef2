"""Tasks are passed as functions; what RQ is handed is the dotted path that resolves back to the
same function, and a function no other process could import is refused at enqueue, not at run."""

from __future__ import annotations

import threading

import pytest

from coordinator.queue import InProcessQueue, resolve, task_path
from coordinator.results.tasks import verify_traces

RAN: list[tuple[int, ...]] = []
DONE = threading.Event()


def record(*args: int) -> None:
    RAN.append(args)
    DONE.set()


def test_a_task_is_named_by_the_path_that_imports_it() -> None:
    assert task_path(verify_traces) == "coordinator.results.tasks.verify_traces"
    assert resolve(task_path(verify_traces)) is verify_traces


def test_a_function_no_other_process_can_import_is_refused_at_enqueue() -> None:
    def nested() -> None:
        pass

    queue = InProcessQueue(threads=1)
    try:
        with pytest.raises(ValueError, match="not a module-level function"):
            queue.enqueue(nested)
        with pytest.raises(ValueError, match="not a module-level function"):
            queue.enqueue(lambda: None)
        queue.enqueue(record, 1, 2)
        assert queue.join(timeout=30) and RAN == [(1, 2)]
    finally:
        queue.close()
