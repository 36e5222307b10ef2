"""The worker's live progress line: jobs done, tokens/s, acks; rich on a terminal, plain in logs."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Protocol


@dataclass
class Stats:
    """Counters of one daemon run; `status` says what it is doing right now."""

    started: float = field(default_factory=time.monotonic)
    status: str = "starting"
    leased: int = 0
    generated: int = 0
    tokens: int = 0
    generate_s: float = 0.0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    dropped: int = 0
    spooled: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.generate_s if self.generate_s > 0 else 0.0

    def counters(self) -> str:
        return (
            f"jobs {self.generated} (leased {self.leased}, dropped {self.dropped}) | "
            f"{self.tokens} tok, {self.tokens_per_s:.1f} tok/s | accepted {self.accepted}, "
            f"duplicate {self.duplicate}, rejected {self.rejected} | spool {self.spooled}"
        )

    def line(self) -> str:
        return f"{self.status:<10} {self.counters()}"


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
        counters, now = stats.counters(), time.monotonic()
        with self._lock:
            if counters != self._last_counters or now - self._last_time >= self.every_s:
                self._write(stats, now)

    def close(self, stats: Stats) -> None:
        with self._lock:
            self._write(stats, time.monotonic())

    def _write(self, stats: Stats, now: float) -> None:
        print(f"flywheel worker: {stats.line()}", file=self.stream, flush=True)
        self._last_counters, self._last_time = stats.counters(), now


class RichProgress:
    """A single live status line redrawn in place on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console: Any = Console(stderr=True)
        self._live: Any = Live("", console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, stats: Stats) -> None:
        self._live.update(f"[bold]flywheel worker[/bold] {stats.line()}")

    def close(self, stats: Stats) -> None:
        self.update(stats)
        self._live.stop()


def make_progress(kind: str) -> Progress:
    if kind == "auto":
        kind = "rich" if sys.stderr.isatty() else "plain"
    if kind == "rich":
        return RichProgress()
    if kind == "plain":
        return PlainProgress()
    return NoProgress()
