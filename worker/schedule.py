"""The hours a volunteer lets the worker run, in local wall-clock time.

    "22:00-07:00"                         every night (a window may cross midnight)
    "mon-fri 18:00-08:00, sat-sun 00:00-24:00"

Entries are separated by commas; each is an optional day or day range (`mon`, `sat-sun`,
`fri-mon`) and a time range `HH:MM-HH:MM`. A window belongs to the day it starts on, so
"fri 22:00-06:00" includes Saturday 05:00. An empty schedule allows every hour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
_ENTRY = re.compile(
    r"^(?:(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$"
)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # weekday numbers (Monday 0) the window may start on
    start: int  # minutes after midnight
    end: int  # minutes after midnight, up to 1440; end <= start crosses midnight

    @property
    def length(self) -> int:
        return self.end - self.start if self.end > self.start else self.end + MINUTES_PER_DAY - self.start

    def contains(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        for back in (0, 1):  # started today, or yesterday and crossing midnight
            day = (moment.weekday() - back) % 7
            offset = minute + back * MINUTES_PER_DAY - self.start
            if day in self.days and 0 <= offset < self.length:
                return True
        return False


def _minutes(text: str, allow_24: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not allow_24)):
        raise ValueError(f"invalid time {text!r}")
    return hours * 60 + minutes


def _days(first: str | None, last: str | None) -> frozenset[int]:
    if first is None:
        return frozenset(range(7))
    for name in (first, last):
        if name is not None and name not in DAYS:
            raise ValueError(f"unknown day {name!r} (use {', '.join(DAYS)})")
    a = DAYS.index(first)
    b = DAYS.index(last) if last is not None else a
    return frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Schedule:
        """Parse the format above; raises ValueError naming the bad entry."""
        text = (text or "").strip()
        if not text or text.lower() == "always":
            return cls()
        windows = []
        for raw in text.lower().split(","):
            match = _ENTRY.match(raw.strip())
            if match is None:
                raise ValueError(f"schedule entry {raw.strip()!r} is not '[day[-day]] HH:MM-HH:MM'")
            start, end = _minutes(match["start"], False), _minutes(match["end"], True)
            if start == end:
                raise ValueError(f"schedule entry {raw.strip()!r} is empty (start equals end)")
            windows.append(Window(_days(match["first"], match["last"]), start, end))
        return cls(tuple(windows), text)

    @property
    def always(self) -> bool:
        return not self.windows

    def allows(self, moment: datetime) -> bool:
        return self.always or any(w.contains(moment) for w in self.windows)

    def next_change(self, moment: datetime) -> datetime | None:
        """The first window boundary after `moment` where `allows` flips; None if it never does."""
        if self.always:
            return None
        now = self.allows(moment)
        midnight = datetime.combine(moment.date(), time(0), tzinfo=moment.tzinfo)
        boundaries = sorted(
            midnight + timedelta(days=day, minutes=minute)
            for day in range(-1, 9)
            for w in self.windows
            for minute in (w.start, w.start + w.length)
        )
        for boundary in boundaries:
            if boundary > moment and self.allows(boundary) != now:
                return boundary
        return None
