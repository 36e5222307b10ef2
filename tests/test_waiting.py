"""tests/waiting.py: a wait returns what the condition found, and one that gives up says the state."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import WaitTimeout, wait_for


def test_a_wait_returns_the_first_truthy_value_the_condition_gives() -> None:
    calls = itertools.count()
    assert wait_for(lambda: [n] if (n := next(calls)) >= 3 else None, 60, lambda: "unused", poll_s=0) == [3]


def test_a_wait_that_gives_up_says_the_state_it_was_waiting_on() -> None:
    seen = []
    with pytest.raises(WaitTimeout, match=r"still waiting after 0s: 2 of 5 results spooled"):
        wait_for(lambda: seen.append(1), 0, lambda: "2 of 5 results spooled")
    assert seen == [1]  # the condition is checked once even with no time to wait
