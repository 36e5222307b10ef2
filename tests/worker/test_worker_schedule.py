"""Allowed hours, pause and the daily cap as the daemon reads them, and their persistence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker.controls import DAILY_CAP, OUTSIDE_SCHEDULE, PAUSED, Controls
from worker.schedule import Schedule
from worker.state import StateStore

TZ = timezone(timedelta(hours=2))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """2026-11-16 is a Monday: day 0 = Monday ... 6 = Sunday."""
    return datetime(2026, 11, 16 + day, hour, minute, tzinfo=TZ)


def test_empty_schedule_allows_everything() -> None:
    for text in ("", "always", "  "):
        schedule = Schedule.parse(text)
        assert schedule.always and schedule.allows(at(3, 4)) and schedule.next_change(at(3, 4)) is None


def test_a_window_across_midnight() -> None:
    night = Schedule.parse("22:00-07:00")
    assert night.allows(at(0, 23, 30)) and night.allows(at(1, 6, 59))
    assert not night.allows(at(1, 7, 0)) and not night.allows(at(1, 21, 59))
    assert night.allows(at(1, 22, 0))
    assert night.next_change(at(1, 12)) == at(1, 22)
    assert night.next_change(at(1, 23)) == at(2, 7)


def test_days_and_several_windows() -> None:
    schedule = Schedule.parse("mon-fri 18:00-08:00, sat-sun 00:00-24:00")
    assert not schedule.allows(at(2, 12))  # Wednesday noon
    assert schedule.allows(at(4, 23)) and schedule.allows(at(5, 7))  # Friday night into Saturday
    assert schedule.allows(at(5, 12)) and schedule.allows(at(6, 23, 59))
    assert not schedule.allows(at(0, 3))  # Sunday's day ended at midnight; Monday's night starts 18:00
    assert schedule.allows(at(1, 3)) and not schedule.allows(at(0, 12))
    assert schedule.next_change(at(0, 12)) == at(0, 18)


def test_a_wrapping_day_range() -> None:
    weekend = Schedule.parse("fri-mon 09:00-17:00")
    assert [weekend.allows(at(d, 10)) for d in range(7)] == [True, False, False, False, True, True, True]


@pytest.mark.parametrize(
    ("text", "message"),
    [("25:00-07:00", "invalid time"), ("10:00-10:00", "empty"), ("xyz 10:00-11:00", "unknown day"),
     ("10-11", "not"), ("24:00-03:00", "invalid time")],
)  # fmt: skip
def test_bad_schedules_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_pause_from_state_file_and_from_signal_requests(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    controls = Controls(store, Schedule(), None)
    assert controls.generation_block() is None
    with store.update() as state:  # what `flywheel worker pause` does
        state.paused = True
    controls.refresh(force=True)
    assert controls.generation_block() == PAUSED and controls.changed.is_set()
    controls.request_pause(False)  # what SIGUSR2 does
    assert controls.generation_block() is None
    assert store.read().paused is False  # persisted: a restart stays resumed
    controls.request_pause(True)  # what SIGUSR1 does
    assert controls.generation_block() == PAUSED
    assert Controls(StateStore(tmp_path), Schedule(), None).generation_block() == PAUSED  # after a restart


def test_schedule_blocks_generation_and_leasing(tmp_path: Path) -> None:
    clock = Clock(at(2, 12))
    controls = Controls(StateStore(tmp_path), Schedule.parse("22:00-07:00"), None, now=clock)
    assert controls.generation_block() == OUTSIDE_SCHEDULE == controls.lease_block()
    clock.now = at(2, 23)
    controls.refresh(force=True)
    assert controls.generation_block() is None and controls.lease_block() is None


def test_daily_cap_counts_across_restarts_and_resets_the_next_day(tmp_path: Path) -> None:
    clock = Clock(at(1, 10))
    controls = Controls(StateStore(tmp_path), Schedule(), 5, now=clock)
    controls.count_jobs(3)
    assert controls.jobs_left_today() == 2
    restarted = Controls(StateStore(tmp_path), Schedule(), 5, now=clock)
    assert restarted.jobs_left_today() == 2
    restarted.count_jobs(2)
    assert restarted.lease_block() == DAILY_CAP and restarted.generation_block() is None
    clock.now = at(2, 0, 1)
    assert restarted.jobs_left_today() == 5 and restarted.lease_block() is None
    assert Controls(StateStore(tmp_path), Schedule(), None, now=clock).jobs_left_today() is None
