"""Everything a worker touches, hardened: hashed and revocable tokens, per-token rate limits, payload
caps, lease-holder-only submission, no hidden answers in job specs."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator.db import transaction
from coordinator.trust.ratelimit import RateLimit, TokenBuckets
from coordinator.workers.models import Worker
from shared.protocol import MAX_COMPLETION_TOKENS, MAX_TEXT_CHARS, PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, trace_for
from tests.trust.helpers import lease, worker_id


def _register(api: Api, name: str = "w") -> tuple[str, dict[str, str]]:
    reply = api.client.post("/v1/workers/register", json={"name": name, "engine": {"name": "transformers"}})
    assert reply.status_code == 201, reply.text
    token = reply.json()["token"]
    return token, {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}


def test_tokens_are_stored_only_as_hashes(trust_api: Api) -> None:
    token, _ = _register(trust_api)
    with transaction(trust_api.runtime.sessions) as session:
        rows = session.execute(select(Worker)).scalars().all()
        stored = [
            json.dumps({c.name: str(getattr(w, c.key)) for c in Worker.__table__.columns}) for w in rows
        ]
    assert not any(token in row for row in stored)
    assert hashlib.sha256(token.encode()).hexdigest() in "".join(stored)


def test_an_operator_can_revoke_or_replace_a_token(trust_api: Api) -> None:
    make_campaign(trust_api, problems=1, samples=1)
    _, worker = _register(trust_api)
    wid = worker_id(trust_api, worker)
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).status_code == 200
    rotated = trust_api.client.post(f"/v1/workers/{wid}/token", headers=trust_api.operator)
    assert rotated.status_code == 201 and rotated.json()["worker_id"] == wid
    renewed = {**worker, "Authorization": f"Bearer {rotated.json()['token']}"}
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).status_code == 401
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=renewed).status_code == 200
    revoked = trust_api.client.delete(f"/v1/workers/{wid}/token", headers=trust_api.operator)
    assert revoked.status_code == 204
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=renewed).status_code == 401
    assert trust_api.client.delete(f"/v1/workers/{wid}/token", headers=renewed).status_code == 401
    assert (
        trust_api.client.delete(f"/v1/workers/{uuid.uuid4()}/token", headers=trust_api.operator).status_code
        == 404
    )


def test_a_volunteer_cannot_touch_tokens(trust_api: Api) -> None:
    _, worker = _register(trust_api, "a")
    _, other = _register(trust_api, "b")
    target = worker_id(trust_api, other)
    assert trust_api.client.post(f"/v1/workers/{target}/token", headers=worker).status_code == 403
    assert trust_api.client.delete(f"/v1/workers/{target}/token", headers=worker).status_code == 403


def test_each_token_has_its_own_rate_limit(trust_api: Api) -> None:
    limited = TestClient(RateLimit(trust_api.client.app, rate=0.5, burst=3))
    _, first = _register(trust_api, "first")
    _, second = _register(trust_api, "second")
    codes = [limited.post("/v1/leases", json={"max_jobs": 1}, headers=first).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = limited.post("/v1/leases", json={"max_jobs": 1}, headers=first)
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    assert limited.post("/v1/leases", json={"max_jobs": 1}, headers=second).status_code == 200
    assert limited.get("/healthz").status_code == 200  # outside the API: never limited


def test_calls_without_a_token_are_limited_per_address(trust_api: Api) -> None:
    limited = TestClient(RateLimit(trust_api.client.app, rate=0.5, burst=2))
    body = {"name": "flood", "engine": {"name": "transformers"}}
    codes = [limited.post("/v1/workers/register", json=body).status_code for _ in range(3)]
    assert codes == [201, 201, 429]


def test_buckets_refill_at_the_rate_and_forget_the_oldest_key() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2, capacity=2)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("a", now=0.5) == 0.0  # one request back after 1 / rate seconds
    buckets.take("b", now=0.5)
    buckets.take("c", now=0.5)  # over capacity: "a", the least recently used, is forgotten
    assert buckets.take("a", now=0.5) == 0.0


def test_payloads_are_capped(trust_api: Api) -> None:
    make_campaign(trust_api, problems=2, samples=1)
    _, worker = _register(trust_api)
    job, other = lease(trust_api, worker, 2)
    huge = {"results": [trace_for(job, text="x" * 1_100_000)]}  # over max_request_bytes (1 MB here)
    assert trust_api.client.post("/v1/results", json=huge, headers=worker).status_code == 413
    long_text = {"results": [trace_for(job, text="x" * (MAX_TEXT_CHARS + 1))]}
    assert trust_api.client.post("/v1/results", json=long_text, headers=worker).status_code == 422
    many = trace_for(other, tokens=MAX_COMPLETION_TOKENS + 1)
    assert trust_api.client.post("/v1/results", json={"results": [many]}, headers=worker).status_code == 422


def test_only_the_lease_holder_submits_and_only_for_its_job(trust_api: Api) -> None:
    make_campaign(trust_api, problems=2, samples=1)
    _, owner = _register(trust_api, "owner")
    _, thief = _register(trust_api, "thief")
    mine, theirs = lease(trust_api, owner, 2)
    acks = _acks(trust_api, thief, [trace_for(mine)])
    assert acks == ["rejected"]
    swapped = {**trace_for(mine), "job_id": theirs["spec"]["job_id"]}
    assert _acks(trust_api, owner, [swapped]) == ["rejected"]
    assert _acks(trust_api, owner, [trace_for(mine)]) == ["accepted"]


def test_job_specs_carry_no_answers_or_tests(trust_api: Api) -> None:
    secret = "987654321"
    lines = [
        json.dumps({"id": "q1", "prompt": "What is the product of the first primes?", "answer": secret}),
        json.dumps({
            "id": "q2", "prompt": "Write add(a, b).", "verifier": "code",
            "answer": {"tests": [{"stdin": "1 2", "stdout": secret}]},
        }),
    ]  # fmt: skip
    made = trust_api.client.post(
        "/v1/problem-sets/import?name=hidden", content="\n".join(lines).encode(), headers=trust_api.operator
    )
    assert made.status_code == 201, made.text
    body = {"name": "c", "problem_set_id": made.json()["id"], "model": {"name": "m"}}
    assert trust_api.client.post("/v1/campaigns", json=body, headers=trust_api.operator).status_code == 201
    _, worker = _register(trust_api)
    reply = trust_api.client.post("/v1/leases", json={"max_jobs": 8, "models": ["m"]}, headers=worker)
    assert len(reply.json()["jobs"]) == 2
    assert secret not in reply.text
    keys = _keys(reply.json())
    assert not keys & {"answer", "gold", "verifier", "tests", "verifier_spec"}


def _acks(api: Api, worker: dict[str, str], results: list[dict[str, Any]]) -> list[str]:
    reply = api.client.post("/v1/results", json={"results": results}, headers=worker)
    assert reply.status_code == 200, reply.text
    return [ack["status"] for ack in reply.json()["acks"]]


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()
