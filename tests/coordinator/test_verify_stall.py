"""A verification the host stalled stores nothing: the trace stays pending and is verified again
later, and only after STALL_ATTEMPTS stalled attempts is what was measured stored, saying so."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from typing import Any

from sqlalchemy import select

from coordinator.db import transaction
from coordinator.results.models import Trace
from coordinator.results.tasks import STALL_ATTEMPTS, requeue_pending
from tests.contention import busy_cpu, pin
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import trace_for

# 0.3 s of CPU: passes a 0.5 s limit on an idle CPU, times out (1.5 s wall) on a busy one.
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('done')"
ANSWER = f"```python\n{BUSY}\n```"


def _code_campaign(api: Api) -> dict[str, Any]:
    config = {"tests": [{"stdin": "", "stdout": "done\n"}], "time_limit_s": 0.5}
    line = json.dumps({"id": "busy", "prompt": "Print done.", "verifier": "code", "answer": config})
    name = uuid.uuid4().hex[:8]
    r = api.client.post(
        f"/v1/problem-sets/import?name=set-{name}", content=line.encode(), headers=api.operator
    )
    assert r.status_code == 201, r.text
    body = {
        "name": f"campaign-{name}",
        "problem_set_id": r.json()["id"],
        "model": {"name": "flywheel/tiny-arith"},
    }
    body |= {"samples_per_problem": 1, "sampling": {"max_tokens": 64, "temperature": 1.0}}
    r = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _pin_task_threads(cpu: int | None) -> None:
    """The in-process queue's threads verify, so the sandboxes they start run on `cpu` (None:
    on every CPU again, at the usual priority)."""
    threads = [t for t in threading.enumerate() if t.name.startswith("flywheel-task-")]
    assert threads
    for thread in threads:
        assert thread.native_id is not None
        if cpu is None:
            os.sched_setaffinity(thread.native_id, os.sched_getaffinity(0))
            with contextlib.suppress(PermissionError):  # lowering nice again needs root
                os.setpriority(os.PRIO_PROCESS, thread.native_id, 0)
        else:
            pin(thread.native_id, cpu)


def _submit(api: Api) -> None:
    _code_campaign(api)
    worker = api.volunteer()
    job = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).json()["jobs"][0]
    acks = api.client.post("/v1/results", json={"results": [trace_for(job, text=ANSWER)]}, headers=worker)
    assert acks.json()["acks"][0]["status"] == "accepted"
    api.drain()


def _trace(api: Api) -> Trace:
    with transaction(api.runtime.sessions) as session:
        trace = session.scalars(select(Trace)).one()
        session.expunge(trace)
        return trace


def test_a_stalled_verification_stays_pending_and_passes_when_retried(api: Api) -> None:
    with busy_cpu() as cpu:
        _pin_task_threads(cpu)
        _submit(api)
        stalled = _trace(api)
    assert stalled.status == "pending" and stalled.score is None
    assert stalled.verdict is not None and len(stalled.verdict["stalls"]) == 1
    assert "host stalled" in stalled.verdict["stalls"][0]
    # The busy process is gone and the task threads may use every CPU again: the sweeper's next
    # pass verifies it again, and it passes (a shared CI host may stall it once more; that retry
    # is what the attempts allow for).
    _pin_task_threads(None)
    for _ in range(STALL_ATTEMPTS - 1):
        assert requeue_pending(api.runtime, older_than_s=0) == 1
        api.drain()
        if _trace(api).status != "pending":
            break
    verified = _trace(api)
    assert verified.status == "accepted" and verified.score == 1.0
    assert verified.verdict is not None and len(verified.verdict["details"]["stalls"]) >= 1  # kept


def test_after_the_last_stalled_attempt_the_measured_verdict_is_stored(api: Api) -> None:
    with busy_cpu() as cpu:
        _pin_task_threads(cpu)
        _submit(api)
        for _ in range(STALL_ATTEMPTS - 1):
            assert _trace(api).status == "pending"
            assert requeue_pending(api.runtime, older_than_s=0) == 1
            api.drain()
    stored = _trace(api)
    assert stored.status == "rejected" and stored.score == 0.0
    assert stored.verdict is not None
    assert len(stored.verdict["details"]["stalls"]) == STALL_ATTEMPTS
    assert f"stored as measured after {STALL_ATTEMPTS} attempts (host stalled" in stored.verdict["reason"]
    assert stored.verdict["details"]["failures"] == {"timeout": 1}
    assert requeue_pending(api.runtime, older_than_s=0) == 0  # decided: nothing left to retry
