"""What the daemon is doing, for people: a live rich panel on a terminal, log lines otherwise, and
the same snapshot as JSON in `daemon.json` for `flywheel worker status`."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol

RATE_WINDOW_S = 60.0
ROUTINE = {"starting", "leasing", "idle", "generating", "submitting"}  # not worth a log line alone


@dataclass
class Stats:
    """Counters of one daemon run; each is written by one thread only, read by any."""

    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now().astimezone().isoformat(timespec="seconds"))
    status: str = "starting"
    leased: int = 0
    generated: int = 0
    tokens: int = 0
    generate_s: float = 0.0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    refused: int = 0  # results the coordinator refused alone for their content (4xx): dropped
    stalled: int = 0  # spooled results that keep failing (5xx) even alone: retried, behind the rest
    dropped: int = 0
    released: int = 0
    spooled: int = 0
    credit_tokens: int = 0  # completion tokens in results the coordinator accepted
    current: list[str] = field(default_factory=list)  # "problem#sample" of the batch generating
    queued: int = 0
    held: int = 0
    max_leases: int = 0
    batch_size: int = 0  # jobs in the batch generating now (or the last one)
    largest_batch: int = 0
    work_started_at: float | None = None  # wall clock: the model was loaded, leasing began
    last_ack_at: float | None = None  # wall clock: the coordinator last acknowledged a result
    jobs_today: int = 0
    max_jobs_per_day: int | None = None
    schedule: str = ""
    next_change: str | None = None
    _recent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def record_batch(self, jobs: int, tokens: int, seconds: float) -> None:
        now = time.monotonic()
        self.generated += jobs
        self.tokens += tokens
        self.generate_s += seconds
        self._recent.append((now, tokens))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second of engine time, over the whole run."""
        return self.tokens / self.generate_s if self.generate_s > 0 else 0.0

    @property
    def recent_tokens_per_s(self) -> float:
        """Completion tokens per wall-clock second over the last minute (idle time included)."""
        now = time.monotonic()
        window = max(1.0, min(RATE_WINDOW_S, now - self.started))
        return sum(n for t, n in list(self._recent) if now - t <= window) / window

    def counters(self) -> str:
        return (
            f"jobs {self.generated} (leased {self.leased}, dropped {self.dropped}, "
            f"released {self.released}) | "
            f"{self.tokens} tok, {self.tokens_per_s:.1f} tok/s | accepted {self.accepted}, "
            f"duplicate {self.duplicate}, rejected {self.rejected}, refused {self.refused} | "
            f"credit {self.credit_tokens} | spool {self.spooled}"
        ) + (f" ({self.stalled} stalled)" if self.stalled else "")

    def line(self) -> str:
        return f"{self.status:<10} {self.counters()}"

    def snapshot(self) -> dict[str, Any]:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "started"}
        fields.update(
            uptime_s=round(time.monotonic() - self.started, 1),
            tokens_per_s=round(self.tokens_per_s, 2),
            recent_tokens_per_s=round(self.recent_tokens_per_s, 2),
        )
        return fields


def _jobs(snapshot: dict[str, Any]) -> str:
    current = snapshot.get("current") or []
    shown = ", ".join(current[:6]) + (f" (+{len(current) - 6})" if len(current) > 6 else "")
    return f"{len(current)} generating{': ' + shown if shown else ''}; {snapshot.get('queued', 0)} queued"


def _today(snapshot: dict[str, Any]) -> str:
    cap = snapshot.get("max_jobs_per_day")
    return f"{snapshot.get('jobs_today', 0)} jobs" + (f" of {cap} allowed" if cap else " (no daily cap)")


def _schedule(snapshot: dict[str, Any]) -> str:
    text = snapshot.get("schedule") or "always"
    change = snapshot.get("next_change")
    return text + (f" (changes at {change})" if change else "")


