"""Waiting on a condition instead of a timer.

On a busy machine (CI, two cores shared with other jobs) a sleep of a fixed length or a rate
assumed to hold is what makes a test flaky. A test waits for the state it needs instead, and
`timeout` is only how long it gives up after: generous, never a measurement. When it does give up
the error says what the state was, so a failure on a loaded machine can be told from a bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout; the message holds the state waited on."""


def wait_for(
    condition: Callable[[], T | None], timeout: float, describe: Callable[[], object], poll_s: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy and return that. After `timeout`
    seconds (checked once more at the end) raise `WaitTimeout` with `describe()`'s output."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"still waiting after {timeout:g}s: {describe()}")
        time.sleep(poll_s)
