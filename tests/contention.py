"""A host stall made on purpose: work run on one CPU that a busy process mostly holds.

The busy process runs at a higher priority than anything the work starts, so the work's processes
spend most of their time runnable but not running: exactly the run-delay the verifier reads in
/proc/<pid>/schedstat. With autogroup scheduling (each session its own group, which sandboxes are:
bwrap runs in a new session) the priority that counts is the busy process's group's, which only
root may raise; without autogroup it is the work's own nice value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nprint(flush=True)\nwhile True: pass\n"


def autogroup() -> bool:
    return AUTOGROUP.exists() and AUTOGROUP.read_text().strip() == "1"


@contextmanager
def busy_cpu() -> Iterator[int]:
    """A CPU held by a busy process of higher priority while the block runs; yields its number."""
    if autogroup() and os.geteuid() != 0:
        pytest.skip("raising a process group's priority under autogroup scheduling needs root")
    cpu = max(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(cpu)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"\n"  # pinned and spinning
        if autogroup():
            Path(f"/proc/{hog.pid}/autogroup").write_text("-10")  # 9548 : 1024 (nice -10 : 0)
        yield cpu
    finally:
        hog.kill()
        hog.wait()


def pin(thread_id: int, cpu: int) -> None:
    """Run thread `thread_id` (a native id) and what it starts on `cpu`, below the busy process.
    Affinity and nice are per thread on Linux."""
    os.sched_setaffinity(thread_id, {cpu})
    if not autogroup():
        os.setpriority(os.PRIO_PROCESS, thread_id, 10)


def contended(work: Callable[[], T]) -> T:
    """Run `work()` in a thread of its own pinned to a busy CPU; return what it returned (or raise
    what it raised). The calling thread stays as it is."""
    outcome: dict[str, T | BaseException] = {}
    with busy_cpu() as cpu:

        def body() -> None:
            pin(threading.get_native_id(), cpu)
            try:
                outcome["value"] = work()
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=body, name="contended")
        thread.start()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