def _model(snapshot: dict[str, Any]) -> str:
    """The model served and why (daemon.json's "choice", see worker/picker.py)."""
    choice = snapshot.get("choice") or {}
    model = snapshot.get("model") or choice.get("model") or "none yet"
    how = "chosen" if choice.get("mode") == "auto" else "fixed"
    return f"{model} ({how}: {choice['reason']})" if choice.get("reason") else str(model)


def status_rows(snapshot: dict[str, Any]) -> list[tuple[str, str]]:
    """The status view's rows, from a `Stats.snapshot()` (live, or read from daemon.json)."""
    s = snapshot
    return [
        ("status", str(s.get("status", "?"))),
        ("model", _model(s)),
        ("current jobs", _jobs(s)),
        (
            "throughput",
            f"{s.get('recent_tokens_per_s', 0):.1f} tok/s now, "
            f"{s.get('tokens_per_s', 0):.1f} tok/s while generating",
        ),
        ("generated", f"{s.get('generated', 0)} jobs, {s.get('tokens', 0)} tokens"),
        (
            "results",
            f"accepted {s.get('accepted', 0)}, rejected {s.get('rejected', 0)}, "
            f"refused {s.get('refused', 0)}, duplicate {s.get('duplicate', 0)}; "
            f"{s.get('spooled', 0)} waiting in the spool ({s.get('stalled', 0)} stalled)",
        ),
        ("credit", f"{s.get('credit_tokens', 0)} tokens in accepted traces"),
        (
            "leases",
            f"{s.get('held', 0)} held of {s.get('max_leases', 0)} allowed; "
            f"{s.get('released', 0)} given back, {s.get('dropped', 0)} lost",
        ),
        ("today", _today(s)),
        ("schedule", _schedule(s)),
    ]


def render_status(snapshot: dict[str, Any], title: str = "flywheel worker") -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", expand=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in status_rows(snapshot):
        table.add_row(name, value)
    return table


class Progress(Protocol):
    def update(self, stats: Stats) -> None: ...

    def close(self, stats: Stats) -> None: ...


class NoProgress:
    def update(self, stats: Stats) -> None:
        return None

    def close(self, stats: Stats) -> None:
        return None


class PlainProgress:
    """A line whenever a counter changes, else one every `every_s` seconds (logs stay short)."""

    def __init__(self, stream: IO[str] | None = None, every_s: float = 60.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last_counters = ""
        self._last_time = 0.0
        self._lock = threading.Lock()

    def update(self, stats: Stats) -> None:
        counters, now = self._key(stats), time.monotonic()
        with self._lock:
            if counters != self._last_counters or now - self._last_time >= self.every_s:
                self._write(stats, now)

    def close(self, stats: Stats) -> None:
        with self._lock:
            self._write(stats, time.monotonic())

    def _write(self, stats: Stats, now: float) -> None:
        print(f"flywheel worker: {stats.line()}", file=self.stream, flush=True)
        self._last_counters, self._last_time = self._key(stats), now

    @staticmethod
    def _key(stats: Stats) -> str:
        return stats.counters() + ("" if stats.status in ROUTINE else stats.status)


class RichProgress:
    """The status table, redrawn in place on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console: Any = Console(stderr=True)
        self._live: Any = Live("", console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def update(self, stats: Stats) -> None:
        self._live.update(render_status(stats.snapshot()))

    def close(self, stats: Stats) -> None:
        self.update(stats)
        self._live.stop()


class KeptOpen:
    """A display shared by the daemon runs of several models: each run's end only redraws it;
    `finish` closes it once the last run is over."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.last: Stats | None = None

    def update(self, stats: Stats) -> None:
        self.inner.update(stats)

    def close(self, stats: Stats) -> None:
        self.inner.update(stats)
        self.last = stats

    def finish(self) -> None:
        if self.last is not None:
            self.inner.close(self.last)


def make_progress(kind: str) -> Progress:
    if kind == "auto":
        kind = "rich" if sys.stderr.isatty() else "plain"
    if kind == "rich":
        return RichProgress()
    if kind == "plain":
        return PlainProgress()
    return NoProgress()
