"""A stalled host is not a wrong program: a limit that trips while the program waited for a CPU
gives "retry later" (HostStalledError), one that trips by the program's own doing a verdict."""

from __future__ import annotations

import pytest

from tests.contention import contended
from verifier.api import verify
from verifier.errors import HostStalledError

from .conftest import code_spec, python_answer

TESTS = [{"stdin": "", "stdout": "done\n"}]
# 0.3 s of CPU: well within a 0.5 s limit on an idle CPU, about 3 s of wall time on one that a
# higher-priority process holds (a tenth of the CPU), past the 1.5 s wall limit.
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('done')"
SLEEPY = "import time\ntime.sleep(5)\nprint('done')"


def test_a_program_that_fits_its_limit_passes_on_an_idle_cpu() -> None:
    assert verify(code_spec(TESTS, time_limit_s=0.5), python_answer(BUSY)).passed


def test_a_timeout_spent_waiting_for_a_cpu_is_retry_later() -> None:
    with pytest.raises(HostStalledError) as stalled:
        contended(lambda: verify(code_spec(TESTS, time_limit_s=0.5), python_answer(BUSY)))
    assert "host stalled" in stalled.value.reason and "timed out" in stalled.value.reason
    # What the attempt measured travels with it, for a caller that stops retrying.
    assert stalled.value.verdict.details["failures"] == {"timeout": 1}


def test_a_program_that_sleeps_past_its_limit_still_fails_on_a_busy_cpu() -> None:
    verdict = contended(lambda: verify(code_spec(TESTS, time_limit_s=0.5), python_answer(SLEEPY)))
    assert not verdict.passed and verdict.details["failures"] == {"timeout": 1}


def test_a_budget_spent_waiting_for_a_cpu_is_retry_later() -> None:
    # 10 tests of 0.02 s of CPU each fit a 1 s budget on an idle CPU, not on a busy one.
    busy = BUSY.replace("0.3", "0.02")
    spec = code_spec(TESTS * 10, time_limit_s=1.0, budget_s=1.0)
    assert verify(spec, python_answer(busy)).passed
    with pytest.raises(HostStalledError) as stalled:
        contended(lambda: verify(spec, python_answer(busy)))
    assert "budget" in stalled.value.reason or "timed out" in stalled.value.reason
    assert stalled.value.verdict.details["failures"].get("not_run", 0) > 0


def test_a_budget_the_program_spends_sleeping_is_its_own() -> None:
    sleepy = SLEEPY.replace("5", "0.3")
    verdict = contended(lambda: verify(code_spec(TESTS * 10, budget_s=1.0), python_answer(sleepy)))
    assert not verdict.passed and verdict.details["failures"].get("not_run", 0) > 0
