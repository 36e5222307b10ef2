"""A volunteer's in-flight limit grows with the work it brought back usable and falls back to the
start after a failed validation (BOINC's rule): a fresh identity can hold, and waste, only a few jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import make_campaign
from tests.trust.helpers import generate, lease, settle, submission, submit, worker_id
from worker.engines.hf import TransformersEngine

START, MAX = 2, 6


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    settings = make_settings(
        database_url,
        validation_enabled=True,
        validation_floor=1.0,  # every trace validated: the forged one below is always caught
        validation_device="cpu",
        initial_in_flight_per_worker=START,
        max_in_flight_per_worker=MAX,
        max_request_bytes=1_000_000,
    )
    with serve(settings) as served:
        yield served


def _limit(api: Api, worker: dict[str, str]) -> int:
    wid = worker_id(api, worker)
    listed = api.client.get("/v1/workers?limit=1000", headers=api.operator).json()
    [row] = [w for w in listed if w["id"] == wid]
    return int(row["in_flight_limit"])


def _work(api: Api, engine: TransformersEngine, worker: dict[str, str], jobs: list[dict[str, Any]]) -> None:
    results = [submission(j, g) for j, g in zip(jobs, generate(engine, jobs), strict=True)]
    assert submit(api, worker, results) == ["accepted"] * len(jobs)
    settle(api)


def test_the_limit_starts_small_and_grows_with_each_usable_trace(
    api: Api, engine: TransformersEngine
) -> None:
    make_campaign(api, problems=12, samples=1, max_tokens=16)
    worker = api.volunteer()
    assert _limit(api, worker) == START
    first = lease(api, worker, 10)
    assert len(first) == START
    assert lease(api, worker, 10) == []  # holding its limit already
    _work(api, engine, worker, first)
    assert _limit(api, worker) == START + 2
    second = lease(api, worker, 10)
    assert len(second) == START + 2
    _work(api, engine, worker, second)
    assert _limit(api, worker) == MAX  # capped by the operator's maximum
    assert len(lease(api, worker, 10)) == MAX


def test_a_failed_validation_takes_the_credit_back(api: Api, engine: TransformersEngine) -> None:
    make_campaign(api, problems=8, samples=1, max_tokens=16)
    worker = api.volunteer()
    _work(api, engine, worker, lease(api, worker, 10))
    assert _limit(api, worker) == START + 2
    [job, other] = lease(api, worker, 2)
    gens = generate(engine, [job, other])
    forged = submission(job, gens[0], completion_token_ids=gens[1].completion_token_ids, text=gens[1].text,
                        logprobs=gens[1].logprobs)  # fmt: skip
    assert submit(api, worker, [forged]) == ["accepted"]
    settle(api)
    wid = worker_id(api, worker)
    restored = api.client.post(f"/v1/workers/{wid}/trust/restore", headers=api.operator)
    assert restored.status_code == 200, restored.text
    assert _limit(api, worker) == START


def test_operators_hold_the_maximum(api: Api) -> None:
    make_campaign(api, problems=8, samples=1, max_tokens=16)
    assert len(lease(api, api.operator, 10)) == MAX
