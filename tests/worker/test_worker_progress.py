"""The plain progress line: printed when a counter moves, not on every idle poll."""

from __future__ import annotations

import io

from worker.progress import PlainProgress, Stats


def test_plain_progress_prints_on_counter_changes_only() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, every_s=3600)
    stats = Stats()
    for status in ("leasing", "idle", "leasing", "idle"):
        stats.status = status
        progress.update(stats)
    stats.status, stats.generated, stats.tokens, stats.generate_s = "submitting", 2, 50, 0.5
    progress.update(stats)
    stats.status, stats.accepted = "stopped", 2
    progress.close(stats)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "jobs 2" in lines[1] and "100.0 tok/s" in lines[1]
    assert lines[2].startswith("flywheel worker: stopped") and "accepted 2" in lines[2]
