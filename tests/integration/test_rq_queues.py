"""The `verify`, `validate` and `train` queues through real RQ (Redis): the API enqueues, and a
`flywheel coordinator tasks --burst` process, its own runtime built from the environment as in
production, runs the tasks to their stored effect."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.results.models import Trace
from coordinator.trust.models import Validation
from shared.assets import TINY_MODEL_NAME
from shared.protocol import JobSpec
from tests.conftest import REDIS_URL
from tests.coordinator.conftest import Api, serve
from tests.pipeline.conftest import with_pipeline
from tests.pipeline.pipeline_helpers import campaign, create_job, job, lease_all, problem_set, trace, worked
from worker.engines.hf import TransformersEngine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not REDIS_URL, reason="needs Redis (FLYWHEEL_TEST_REDIS_URL) for the RQ queues"),
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def queued(database_url: str, tmp_path: Path) -> Iterator[tuple[Api, dict[str, str]]]:
    """The API on RQ, with queue names of its own, and the environment its task process reads."""
    suffix = uuid.uuid4().hex[:8]
    fields: dict[str, Any] = {
        "verify_queue": f"verify-{suffix}",
        "validate_queue": f"validate-{suffix}",
        "train_queue": f"train-{suffix}",
        "default_queue": f"default-{suffix}",
        "validation_enabled": True,
        "validation_floor": 0.02,
        "validation_device": "cpu",
        "data_dir": tmp_path / "data",
        "lease_ttl_s": 60,
        "max_in_flight_per_worker": 64,
        "requeue_pending_after_s": 3600,  # no sweeper pass competes with the queues under test
    }
    settings = Settings(database_url=database_url, redis_url=REDIS_URL, **fields)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env |= {f"FLYWHEEL_{k.upper()}": str(v) for k, v in fields.items()}
    env |= {"DATABASE_URL": database_url, "REDIS_URL": str(REDIS_URL), "OMP_NUM_THREADS": "1"}
    with serve(settings, with_pipeline) as api:
        yield api, env
        _clear(api.runtime.settings)


def _queue(settings: Settings, name: str) -> Any:
    import redis
    import rq

    return rq.Queue(name, connection=redis.Redis.from_url(str(settings.redis_url)))


def _clear(settings: Settings) -> None:
    for name in (
        settings.verify_queue,
        settings.validate_queue,
        settings.train_queue,
        settings.default_queue,
    ):
        _queue(settings, name).delete(delete_jobs=True)


def _tasks(env: dict[str, str], *queues: str) -> None:
    command = [sys.executable, "-m", "flywheel", "coordinator", "tasks", "--burst", "--queues", *queues]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


def _waiting(api: Api, name: str) -> int:
    return int(_queue(api.runtime.settings, name).count)


def test_verification_and_validation_run_on_their_rq_queues(queued: tuple[Api, dict[str, str]]) -> None:
    api, env = queued
    settings = api.runtime.settings
    campaign(api, problem_set(api, 2), samples=1)
    worker = api.volunteer()
    jobs = lease_all(api, worker)
    engine = TransformersEngine.load(TINY_MODEL_NAME, device="cpu")
    try:
        gens = engine.generate([JobSpec.model_validate(j["spec"]) for j in jobs])
    finally:
        engine.close()
    engine_info = {"name": "transformers", "dtype": "float32", "device": "cpu"}
    results = [
        {**trace(j, g.text, list(g.completion_token_ids), list(g.logprobs)), "engine": engine_info}
        for j, g in zip(jobs, gens, strict=True)
    ]
    r = api.client.post("/v1/results", json={"results": results}, headers=worker)
    assert [a["status"] for a in r.json()["acks"]] == ["accepted", "accepted"], r.text
    assert _waiting(api, settings.verify_queue) == 1  # one task for the batch, waiting in Redis

    _tasks(env, settings.verify_queue, settings.validate_queue)
    assert _waiting(api, settings.verify_queue) == _waiting(api, settings.validate_queue) == 0
    with transaction(api.runtime.sessions) as session:
        traces = session.scalars(select(Trace)).all()
        checks = session.scalars(select(Validation)).all()
        assert {t.status for t in traces} <= {"accepted", "rejected"}  # verified by the task process
        # A new worker's every trace is spot-checked: the validate queue re-scored both, and passed them.
        assert [t.validation for t in traces] == ["passed", "passed"]
        assert sorted(str(c.trace_id) for c in checks) == sorted(str(t.id) for t in traces)
        assert {c.status for c in checks} == {"passed"}


def test_a_pipeline_job_runs_on_the_rq_train_queue(queued: tuple[Api, dict[str, str]]) -> None:
    api, env = queued
    settings = api.runtime.settings
    campaign_id = campaign(api, problem_set(api, 2), samples=2)
    worker = api.volunteer()
    jobs = lease_all(api, worker)
    traces = [trace(j, worked(j, correct=j["spec"]["sample_index"] == 0)) for j in jobs]
    r = api.client.post("/v1/results", json={"results": traces}, headers=worker)
    assert {a["status"] for a in r.json()["acks"]} == {"accepted"}, r.text
    # Fabricated tokens, which a re-scoring would fail: marked not drawn, so no validation is due.
    with transaction(api.runtime.sessions) as session:
        for row in session.scalars(select(Trace)):
            row.validation = "skipped"
    _tasks(env, settings.verify_queue)

    spec = {"kind": "select", "campaign_ids": [campaign_id], "steps": [{"op": "pass_rate"}]}
    created = create_job(api, spec, name="rq-select")
    assert _waiting(api, settings.train_queue) == 1 and job(api, created["id"])["status"] == "queued"
    _tasks(env, settings.train_queue)
    final = job(api, created["id"])
    assert final["status"] == "done", final
    assert final["metrics"]["kept"] == 2 and final["outputs"]["dataset"]["sha256"]
