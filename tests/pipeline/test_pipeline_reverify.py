"""Selection's re-verification of a refined trace under a stalled host: retried, and after the last
try the measured failure stands (nothing unverified enters a dataset); on an idle host it passes."""

from __future__ import annotations

import logging
import uuid

import pytest

from coordinator.pipeline.tasks import REVERIFY_ATTEMPTS, _reverify
from tests.contention import contended

# 0.3 s of CPU: passes a 0.5 s limit on an idle CPU, times out (1.5 s wall) on a busy one.
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('done')"
CAMPAIGN = str(uuid.uuid4())
SPECS = {
    (CAMPAIGN, "busy"): {
        "kind": "code",
        "config": {"tests": [{"stdin": "", "stdout": "done\n"}], "time_limit_s": 0.5},
    }
}
RECORD = {"campaign_id": CAMPAIGN, "problem_id": "busy"}
TEXT = f"```python\n{BUSY}\n```"


def test_a_stalled_reverification_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="coordinator.pipeline.tasks"):
        assert contended(lambda: _reverify(SPECS, RECORD, TEXT)) is False
    stalls = [r for r in caplog.records if "re-verification stalled" in r.getMessage()]
    assert len(stalls) == REVERIFY_ATTEMPTS


def test_the_same_trace_passes_on_an_idle_host() -> None:
    assert _reverify(SPECS, RECORD, TEXT) is True
    assert _reverify(SPECS, {"campaign_id": CAMPAIGN, "problem_id": "missing"}, TEXT) is False
