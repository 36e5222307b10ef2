"""Helpers shared by the pipeline tests: problem sets, campaigns, honest and dishonest traces."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from shared.assets import TINY_MODEL_NAME
from tests import waiting
from tests.coordinator.conftest import Api

FINISHED = {"done", "failed", "cancelled"}


def problem_set(api: Api, size: int, split: str = "test", seed: int = 0) -> str:
    body = {
        "name": f"set-{uuid.uuid4().hex[:8]}",
        "source": "arithmetic",
        "limit": size,
        "split": split,
        "seed": seed,
    }
    r = api.client.post("/v1/problem-sets", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    set_id: str = r.json()["id"]
    return set_id


def campaign(api: Api, set_id: str, samples: int, model: str = TINY_MODEL_NAME, max_tokens: int = 128) -> str:
    body = {
        "name": f"c-{uuid.uuid4().hex[:8]}",
        "problem_set_id": set_id,
        "model": {"name": model},
        "samples_per_problem": samples,
        "sampling": {"max_tokens": max_tokens, "temperature": 1.0},
    }
    r = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    campaign_id: str = r.json()["id"]
    return campaign_id


def lease_all(api: Api, worker: dict[str, str], models: list[str] | None = None) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    while True:
        body: dict[str, Any] = {"max_jobs": 64, "models": models or []}
        batch = api.client.post("/v1/leases", json=body, headers=worker).json()["jobs"]
        if not batch:
            return jobs
        jobs.extend(batch)


def operands(job: dict[str, Any]) -> tuple[int, str, int]:
    a, op, b = job["spec"]["messages"][-1]["content"].removeprefix("What is ").removesuffix("?").split()
    return int(a), op, int(b)


def gold(job: dict[str, Any]) -> int:
    a, op, b = operands(job)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def worked(job: dict[str, Any], correct: bool = True) -> str:
    """The tiny model's own answer format (scripts/tiny_model/solutions.py), right or off by one."""
    from scripts.tiny_model.solutions import worked_solution

    text = worked_solution(*operands(job))
    return text if correct else text.replace(f"\\boxed{{{gold(job)}}}", f"\\boxed{{{gold(job) + 1}}}")


def trace(
    job: dict[str, Any], text: str, token_ids: list[int] | None = None, logprobs: list[float] | None = None
) -> dict[str, Any]:
    token_ids = token_ids if token_ids is not None else [7] * 4
    return {
        "lease_id": job["lease_id"],
        "attempt_id": str(uuid.uuid4()),
        "job_id": job["spec"]["job_id"],
        "text": text,
        "completion_token_ids": token_ids,
        "logprobs": logprobs if logprobs is not None else [-0.5] * len(token_ids),
        "finish_reason": "stop",
        "engine": {"name": "transformers"},
    }


def submit(api: Api, worker: dict[str, str], traces: list[dict[str, Any]]) -> None:
    r = api.client.post("/v1/results", json={"results": traces}, headers=worker)
    assert r.status_code == 200, r.text
    assert all(a["status"] == "accepted" for a in r.json()["acks"]), r.text


def create_job(api: Api, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"spec": spec} if name is None else {"spec": spec, "name": name}
    r = api.client.post("/v1/pipeline/jobs", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def job(api: Api, job_id: str) -> dict[str, Any]:
    r = api.client.get(f"/v1/pipeline/jobs/{job_id}", headers=api.operator)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(api: Api, job_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
    return wait_until(api, job_id, lambda body: body["status"] in statuses, timeout)


def wait_until(
    api: Api, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    """Poll a job until `condition` holds (for jobs that keep polling, where the queue never drains)."""

    def met() -> dict[str, Any] | None:
        body = job(api, job_id)
        assert body["status"] not in FINISHED or condition(body), body  # finished elsewhere: no wait
        return body if condition(body) else None

    return waiting.wait_for(met, timeout, lambda: f"job {job_id}: {job(api, job_id)}")


def download(api: Api, sha256: str, headers: dict[str, str] | None = None) -> bytes:
    r = api.client.get(f"/v1/pipeline/artifacts/{sha256}", headers=headers or api.operator)
    assert r.status_code == 200, r.text
    return r.content


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """`app` over real HTTP on a free local port, for clients that are not a TestClient (a worker
    daemon). Its lifespan is left to the TestClient that already runs the app."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-coordinator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
