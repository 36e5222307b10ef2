"""Verifier tests run real sandboxes: bubblewrap must be installed (apt-get install bubblewrap)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.protocol import Verdict, VerifierSpec
from verifier import api, pool


@pytest.fixture(scope="session", autouse=True)
def sandbox_ready() -> Iterator[None]:
    # Fail loudly rather than skip: a machine without a working sandbox must not look green.
    api.check_available()
    yield
    pool.close_all()


def descendants() -> set[int]:
    """Pids of every live process below this one (sandboxes, their namespaces' orphans too)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(name)] = int(fields[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_for_no_new_processes(before: set[int], within_s: float = 5.0) -> set[int]:
    """Processes started since `before` that are still alive after `within_s` (should be none)."""
    deadline = time.monotonic() + within_s
    while (left := descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def code_spec(tests: list[dict[str, Any]], **config: Any) -> VerifierSpec:
    return VerifierSpec(
        kind="code", config={"language": "python", "style": "stdio", "tests": tests, **config}
    )


def python_answer(source: str) -> str:
    return f"Here is my solution.\n```python\n{source}\n```\n"


def zero(verdict: Verdict) -> bool:
    return verdict.score == 0.0 and not verdict.passed
