"""Dump filters that keep some rows (status, min_score, since), and docs/datasets.md's promise:
gold answers and hidden tests never appear in dumps."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import select

from coordinator.db import transaction
from coordinator.results import service as results
from coordinator.workers import service as workers
from coordinator.workers.models import Worker
from shared.protocol import Scope, SubmitRequest
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import answer_of, make_campaign, trace_for


def _dump(api: Api, campaign_id: str, **params: Any) -> list[dict[str, Any]]:
    r = api.client.get(f"/v1/datasets/{campaign_id}/export", params=params, headers=api.researcher)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def _ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["id"] for row in rows}


def _post(api: Api, worker: dict[str, str], traces: list[dict[str, Any]]) -> None:
    r = api.client.post("/v1/results", json={"results": traces}, headers=worker)
    assert r.status_code == 200 and {a["status"] for a in r.json()["acks"]} == {"accepted"}, r.text
    api.drain()


def _store_pending(api: Api, name: str, job: dict[str, Any]) -> uuid.UUID:
    """Store a trace without enqueueing its verification, so it stays pending."""
    with transaction(api.runtime.sessions) as session:
        worker = session.scalars(select(Worker).where(Worker.name == name)).one()
        principal = workers.Principal(worker.id, Scope.volunteer, worker.name)
        request = SubmitRequest.model_validate({"results": [trace_for(job)]})
        _, ids = results.submit(session, principal, request, lock=not api.runtime.settings.is_sqlite)
    return ids[0]


def test_status_min_score_and_since_each_keep_their_rows(api: Api) -> None:
    campaign = make_campaign(api, problems=5, samples=1)
    worker = api.volunteer("w")
    jobs = api.client.post("/v1/leases", json={"max_jobs": 5}, headers=worker).json()["jobs"]
    right = [trace_for(j, text=answer_of(api, j)) for j in jobs[:4:2]]
    wrong = [trace_for(j, text="\\boxed{-1}") for j in jobs[1:4:2]]
    _post(api, worker, [right[0], wrong[0]])
    time.sleep(0.05)  # the second batch is stored strictly after `since`
    since = datetime.now(UTC)
    time.sleep(0.05)
    _post(api, worker, [right[1], wrong[1]])
    pending = str(_store_pending(api, "w", jobs[4]))
    every = _dump(api, campaign["id"], status=["accepted", "rejected", "pending"])
    status_of = {row["id"]: row["status"] for row in every}
    # The unverified trace has no spot-check decision yet, so no dump holds it, whatever the status
    # filter (coordinator/trust/models.py `usable`).
    assert sorted(status_of.values()) == ["accepted", "accepted", "rejected", "rejected"]
    assert pending not in status_of
    accepted = {i for i, s in status_of.items() if s == "accepted"}
    rejected = {i for i, s in status_of.items() if s == "rejected"}

    assert _ids(_dump(api, campaign["id"])) == accepted  # the default: accepted only
    assert _ids(_dump(api, campaign["id"], status="rejected")) == rejected
    assert _dump(api, campaign["id"], status="pending") == []
    both = ["accepted", "rejected"]
    assert _ids(_dump(api, campaign["id"], status=both, min_score=0.5)) == accepted
    assert _ids(_dump(api, campaign["id"], status=both, min_score=0.0)) == accepted | rejected
    late = _dump(api, campaign["id"], status=both, since=since.isoformat())
    texts = {row["completion"] for row in late}
    assert texts == {right[1]["text"], wrong[1]["text"]} and len(late) == 2
    late_accepted = _dump(api, campaign["id"], since=since.isoformat(), min_score=1.0)
    assert [row["completion"] for row in late_accepted] == [right[1]["text"]]


# Distinctive values: none of them is in a prompt or a completion, so finding one in a dump can only
# mean a gold answer or a hidden test leaked into it.
GOLD = "7391"
HIDDEN = ["31337 27182", "58519", "1000000 2", "1000002"]
CODE = {
    "tests": [
        {"stdin": "31337 27182\n", "stdout": "58519\n"},
        {"stdin": "1000000 2\n", "stdout": "1000002\n"},
    ]
}
# Passes the first test only (the odd `a`): a score of 0.5, with a failing test in its verdict.
HALF = "a, b = map(int, input().split())\nprint(a + b if a % 2 else -1)"


def _import(api: Api, lines: list[dict[str, Any]]) -> str:
    body = "\n".join(json.dumps(line) for line in lines).encode()
    r = api.client.post("/v1/problem-sets/import?name=secret", content=body, headers=api.operator)
    assert r.status_code == 201, r.text
    set_id: str = r.json()["id"]
    return set_id


def test_gold_answers_and_hidden_tests_never_appear_in_dumps(api: Api) -> None:
    set_id = _import(
        api,
        [
            {"id": "math", "prompt": "What is seven thousand three hundred ninety-one?", "answer": GOLD},
            {"id": "code", "prompt": "Print the sum of two integers.", "verifier": "code", "answer": CODE},
        ],
    )
    body = {
        "name": "secret-campaign",
        "problem_set_id": set_id,
        "model": {"name": "flywheel/tiny-arith"},
        "samples_per_problem": 1,
        "sampling": {"max_tokens": 64, "temperature": 1.0},
    }
    campaign = api.client.post("/v1/campaigns", json=body, headers=api.operator).json()
    worker = api.volunteer()
    jobs = api.client.post("/v1/leases", json={"max_jobs": 2}, headers=worker).json()["jobs"]
    spec_of = {j["spec"]["messages"][-1]["content"].startswith("What"): j for j in jobs}
    math, code = spec_of[True], spec_of[False]
    program = f"Here it is.\n```python\n{HALF}\n```\n"
    _post(api, worker, [trace_for(math, text="\\boxed{12}"), trace_for(code, text=program, tokens=20)])

    statuses = ["accepted", "rejected", "pending"]
    rows = _dump(api, campaign["id"], status=statuses)
    assert {(row["problem_id"], row["status"], row["score"]) for row in rows} == {
        ("math", "rejected", 0.0),
        ("code", "rejected", 0.5),
    }
    r = api.client.get(
        f"/v1/datasets/{campaign['id']}/export",
        params={"status": statuses, "format": "parquet"},
        headers=api.researcher,
    )
    parquet = json.dumps(pq.read_table(io.BytesIO(r.content)).to_pylist(), default=str)
    card = api.client.get(f"/v1/datasets/{campaign['id']}/card", headers=api.researcher).text
    for dump in (json.dumps(rows), parquet, card):
        for secret in [GOLD, *HIDDEN]:
            assert secret not in dump, f"{secret!r} leaked into a dump"
