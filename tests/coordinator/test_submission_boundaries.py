"""Submission boundaries: token counts and ids exactly at their limits, logprob signs, attempt ids
reused within one batch or by another worker, and which acks a mixed batch gets.

A trace one token over a limit must be refused and one exactly at it stored: either mistake loses
an honest result or admits a forged one.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from coordinator.db import transaction
from coordinator.results.models import Trace
from coordinator.results.service import load_for_verification, record_verdict, trace_problem
from shared.protocol import TraceSubmission, Verdict
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, progress, trace_for

TINY_VOCAB = 320  # flywheel/tiny-arith's vocabulary, read from its bundled config


def _trace_count(api: Api) -> int:
    with transaction(api.runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Trace)) or 0)


def _lease(api: Api, headers: dict[str, str], n: int = 1) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = api.client.post("/v1/leases", json={"max_jobs": n}, headers=headers).json()[
        "jobs"
    ]
    return jobs


def _submit(api: Api, headers: dict[str, str], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = api.client.post("/v1/results", json={"results": results}, headers=headers)
    assert response.status_code == 200, response.text
    acks: list[dict[str, Any]] = response.json()["acks"]
    return acks


def _submission(ids: list[int], logprobs: list[float]) -> TraceSubmission:
    return TraceSubmission.model_validate(
        {
            "lease_id": str(uuid.uuid4()),
            "attempt_id": str(uuid.uuid4()),
            "job_id": str(uuid.uuid4()),
            "text": "t",
            "completion_token_ids": ids,
            "logprobs": logprobs,
            "finish_reason": "stop",
            "engine": {"name": "transformers"},
        }
    )


@pytest.mark.parametrize(
    ("ids", "logprobs", "max_tokens", "vocab", "problem"),
    [
        ([1, 2, 3], [-0.1] * 3, 3, None, None),  # exactly max_tokens
        ([1, 2, 3, 4], [-0.1] * 4, 3, None, "exceed the job's max_tokens 3"),
        ([], [], 0, 10, None),  # an empty completion has no id to check
        ([9], [-0.1], 4, 10, None),  # the last id of the vocabulary
        ([10], [-0.1], 4, 10, "outside the model's vocabulary of 10"),
        ([10, 0], [-0.1, -0.1], 4, 10, "token id 10 is outside"),
        ([0, 10], [-0.1, -0.1], 4, 10, "token id 10 is outside"),
        ([10**6], [-0.1], 4, None, None),  # no known vocabulary: the validator bounds the ids
        ([1, 2], [-0.1], 4, None, "2 token ids but 1 logprobs"),
        ([1], [-0.1, -0.1], 4, None, "1 token ids but 2 logprobs"),
        ([1], [0.0], 4, None, None),
        ([1], [1e-6], 4, None, None),  # rounding slack for a certain token
        ([1], [math.nextafter(1e-6, 1.0)], 4, None, "logprobs must be finite and <= 0"),
        ([1], [0.5], 4, None, "logprobs must be finite and <= 0"),
        ([1, 2], [-0.1, math.nan], 4, None, "logprobs must be finite"),
        ([1], [-math.inf], 4, None, "logprobs must be finite"),
        ([1], [math.inf], 4, None, "logprobs must be finite"),
    ],
)
def test_trace_problem_boundaries(
    ids: list[int], logprobs: list[float], max_tokens: int, vocab: int | None, problem: str | None
) -> None:
    found = trace_problem(_submission(ids, logprobs), max_tokens, vocab)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_trace_of_exactly_max_tokens_is_stored_one_more_is_refused(api: Api) -> None:
    make_campaign(api, problems=2, samples=1, max_tokens=8)
    worker = api.volunteer()
    at_limit, over = _lease(api, worker, 2)
    acks = _submit(api, worker, [trace_for(at_limit, tokens=8), trace_for(over, tokens=9)])
    assert [a["status"] for a in acks] == ["accepted", "rejected"]
    assert "max_tokens 8" in acks[1]["reason"]
    assert _trace_count(api) == 1


def test_the_models_last_token_id_is_stored_the_next_is_refused(api: Api) -> None:
    make_campaign(api, problems=2, samples=1, max_tokens=8)
    worker = api.volunteer()
    last, beyond = _lease(api, worker, 2)
    inside = {**trace_for(last), "completion_token_ids": [0, TINY_VOCAB - 1], "logprobs": [-0.1, -0.1]}
    outside = {**trace_for(beyond), "completion_token_ids": [0, TINY_VOCAB], "logprobs": [-0.1, -0.1]}
    acks = _submit(api, worker, [inside, outside])
    assert [a["status"] for a in acks] == ["accepted", "rejected"]
    assert f"vocabulary of {TINY_VOCAB}" in acks[1]["reason"]
    assert _trace_count(api) == 1


def test_one_attempt_id_twice_in_a_batch_stores_once(api: Api) -> None:
    make_campaign(api, problems=2, samples=1)
    worker = api.volunteer()
    a, b = _lease(api, worker, 2)
    first = trace_for(a)
    # The same attempt id again, even naming another of the worker's leases: a re-send, not new work.
    again = {**trace_for(b), "attempt_id": first["attempt_id"]}
    acks = _submit(api, worker, [first, again])
    assert [a["status"] for a in acks] == ["accepted", "duplicate"]
    assert _trace_count(api) == 1


def test_another_workers_attempt_id_is_refused(api: Api) -> None:
    make_campaign(api, problems=2, samples=1)
    owner, other = api.volunteer("owner"), api.volunteer("other")
    [owned] = _lease(api, owner)
    [theirs] = _lease(api, other)
    stored = trace_for(owned)
    assert _submit(api, owner, [stored])[0]["status"] == "accepted"
    reuse = {**trace_for(theirs), "attempt_id": stored["attempt_id"]}
    [ack] = _submit(api, other, [reuse])
    assert ack["status"] == "rejected" and "another worker" in ack["reason"]
    # The other worker's own lease is still open: its real attempt is stored.
    assert _submit(api, other, [trace_for(theirs)])[0]["status"] == "accepted"
    assert _trace_count(api) == 2


def test_a_lease_resent_after_its_trace_was_stored_is_a_duplicate_not_new_work(api: Api) -> None:
    campaign = make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    [job] = _lease(api, worker)
    assert _submit(api, worker, [trace_for(job)])[0]["status"] == "accepted"
    assert _submit(api, worker, [trace_for(job, text="another text")])[0]["status"] == "duplicate"
    assert _trace_count(api) == 1
    assert progress(api, campaign["id"])["progress"]["queued"] == 0


def test_a_mixed_batch_stores_the_good_and_returns_the_errored(api: Api) -> None:
    campaign = make_campaign(api, problems=3, samples=1, max_tokens=8)
    worker = api.volunteer()
    good, errored, malformed = _lease(api, worker, 3)
    acks = _submit(
        api,
        worker,
        [
            trace_for(good),
            {**trace_for(errored), "finish_reason": "error"},
            {**trace_for(malformed), "logprobs": [0.5, -0.1, -0.1]},
        ],
    )
    assert [a["status"] for a in acks] == ["accepted", "rejected", "rejected"]
    assert "returned to the pool" in acks[1]["reason"]
    assert _trace_count(api) == 1
    # The errored job is back in the queue at once; the malformed one stays with its lease.
    assert progress(api, campaign["id"])["progress"]["queued"] == 1
    # A re-sent errored lease is no longer this worker's.
    [late] = _submit(api, worker, [trace_for(errored)])
    assert late["status"] == "rejected"


def test_a_verdict_is_stored_with_its_score_and_time(api: Api) -> None:
    make_campaign(api, problems=2, samples=1)
    worker = api.volunteer()
    right, wrong = _lease(api, worker, 2)
    _submit(api, worker, [trace_for(right, text=answer_of(api, right)), trace_for(wrong, text="\\boxed{-1}")])
    api.drain()
    with transaction(api.runtime.sessions) as session:
        traces = {t.job_id: t for t in session.scalars(select(Trace))}
        stored = [traces[uuid.UUID(job["spec"]["job_id"])] for job in (right, wrong)]
        assert [(t.status, t.score) for t in stored] == [("accepted", 1.0), ("rejected", 0.0)]
        assert all(t.verified_at is not None for t in stored)
        assert [t.verdict["passed"] for t in stored if t.verdict is not None] == [True, False]


def test_an_unknown_or_decided_trace_is_neither_loaded_nor_decided_again(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    [job] = _lease(api, worker)
    _submit(api, worker, [trace_for(job, text=answer_of(api, job))])
    api.drain()
    wrong = Verdict(score=0.0, passed=False, reason="late")
    with transaction(api.runtime.sessions) as session:
        decided = session.scalars(select(Trace)).one()
        for trace_id in (uuid.uuid4(), decided.id):
            assert load_for_verification(session, trace_id) is None
            assert record_verdict(session, trace_id, wrong, lock=False) is None
    with transaction(api.runtime.sessions) as session:
        assert session.scalars(select(Trace.status)).one() == "accepted"
